"""Shell sessions on loopback: session start, keystroke echo, output throughput.

Run with ``.venv/bin/python bench/shell_sessions.py`` (about 50 s, as root: the agent
runs shells as ``ssm-user``). Nothing is asserted: the script prints figures and ratios
against baselines measured in the same run, in the same process.

Set-up: a real broker (``hatchway server``, as ``tests/harness/broker.py`` starts it, admin
keys from ``HATCHWAY_ADMIN_*``) and a registered ``hatchway agent`` (Online) run as
subprocesses on 127.0.0.1. This process is the client.

* **start**: from calling StartSession (a pre-created, signed boto3 client) to the first byte
  of shell output at the client. The client is our plugin's session code in-process
  (``hatchway.client.session.Session`` with ``BotoControlPlane``, stdout captured), so it opens
  the SigV4-signed websocket exactly as ``session-manager-plugin`` does, minus interpreter
  start-up. A second, smaller series runs the real ``session-manager-plugin`` process under a
  PTY (argv contract of the AWS CLI) and times until the first byte after its banner.
  Baseline: ``hatchway.agent.shell.PtyShell`` (the agent's own spawn code) starting
  ``bash -l`` as ssm-user in a local PTY, to its first output byte.
* **echo**: one printable character typed at the bash prompt → its echo back, through
  client → broker → agent → PTY (readline) and back. The client is
  ``hatchway.protocol.Stream(Role.CLIENT)`` over an aiohttp websocket (as
  ``tests/harness/wsclient.py``), so no terminal code of the plugin is measured. Every 40 keys a
  Ctrl-C (not timed) clears the line. Baseline: the same keys written to a local PtyShell
  running the same login shell, read back in the same event loop.
* **throughput**: ``cat FILE; echo <marker>`` of a 200 MB file of random printable lines in
  /tmp, timed at the client from Enter to the marker, counting file bytes. Measured with the
  raw Stream client and with the plugin's ``Session`` (output into a counting sink).
  Baseline: the same command in a local PtyShell, read by this process. CPU seconds of the
  broker, the agent and this process are recorded for every run.

``--profile DIR`` also samples the broker and the agent with py-spy during one extra
throughput run and prints their hottest functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (
    cpu_all,
    cpu_pid,
    cpu_self,
    machine,
    pyspy_start,
    server_conftest,
    summarize_raw,
)

from hatchway.agent.shell import PtyShell, resolve_user
from hatchway.client.aws import BotoControlPlane
from hatchway.client.session import Session, SessionParams
from hatchway.client.terminal import TerminalIO
from hatchway.protocol import (
    Deliver,
    PayloadType,
    Role,
    SendBytes,
    Stream,
    build_open_data_channel,
    build_size,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET = "i-0be4c4bench000001"
USER = "ssm-user"
MARKER = b"@@HW-END@@"
TYPED_MARKER = b'echo "@@HW-""END@@"'  # the echo of the typed line does not contain MARKER
FILE = Path("/tmp/hatchway-bench-200MB.txt")
GOAL_START_MS = 150.0
GOAL_ECHO_P99_MS = 10.0
GOAL_MBPS = 50.0
KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789"
LINE = 40


srv = server_conftest()


# -- helpers --------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def make_file(size: int) -> None:
    """``size`` bytes of printable lines: 1 MiB of base64'd random data, repeated."""
    if FILE.exists() and FILE.stat().st_size == size:
        return
    import base64

    block = base64.encodebytes(os.urandom(3 * 2**20 // 4))[: 2**20]
    with open(FILE, "wb") as out:
        left = size
        while left > 0:
            out.write(block[:left])
            left -= len(block)
    FILE.chmod(0o644)


class MarkerCounter:
    """Counts output bytes and notices MARKER even when split across chunks."""

    def __init__(self) -> None:
        self.n = 0
        self.chunks = 0
        self.tail = b""
        self.done = asyncio.get_running_loop().create_future()

    def feed(self, data: bytes) -> None:
        self.n += len(data)
        self.chunks += 1
        window = self.tail + data
        self.tail = window[-len(MARKER) :]
        if MARKER in window and not self.done.done():
            self.done.set_result(time.perf_counter())


# -- local baselines (PtyShell, the agent's own spawn code) ---------------------------------


class LocalShell:
    def __init__(self) -> None:
        self.out = bytearray()
        self.first: float | None = None
        self.waiter: tuple[bytes, asyncio.Future[float]] | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.exited = asyncio.get_running_loop().create_future()
        self.shell = PtyShell(resolve_user(USER), self._on_output, self._on_exit, cols=200, rows=50)

    def _on_output(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        if self.sink is not None:
            self.sink(data)
            return
        self.out += data
        if self.waiter is not None and self.waiter[0] in self.out:
            fut = self.waiter[1]
            self.waiter = None
            if not fut.done():
                fut.set_result(now)

    def _on_exit(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    async def wait(self, needle: bytes, timeout: float = 10) -> float:
        if needle in self.out:
            return time.perf_counter()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiter = (needle, fut)
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self.shell.close)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited, 5)


async def local_start(n: int) -> list[float]:
    times = []
    for _ in range(n):
        sh = LocalShell()
        t0 = time.perf_counter()
        sh.shell.start()
        await sh.wait(b"$ ")
        assert sh.first is not None
        times.append(sh.first - t0)
        await sh.close()
    return times


async def local_echo(n: int) -> list[float]:
    sh = LocalShell()
    sh.shell.start()
    await sh.wait(b"$ ")
    lat = []
    for i in range(n):
        if i and i % LINE == 0:
            sh.out.clear()
            os.write(sh.shell.master, b"\x03")
            await sh.wait(b"$ ")
        ch = KEYS[i % len(KEYS) : i % len(KEYS) + 1]
        sh.out.clear()
        t0 = time.perf_counter()
        os.write(sh.shell.master, ch)
        t1 = await sh.wait(ch)
        lat.append(t1 - t0)
    await sh.close()
    return lat


async def local_cat() -> dict[str, float]:
    sh = LocalShell()
    sh.shell.start()
    await sh.wait(b"$ ")
    count = MarkerCounter()
    sh.sink = count.feed
    before = procs_cpu({})
    t0 = time.perf_counter()
    os.write(sh.shell.master, b"cat " + str(FILE).encode() + b"; " + TYPED_MARKER + b"\r")
    t1 = await asyncio.wait_for(count.done, 120)
    after = procs_cpu({})
    res = {"secs": t1 - t0, "bytes": count.n, "chunks": count.chunks}
    res.update({f"{k}_cpu": after[k] - before[k] for k in after})
    sh.sink = None
    await sh.close()
    return res


# -- the raw stream client (no plugin terminal code) ----------------------------------------


class RawClient:
    """``Stream(Role.CLIENT)`` over an aiohttp websocket, acking inline."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.stream = Stream(Role.CLIENT)
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.out = bytearray()
        self.sink: Callable[[bytes], None] | None = None

    async def open(self) -> None:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.response["StreamUrl"], max_msg_size=0)
        await self.ws.send_str(
            build_open_data_channel(
                self.response["TokenValue"],
                request_id=str(uuid.uuid4()),
                client_id=str(uuid.uuid4()),
                client_version="1.2.764.0",
            )
        )
        await self.send(build_size(200, 50), PayloadType.SIZE)

    async def send(self, data: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(self.stream.send(payload_type, data, time.time()))

    async def wait(self, needle: bytes, timeout: float = 15) -> float:
        """Read (acking) until ``needle`` is in the output; the time the frame arrived."""
        assert self.ws is not None
        ws = self.ws
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            now = time.perf_counter()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise RuntimeError(f"data channel ended: {msg.type} {msg.extra}")
            for ev in self.stream.receive(msg.data, time.time()):
                if isinstance(ev, SendBytes):
                    await ws.send_bytes(ev.data)
                elif isinstance(ev, Deliver) and ev.payload_type == PayloadType.OUTPUT:
                    if self.sink is not None:
                        self.sink(ev.payload)
                    else:
                        self.out += ev.payload
            for data in self.stream.due(time.time()):
                await ws.send_bytes(data)
        return now

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()


async def raw_session(ssm: Any) -> RawClient:
    resp = await asyncio.to_thread(ssm.start_session, Target=TARGET)
    c = RawClient(resp)
    await c.open()
    await c.wait(b"$ ")
    return c


async def raw_echo(ssm: Any, n: int) -> list[float]:
    c = await raw_session(ssm)
    lat = []
    for i in range(n):
        if i and i % LINE == 0:
            c.out.clear()
            await c.send(b"\x03")
            await c.wait(b"$ ")
        ch = KEYS[i % len(KEYS) : i % len(KEYS) + 1]
        c.out.clear()
        t0 = time.perf_counter()
        await c.send(ch)
        t1 = await c.wait(ch)
        lat.append(t1 - t0)
    await end_raw(ssm, c)
    return lat


async def end_raw(ssm: Any, c: RawClient) -> None:
    sid = c.response["SessionId"]
    await c.close()
    await asyncio.to_thread(ssm.terminate_session, SessionId=sid)


def procs_cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {name: cpu_pid(pid) for name, pid in pids.items()}
    out["client"] = cpu_self()
    out["all"] = cpu_all()
    return out


async def raw_cat(ssm: Any, pids: dict[str, int]) -> dict[str, float]:
    c = await raw_session(ssm)
    count = MarkerCounter()
    c.sink = count.feed
    before = procs_cpu(pids)
    t0 = time.perf_counter()
    await c.send(b"cat " + str(FILE).encode() + b"; " + TYPED_MARKER + b"\r")

    async def pump() -> None:
        while True:
            await c.wait(b"\x00never\x00", timeout=120)

    reader = asyncio.create_task(pump())
    try:
        t1 = await asyncio.wait_for(asyncio.shield(count.done), 120)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    after = procs_cpu(pids)
    await end_raw(ssm, c)
    res = {"secs": t1 - t0, "bytes": count.n, "chunks": count.chunks}
    res.update({f"{k}_cpu": after[k] - before[k] for k in after})
    return res


# -- our plugin's Session in-process --------------------------------------------------------


class BenchIO(TerminalIO):
    """Stdin is a pipe (non-interactive), stdout a sink that timestamps and counts."""

    first: float | None
    banner: list[str]
    sink: Callable[[bytes], None] | None
    got_first: asyncio.Future[float]

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.first is None:
            self.first = time.perf_counter()
            if not self.got_first.done():
                self.got_first.set_result(self.first)
        if self.sink is not None:
            self.sink(data)

    def say(self, text: str) -> None:
        self.banner.append(text)


def bench_io(read_fd: int) -> BenchIO:
    bio = BenchIO(read_fd, io.BytesIO(), io.BytesIO(), interactive=False)
    bio.first = None
    bio.banner = []
    bio.sink = None
    bio.got_first = asyncio.get_running_loop().create_future()
    return bio


class PluginRun:
    """One session of the plugin's ``Session``; ``t0`` is just before StartSession."""

    def __init__(self, ssm: Any, api: BotoControlPlane, endpoint: str) -> None:
        self.ssm, self.api, self.endpoint = ssm, api, endpoint
        self.r, self.w = os.pipe()
        self.io = bench_io(self.r)
        self.task: asyncio.Task[int] | None = None
        self.session: Session | None = None

    def start(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        resp = self.ssm.start_session(Target=TARGET)  # what the CLI does before the plugin
        t_api = time.perf_counter()
        params = SessionParams(
            session_id=resp["SessionId"],
            token=resp["TokenValue"],
            stream_url=resp["StreamUrl"],
            region=srv.REGION,
            endpoint_url=self.endpoint,
            target=TARGET,
        )
        self.session = Session(params, api=self.api, io=self.io, signals=False)
        self.task = asyncio.create_task(self.session.run())
        return t0, t_api

    async def end(self) -> None:
        assert self.session is not None and self.task is not None
        self.session.end_locally(0)  # like ~.: TerminateSession, then exit
        await asyncio.wait_for(self.task, 20)
        os.close(self.w)
        os.close(self.r)


async def plugin_start(ssm: Any, api: BotoControlPlane, endpoint: str, n: int) -> dict[str, Any]:
    first, api_ms = [], []
    for _ in range(n):
        run = PluginRun(ssm, api, endpoint)
        t0, t_api = run.start()
        t1 = await asyncio.wait_for(run.io.got_first, 15)
        first.append(t1 - t0)
        api_ms.append(t_api - t0)
        await run.end()
    return {"first": first, "api": api_ms}


async def plugin_cat(
    ssm: Any, api: BotoControlPlane, endpoint: str, pids: dict[str, int]
) -> dict[str, float]:
    run = PluginRun(ssm, api, endpoint)
    prompt = MarkerCounter()
    seen = bytearray()

    def until_prompt(data: bytes) -> None:
        seen.extend(data)
        if b"$ " in seen and not prompt.done.done():
            prompt.done.set_result(0.0)

    run.io.sink = until_prompt
    run.start()
    await asyncio.wait_for(prompt.done, 15)
    count = MarkerCounter()
    run.io.sink = count.feed
    before = procs_cpu(pids)
    t0 = time.perf_counter()
    os.write(run.w, b"cat " + str(FILE).encode() + b"; " + TYPED_MARKER + b"\r")
    t1 = await asyncio.wait_for(count.done, 120)
    after = procs_cpu(pids)
    await run.end()
    res = {"secs": t1 - t0, "bytes": count.n, "chunks": count.chunks}
    res.update({f"{k}_cpu": after[k] - before[k] for k in after})
    return res


def plugin_process_start(ssm: Any, endpoint: str, n: int) -> list[float]:
    """The real ``session-manager-plugin`` process under a PTY: StartSession → first byte
    after the banner (includes interpreter start-up and imports)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
        AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        TERM="xterm",
    )
    exe = str(BIN / "session-manager-plugin")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = ssm.start_session(Target=TARGET)
        resp.pop("ResponseMetadata", None)
        master, slave = pty.openpty()
        request = json.dumps({"Target": TARGET})
        proc = subprocess.Popen(
            [exe, json.dumps(resp), srv.REGION, "StartSession", "", request, endpoint],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        buf = b""
        banner = f"SessionId: {resp['SessionId']}".encode()
        t1 = None
        deadline = time.monotonic() + 20
        while t1 is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            buf += os.read(master, 65536)
            at = buf.find(banner)
            if at >= 0:
                rest = buf[at + len(banner) :].lstrip(b"\r\n")
                if rest:
                    t1 = time.perf_counter()
        if t1 is None:
            proc.kill()
            raise RuntimeError(f"plugin showed no prompt: {buf!r}")
        times.append(t1 - t0)
        os.write(master, b"\r~.")  # escape: end locally, TerminateSession
        try:
            while proc.poll() is None:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    with contextlib.suppress(OSError):
                        os.read(master, 65536)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)
    return times


# -- main -----------------------------------------------------------------------------------


def fmt_ms(x: float) -> str:
    return f"{1000 * x:.1f}" if x >= 0.01 else f"{1000 * x:.2f}"


async def run(args: argparse.Namespace, broker: Any, agent: Any) -> None:
    ssm = broker.client("ssm")
    os.environ.update(
        AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
        AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(key, None)
    api = BotoControlPlane(srv.REGION, "", broker.url)
    pids = {"broker": broker.proc.pid, "agent": agent.proc.pid}
    res: dict[str, Any] = {}

    # warm-up: user creation, imports, first connections
    await plugin_start(ssm, api, broker.url, 3)
    await local_start(2)

    print(f"(a) session start, {args.starts} runs each", flush=True)
    base_start: list[float] = []
    ours: dict[str, list[float]] = {"first": [], "api": []}
    for _ in range(args.starts):  # interleaved, so drift hits both alike
        base_start += await local_start(1)
        r = await plugin_start(ssm, api, broker.url, 1)
        ours["first"] += r["first"]
        ours["api"] += r["api"]
    res["start"] = {"base": base_start, **ours}
    res["start_proc"] = plugin_process_start(ssm, broker.url, args.plugin_starts)

    print(f"(b) echo, {args.keys} keys each", flush=True)
    res["echo_base"] = await local_echo(args.keys)
    res["echo"] = await raw_echo(ssm, args.keys)

    print(
        f"(c) throughput, {args.runs} runs each of {FILE.stat().st_size / 1e6:.0f} MB", flush=True
    )
    res["cat_base"], res["cat_raw"], res["cat_plugin"] = [], [], []
    for _ in range(args.runs):
        res["cat_base"].append(await local_cat())
        res["cat_raw"].append(await raw_cat(ssm, pids))
        res["cat_plugin"].append(await plugin_cat(ssm, api, broker.url, pids))
        print("   ", *(f"{res[k][-1]['secs']:.2f}s" for k in ("cat_base", "cat_raw", "cat_plugin")))

    report(res)

    if args.profile:
        out = Path(args.profile)
        out.mkdir(parents=True, exist_ok=True)
        print(f"\nprofiling one raw-client throughput run with py-spy → {out}", flush=True)
        secs = int(max(r["secs"] for r in res["cat_raw"]) + 2)
        spies = {
            n: pyspy_start(
                shutil.which("py-spy", path=str(BIN)) or "py-spy", p, out / f"{n}.txt", secs
            )
            for n, p in pids.items()
        }
        await asyncio.sleep(0.5)
        r = await raw_cat(ssm, pids)
        print(f"  run: {FILE.stat().st_size / 1e6 / r['secs']:.1f} MB/s (sampled, slower)")
        for spy in spies.values():
            await asyncio.to_thread(spy.wait, secs + 30)
        for name in pids:
            summarize_raw(out / f"{name}.txt", args.top)

        print("\nprofiling (cProfile) this process in one keystroke-echo run")
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        await raw_echo(ssm, 200)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def report(res: dict[str, Any]) -> None:
    size = FILE.stat().st_size
    s = res["start"]
    print("\n### (a) Session start (ms)\n")
    print("| path | runs | p50 | p90 | min | max |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [
        ("local `bash -l` in a PTY (PtyShell), to first byte", s["base"]),
        ("StartSession API call alone (boto3, signed)", s["api"]),
        ("StartSession → first byte, plugin `Session` in-process", s["first"]),
        ("StartSession → first byte, `session-manager-plugin` process", res["start_proc"]),
    ]
    for name, xs in rows:
        print(
            f"| {name} | {len(xs)} | {fmt_ms(pct(xs, 50))} | {fmt_ms(pct(xs, 90))} | "
            f"{fmt_ms(min(xs))} | {fmt_ms(max(xs))} |"
        )
    p50 = pct(s["first"], 50)
    proc50 = pct(res["start_proc"], 50)
    print(
        f"\nratio p50 in-process ÷ local: {p50 / pct(s['base'], 50):.2f}×; "
        f"overhead over the local spawn {fmt_ms(p50 - pct(s['base'], 50))} ms; "
        f"goal ≤ {GOAL_START_MS:.0f} ms, judged on the `session-manager-plugin` process "
        f"(what the AWS CLI runs): {'met' if 1000 * proc50 <= GOAL_START_MS else 'MISSED'}"
    )

    print("\n### (b) Keystroke echo (ms)\n")
    print("| path | keys | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, xs in (
        ("local PTY, same login shell", res["echo_base"]),
        ("client → broker → agent → PTY → back (raw Stream)", res["echo"]),
    ):
        print(
            f"| {name} | {len(xs)} | {fmt_ms(pct(xs, 50))} | {fmt_ms(pct(xs, 90))} | "
            f"{fmt_ms(pct(xs, 99))} | {fmt_ms(max(xs))} |"
        )
    e99 = pct(res["echo"], 99)
    print(
        f"\nratio p50 {pct(res['echo'], 50) / pct(res['echo_base'], 50):.1f}×, "
        f"p99 {e99 / pct(res['echo_base'], 99):.1f}×; goal p99 ≤ {GOAL_ECHO_P99_MS:.0f} ms: "
        f"{'met' if 1000 * e99 <= GOAL_ECHO_P99_MS else 'MISSED'}"
    )

    print(f"\n### (c) Output throughput, `cat` of {size / 1e6:.0f} MB (MB = 10^6 bytes)\n")
    print(
        "| path | runs | median MB/s | min–max MB/s | bytes per chunk at client | broker CPU s | "
        "agent CPU s | client CPU s | machine busy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for key, name in (
        ("cat_base", "local PTY, read by this process"),
        ("cat_raw", "session, raw Stream client"),
        ("cat_plugin", "session, plugin `Session` (stdout sink)"),
    ):
        runs = res[key]
        rates = [size / 1e6 / r["secs"] for r in runs]
        med[key] = statistics.median(rates)

        def cpu(name: str, runs: list[dict[str, float]] = runs) -> str:
            vals = [r.get(f"{name}_cpu") for r in runs]
            known = [v for v in vals if v is not None]
            return f"{statistics.median(known):.1f}" if len(known) == len(vals) else "—"

        busy = statistics.median([r["all_cpu"] / r["secs"] / (os.cpu_count() or 1) for r in runs])
        chunk = statistics.median([r["bytes"] / r["chunks"] for r in runs])
        print(
            f"| {name} | {len(runs)} | {med[key]:.1f} | {min(rates):.1f}–{max(rates):.1f} | "
            f"{chunk:,.0f} | {cpu('broker')} | {cpu('agent')} | {cpu('client')} | "
            f"{100 * busy:.0f}% |"
        )
    print(
        f"\nratio session ÷ local: raw {med['cat_raw'] / med['cat_base']:.3f}, plugin "
        f"{med['cat_plugin'] / med['cat_base']:.3f}; goal ≥ {GOAL_MBPS:.0f} MB/s with our "
        f"plugin: {'met' if med['cat_plugin'] >= GOAL_MBPS else 'MISSED'} (the bench's raw "
        f"aiohttp client: {'also met' if med['cat_raw'] >= GOAL_MBPS else 'below'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--starts", type=int, default=25)
    ap.add_argument("--plugin-starts", type=int, default=10)
    ap.add_argument("--keys", type=int, default=600)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mb", type=int, default=200, help="file size in MB (10^6 bytes)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the broker and agent afterwards")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the agent starts shells as ssm-user")
    print(f"date -u: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine()}", flush=True)
    make_file(args.mb * 10**6)
    tmp = Path(tempfile.mkdtemp(prefix="hatchway-shell-bench-"))
    broker = srv.start_broker(tmp / "data", "--log-level", "WARNING")
    agent = None
    try:
        agent = srv.start_agent(broker, tmp / "agent", TARGET)
        asyncio.run(run(args, broker, agent))
    finally:
        if agent is not None:
            agent.stop()
        srv.stop_broker(broker)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
