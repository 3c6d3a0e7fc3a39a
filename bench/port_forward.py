"""Port-forward throughput on loopback: through broker + agent + our plugin, beside direct TCP.

Run with ``.venv/bin/python bench/port_forward.py`` (about a minute). Nothing is asserted: the
script prints MB/s (MB = 10^6 bytes) and ratios against a direct loopback TCP copy measured in
the same run between the same two endpoints.

Set-up: a real broker (``hatchway server``) and a registered ``hatchway agent`` run as
subprocesses on 127.0.0.1, as ``tests/harness/broker.py`` starts them. A third subprocess is
the node-side server: for ``GET <n>`` it sends ``n`` bytes and closes, for ``PUT <n>`` it reads
``n`` bytes and answers ``OK``. The client side is our ``session-manager-plugin`` started the
way the AWS CLI starts it (argv: StartSession response JSON, region, ``StartSession``,
profile, request JSON, endpoint) for ``AWS-StartPortForwardingSession`` with
``localPortNumber=0``; one session serves every run. This process is the local application:
blocking sockets in threads, ``recv_into`` a 1 MiB buffer.

Workloads, each run ``--runs`` times, interleaved with its baseline:

* **1 connection, download**: one connection fetches ``--mb`` MB (node → client).
* **8 connections, download**: 8 parallel connections fetch ``--mb``/8 MB each.
* **1 connection, upload**: one connection sends ``--mb`` MB (client → node).

The baseline does the same against the node-side server directly. CPU seconds of the broker,
the agent and the plugin are read from /proc for every run. ``--profile DIR`` samples the
three with py-spy during one extra run of the first workload (pick it with ``--only``) and
prints their hottest functions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import cpu_all, cpu_pid, machine, pyspy_start, server_conftest, summarize_raw

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET = "i-0be4c4b0bench0f0d"
GOAL_MBPS = 100.0
GOAL_RATIO = 0.30
BUF = 1 << 20


srv = server_conftest()

# The node-side server, run as its own process so that it does not share this one's GIL.
NODE_SERVER = textwrap.dedent(
    """
    import os, socket, socketserver, sys
    BLOCK = memoryview(os.urandom(1 << 20))

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            line = b""
            while not line.endswith(b"\\n"):
                more = sock.recv(1)
                if not more:
                    return
                line += more
            verb, n = line.split()
            n = int(n)
            if verb == b"GET":
                while n > 0:
                    piece = BLOCK[: min(n, len(BLOCK))]
                    sock.sendall(piece)
                    n -= len(piece)
            else:
                buf = bytearray(1 << 20)
                while n > 0:
                    got = sock.recv_into(buf, min(n, len(buf)))
                    if not got:
                        return
                    n -= got
                sock.sendall(b"OK\\n")

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


# -- helpers --------------------------------------------------------------------------------


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def download(port: int, n: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"GET {n}\n".encode())
        buf = bytearray(BUF)
        got = 0
        while got < n:
            k = s.recv_into(buf)
            if not k:
                break
            got += k
        return got


def upload(port: int, n: int) -> int:
    block = memoryview(os.urandom(BUF))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"PUT {n}\n".encode())
        left = n
        while left > 0:
            piece = block[: min(left, BUF)]
            s.sendall(piece)
            left -= len(piece)
        answer = s.recv(16)
        return n if answer == b"OK\n" else 0


def parallel(fn: Callable[[int, int], int], port: int, n: int, conns: int) -> int:
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(fn(port, n // conns))) for _ in range(conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results)


# -- the plugin, as the AWS CLI starts it ---------------------------------------------------


class Plugin:
    def __init__(self, broker: Any, node_port: int) -> None:
        ssm = broker.client("ssm")
        request = {
            "Target": TARGET,
            "DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"portNumber": [str(node_port)], "localPortNumber": ["0"]},
        }
        response = ssm.start_session(**request)
        response.pop("ResponseMetadata", None)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
            AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        )
        self.session_id = response["SessionId"]
        self.proc = subprocess.Popen(
            [
                str(BIN / "session-manager-plugin"),
                json.dumps(response),
                srv.REGION,
                "StartSession",
                "",
                json.dumps(request),
                broker.url,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        text = b""
        deadline = time.monotonic() + 30
        while b"Waiting for connections" not in text:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the plugin did not open its port: {text!r}")
            text += os.read(self.proc.stdout.fileno(), 4096)
        m = re.search(rb"Port (\d+) opened", text)
        assert m is not None
        self.port = int(m[1])

    def stop(self, broker: Any) -> None:
        broker.client("ssm").terminate_session(SessionId=self.session_id)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- main -----------------------------------------------------------------------------------

WORKLOADS: dict[str, tuple[Callable[[int, int], int], int]] = {
    "1 connection, download": (download, 1),
    "8 connections, download": (download, 8),
    "1 connection, upload": (upload, 1),
}


def timed(
    fn: Callable[[int, int], int], port: int, n: int, conns: int, pids: dict[str, int]
) -> dict[str, float]:
    before = {k: cpu_pid(p) for k, p in pids.items()}
    busy0 = cpu_all()
    t0 = time.perf_counter()
    got = parallel(fn, port, n, conns)
    secs = time.perf_counter() - t0
    if got != n - n % conns:
        raise RuntimeError(f"moved {got} of {n} bytes")
    out = {"secs": secs, "mbps": got / 1e6 / secs, "busy": (cpu_all() - busy0) / secs}
    out.update({f"{k}_cpu": cpu_pid(p) - before[k] for k, p in pids.items()})
    return out


def run(args: argparse.Namespace, broker: Any, agent: Any, node_port: int) -> None:
    n = args.mb * 10**6
    plugin = Plugin(broker, node_port)
    pids = {"broker": broker.proc.pid, "agent": agent.proc.pid, "plugin": plugin.proc.pid}
    try:
        timed(download, plugin.port, 20 * 10**6, 1, pids)  # warm-up
        timed(download, node_port, 20 * 10**6, 1, {})
        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        for name, (fn, conns) in WORKLOADS.items():
            if args.only and args.only not in name:
                continue
            res = results.setdefault(name, {"direct": [], "tunnel": []})
            for i in range(args.runs):
                res["direct"].append(timed(fn, node_port, n, conns, {}))
                res["tunnel"].append(timed(fn, plugin.port, n, conns, pids))
                print(
                    f"  {name} #{i + 1}: direct {res['direct'][-1]['mbps']:.0f} MB/s, "
                    f"tunnel {res['tunnel'][-1]['mbps']:.1f} MB/s",
                    flush=True,
                )
        report(results, n)
        if args.profile:
            exe = args.pyspy or shutil.which("py-spy") or "py-spy"
            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)
            first = next(iter(results))  # the first workload run (see --only)
            fn, conns = WORKLOADS[first]
            secs = int(max(r["secs"] for r in results[first]["tunnel"]) * 2 + 3)
            print(f"\nprofiling one run of {first!r} with py-spy ({exe}) → {out}")
            spies = {k: pyspy_start(exe, p, out / f"{k}.txt", secs) for k, p in pids.items()}
            time.sleep(1.0)
            r = timed(fn, plugin.port, n, conns, pids)
            print(f"  run: {r['mbps']:.1f} MB/s (sampled, slower)")
            for spy in spies.values():
                spy.wait(secs + 30)
            for k in pids:
                summarize_raw(out / f"{k}.txt", args.top)
    finally:
        plugin.stop(broker)


def report(results: dict[str, dict[str, list[dict[str, float]]]], n: int) -> None:
    print(f"\n### Port forwarding throughput, {n / 1e6:.0f} MB per run (MB = 10^6 bytes)\n")
    print(
        "| workload | path | runs | median MB/s | min–max MB/s | broker CPU s | agent CPU s | "
        "plugin CPU s | machine busy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for name, res in results.items():
        med = {}
        for path in ("direct", "tunnel"):
            runs = res[path]
            rates = [r["mbps"] for r in runs]
            med[path] = statistics.median(rates)

            def cpu(key: str, runs: list[dict[str, float]] = runs) -> str:
                vals = [r[f"{key}_cpu"] for r in runs if f"{key}_cpu" in r]
                return f"{statistics.median(vals):.2f}" if vals else "—"

            busy = statistics.median([r["busy"] for r in runs]) / (os.cpu_count() or 1)
            label = "direct loopback TCP" if path == "direct" else "**through Hatchway**"
            print(
                f"| {name} | {label} | {len(runs)} | {med[path]:.1f} | "
                f"{min(rates):.1f}–{max(rates):.1f} | {cpu('broker')} | {cpu('agent')} | "
                f"{cpu('plugin')} | {100 * busy:.0f}% |"
            )
        ratios[name] = med["tunnel"] / med["direct"]
        print(f"|  | ratio tunnel ÷ direct | | {ratios[name]:.3f} | | | | | |")
    single = results.get("1 connection, download")
    if single:
        mbps = statistics.median(r["mbps"] for r in single["tunnel"])
        ratio = ratios["1 connection, download"]
        print(
            f"\ngoal ≥ {GOAL_MBPS:.0f} MB/s for one connection: "
            f"{'met' if mbps >= GOAL_MBPS else 'MISSED'} ({mbps:.1f}); "
            f"goal ≥ {GOAL_RATIO:.0%} of direct: {'met' if ratio >= GOAL_RATIO else 'MISSED'} "
            f"({ratio:.1%})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=200, help="MB (10^6 bytes) per run")
    ap.add_argument("--only", help="run only workloads whose name contains this")
    ap.add_argument("--profile", metavar="DIR", help="py-spy broker, agent and plugin afterwards")
    ap.add_argument("--pyspy", help="path of the py-spy binary")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    print(f"date -u: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine()}", flush=True)
    print(f"load average at start: {loadavg()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="hatchway-port-bench-"))
    node = subprocess.Popen([sys.executable, "-c", NODE_SERVER], stdout=subprocess.PIPE, text=True)
    broker = srv.start_broker(tmp / "data", "--log-level", "WARNING")
    agent = None
    try:
        assert node.stdout is not None
        node_port = int(node.stdout.readline())
        agent = srv.start_agent(broker, tmp / "agent", TARGET)
        run(args, broker, agent, node_port)
    finally:
        if agent is not None:
            agent.stop()
        srv.stop_broker(broker)
        node.terminate()
        node.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {loadavg()}", flush=True)


if __name__ == "__main__":
    main()
