"""Brokers on PostgreSQL under many nodes and sessions (issue 12's benchmarks).

Starts a throwaway PostgreSQL 15 cluster (as the tests do: ``tests/pg.py``, fsync off), N
brokers on one database (one ``master.key``), and simulated nodes and clients from
``bench/loadagent.py`` processes. Nothing is asserted; figures are printed.

``idle``: establish ``--sessions`` concurrent sessions (StartSession, both data-channel ends
open, the prompt received: any handshake done), hold them idle, measure broker RSS and open
descriptors per node and per session (``/proc``), PostgreSQL commits, rows and WAL per session
and per heartbeat, NOTIFYs, an echo probe on a sample, then TerminateSession them all::

    .venv/bin/python bench/cluster.py idle --brokers 2 --sessions 10000

``rate``: for each of ``--brokers 1,2,3``: StartSession+TerminateSession/s at ``--concurrency``
clients spread over the brokers (no data channel: the pair as ``broker_sessions.py`` measures
it on SQLite), then the shell start latency (StartSession → the prompt through the data
channel, one at a time) against simulated nodes::

    .venv/bin/python bench/cluster.py rate --brokers 1,2,3

Routing: on this branch a session's data channel works only on the broker that holds its
node's control channel, so each simulated client sends StartSession to that broker (which puts
its own address in the StreamUrl). ``--lb URL`` sends everything (registration, control
channels, API calls) to one load balancer's URL instead, for when sessions work across brokers:
the brokers then get ``--public-url URL`` (StreamUrls name the balancer) and ``--ports`` puts
them on the ports the balancer is configured for.
Needs root (PostgreSQL runs as ``postgres``) like the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import ROOT, cpu_all, cpu_pid, cpu_self, machine
from leanhttp import Connection, Signer

sys.path.insert(0, str(ROOT / "tests"))
from harness.postgres import postgres_cluster, why_unavailable

HERE = Path(__file__).resolve().parent

BIN = Path(sys.executable).parent
ADMIN_KEY = "AKIAHATCHWAYCLUSTER01"
ADMIN_SECRET = "hatchway-cluster-bench-admin-secret-00000"
REGION = "us-east-1"
AGENT = "Boto3/1.44.8 md/Botocore#1.44.8 hatchway-bench"
PER_ACTIVATION = 1000  # AWS's largest RegistrationLimit
PORTS_HELP = (
    "comma-separated ports for the brokers on 127.0.0.1 (default: free ports), so that a load "
    "balancer configured for them (--lb) can be in front"
)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Broker:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    data: Path

    def usage(self) -> dict[str, float]:
        return usage(self.proc.pid)


def usage(pid: int) -> dict[str, float]:
    """RSS (MiB), open descriptors and CPU seconds of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    wait = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            wait += int((task / "schedstat").read_text().split()[1]) / 1e9
    return {
        "rss_mib": rss / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": cpu_pid(pid),
        "wait_s": wait,  # runnable, waiting for a CPU (/proc/PID/schedstat)
    }


def start_broker(
    root: Path,
    name: str,
    db: str,
    ping: float,
    key_from: Path | None,
    profile: Path | None,
    port: int = 0,
    public_url: str | None = None,
) -> Broker:
    data = root / name
    data.mkdir(mode=0o700)
    if key_from is not None:
        shutil.copy(key_from / "master.key", data / "master.key")
    log = root / f"{name}.log"
    env = {
        **os.environ,
        "HATCHWAY_ADMIN_ACCESS_KEY_ID": ADMIN_KEY,
        "HATCHWAY_ADMIN_SECRET_ACCESS_KEY": ADMIN_SECRET,
    }
    cmd = [str(BIN / "hatchway")]
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), str(BIN / "hatchway")]
    cmd += [
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data),
        "--database-url",
        db,
        "--region",
        REGION,
        "--ping-interval",
        str(ping),
        "--log-level",
        "WARNING",
        # One principal (the admin) and one address (127.0.0.1) carry the whole load here:
        # measure the broker, not its per-principal throttle or per-address cap.
        "--throttle-rate",
        "0",
        "--max-connections-per-address",
        "1000000",
    ]
    if public_url:  # behind a load balancer: StreamUrls name it, not this broker
        cmd += ["--public-url", public_url]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on " in text:
            url = text.split("listening on ", 1)[1].split()[0]
            return Broker(url, proc, log, data)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"broker did not start:\n{log.read_text()}")


def stop(proc: subprocess.Popen[Any], wait: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Load:
    """One ``loadagent.py`` process: commands on stdin, one JSON answer per line on stdout."""

    def __init__(self, role: str, spec: dict[str, Any], log: Path) -> None:
        self.log = open(log, "wb")  # noqa: SIM115 - lives as long as the process
        # The spec goes in a file: thousands of targets exceed what one argument may hold.
        path = Path(log).with_suffix(".json")
        path.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "loadagent.py"), role, "@" + str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )

    def read(self, timeout: float = 1800) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout)
            self.log.flush()
            tail = Path(self.log.name).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"load process ended:\n{tail}")
        out: dict[str, Any] = json.loads(line)
        return out

    def send(self, cmd: str, **more: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **more}) + "\n").encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.send("exit")
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- PostgreSQL counters ----------------------------------------------------------------------


class PgCounters:
    """Commits, rows written and WAL bytes of the bench database, and the NOTIFYs on the
    brokers' invalidation channel (``hatchway_cache``)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.notifies = 0
        self.conn.add_notify_handler(lambda _n: self._count())
        self.conn.execute("LISTEN hatchway_cache")
        self.db = url.rsplit("/", 1)[1]

    def _count(self) -> None:
        self.notifies += 1

    def snapshot(self) -> dict[str, float]:
        row = self.conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') FROM pg_stat_database "
            "WHERE datname = %s",
            (self.db,),
        ).fetchone()
        assert row is not None
        return {
            "commits": float(row[0]),
            "inserted": float(row[1]),
            "updated": float(row[2]),
            "deleted": float(row[3]),
            "wal_bytes": float(row[4]),
            "notifies": float(self.notifies),
            "t": time.monotonic(),
        }


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


# -- the set-up -------------------------------------------------------------------------------


class Cluster:
    def __init__(
        self,
        brokers: int,
        ping: float,
        profile: Path | None,
        ports: list[int] | None = None,
        lb: str | None = None,
    ) -> None:
        self.n = brokers
        self.ports = ports or []
        self.lb = lb
        self.ping = ping
        self.profile = profile
        self.root = Path(tempfile.mkdtemp(prefix="hatchway-cluster-bench-"))
        self.brokers: list[Broker] = []
        self.loads: list[Load] = []
        self._pg: Any = None

    def __enter__(self) -> Cluster:
        self._pg = postgres_cluster()
        url = self._pg.__enter__()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE hatchway_bench")
        self.db = url.rsplit("/", 1)[0] + "/hatchway_bench"
        for i in range(self.n):
            self.brokers.append(
                start_broker(
                    self.root,
                    f"b{i}",
                    self.db,
                    self.ping,
                    self.brokers[0].data if self.brokers else None,
                    self.profile if i == 0 else None,
                    self.ports[i] if i < len(self.ports) else 0,
                    self.lb,
                )
            )
        self.pg = PgCounters(self.db)
        return self

    def __exit__(self, *exc: object) -> None:
        for load in self.loads:
            load.close()
        for b in self.brokers:
            stop(b.proc, 120)
        self.pg.conn.close()
        self._pg.__exit__(None, None, None)
        shutil.rmtree(self.root, ignore_errors=True)

    def ssm(self, k: int = 0) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "ssm",
            endpoint_url=self.brokers[k].url,
            region_name=REGION,
            aws_access_key_id=ADMIN_KEY,
            aws_secret_access_key=ADMIN_SECRET,
            config=Config(retries={"max_attempts": 1}),
        )

    def activations(self, count: int) -> list[tuple[str, str, int]]:
        ssm = self.ssm()
        out = []
        left = count
        while left > 0:
            n = min(PER_ACTIVATION, left)
            act = ssm.create_activation(IamRole="SSMServiceRole", RegistrationLimit=n)
            out.append((act["ActivationId"], act["ActivationCode"], n))
            left -= n
        return out

    def nodes(self, count: int, processes: int, lb: str | None) -> list[tuple[str, str]]:
        """Register and connect ``count`` simulated nodes from ``processes`` load agents (one
        per broker by default); returns ``(instance id, broker URL)`` of each."""
        endpoints = [lb] if lb else [b.url for b in self.brokers]
        acts = self.activations(count)
        # Split the activations' slots over the processes.
        slots = [(a, c) for a, c, n in acts for _ in range(n)]
        found: list[tuple[str, str]] = []
        t0 = time.perf_counter()
        started: list[Load] = []
        for p in range(processes):
            mine = slots[p::processes]
            if not mine:
                continue
            grouped: dict[tuple[str, str], int] = {}
            for a in mine:
                grouped[a] = grouped.get(a, 0) + 1
            spec = {
                "endpoints": [endpoints[p % len(endpoints)]],
                "activations": [[a, c, n] for (a, c), n in grouped.items()],
                "region": REGION,
                "offset": p * len(mine),
                "concurrency": 8,
            }
            load = Load("agent", spec, self.root / f"agent{p}.log")
            self.loads.append(load)
            started.append(load)
        ready = [load.read() for load in started]
        for r in ready:
            found += [(iid, ep) for iid, ep in r["nodes"]]
        self.nodes_s = time.perf_counter() - t0
        self.ready = ready
        return found


def quantiles(values: list[float]) -> str:
    if not values:
        return "n=0"
    ms = sorted(v * 1000 for v in values)
    if len(ms) < 2:
        return f"n=1 {ms[0]:.1f} ms"
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return (
        f"n={len(ms)} p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, p99 {q[98]:.1f} ms, "
        f"max {ms[-1]:.1f} ms"
    )


def brokers_usage(c: Cluster) -> list[dict[str, float]]:
    return [b.usage() for b in c.brokers]


def total(us: list[dict[str, float]], key: str) -> float:
    return sum(u[key] for u in us)


# -- idle -------------------------------------------------------------------------------------


def cpu_ms(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    """Broker CPU seconds between two usage snapshots."""
    return total(b, "cpu_s") - total(a, "cpu_s")


def idle(args: argparse.Namespace) -> None:
    n_sessions = args.sessions
    n_nodes = args.nodes or n_sessions
    now = dt.datetime.now(dt.UTC)
    print(f"# Concurrent idle sessions, {now:%Y-%m-%d %H:%M} UTC, load average {_load()}")
    print(f"# {machine()}; {args.brokers} broker(s) on PostgreSQL 15 (fsync off, as the tests)")
    print(f"# {n_nodes} simulated nodes, {n_sessions} sessions, ping interval {args.ping:g} s")
    with Cluster(args.brokers, args.ping, args.profile, _ports(args), args.lb) as c:
        # The brokers alone: their background duties.
        time.sleep(2)
        b0, q0 = brokers_usage(c), c.pg.snapshot()
        time.sleep(args.hold)
        b1, q1 = brokers_usage(c), c.pg.snapshot()
        bg = diff(q0, q1)
        bg_rate = bg["commits"] / bg["t"]
        print(
            f"brokers alone {bg['t']:.0f} s: CPU {cpu_ms(b0, b1) / bg['t'] * 100:.1f}% of a core, "
            f"PostgreSQL {bg_rate:.1f} commits/s (background duties)",
            flush=True,
        )
        base = b1
        t0 = time.perf_counter()
        nodes = c.nodes(n_nodes, args.agents or args.brokers, args.lb)
        t1 = time.perf_counter()
        reg = max(r["register_s"] for r in c.ready)
        con = max(r["connect_s"] for r in c.ready)
        print(
            f"nodes: {len(nodes)} registered in {reg:.1f} s ({len(nodes) / max(reg, 1e-9):.0f}/s) "
            f"and connected in {con:.1f} s ({len(nodes) / max(con, 1e-9):.0f}/s); "
            f"{t1 - t0:.1f} s in all",
            flush=True,
        )
        time.sleep(2)
        # Nodes alone, idle: the heartbeat load.
        u0, p0, all0, pgc0 = brokers_usage(c), c.pg.snapshot(), cpu_all(), _pg_cpu()
        time.sleep(args.hold)
        u1, p1, all1, pgc1 = brokers_usage(c), c.pg.snapshot(), cpu_all(), _pg_cpu()
        hb = diff(p0, p1)
        secs = hb["t"]
        beats = len(nodes) / args.ping * secs
        hb_commits = (hb["commits"] - bg_rate * secs) / max(beats, 1)
        print(
            f"nodes idle {secs:.0f} s: {beats / secs:.0f} heartbeats/s; broker CPU "
            f"{cpu_ms(u0, u1) / secs * 100:.1f}% of a core "
            f"({cpu_ms(u0, u1) / max(beats, 1) * 1e3:.3f} ms per heartbeat), PostgreSQL CPU "
            f"{(pgc1 - pgc0) / secs * 100:.1f}%, machine {(all1 - all0) / secs * 100:.0f}%; "
            f"PostgreSQL {hb['commits'] / secs:.0f} commits/s ({hb_commits:.2f} per heartbeat "
            f"beyond the background), {hb['updated'] / secs:.0f} rows updated/s, "
            f"{hb['wal_bytes'] / max(beats, 1):.0f} B WAL per heartbeat; "
            f"{hb['notifies']:.0f} NOTIFYs",
            flush=True,
        )
        per_node_rss = (total(u1, "rss_mib") - total(base, "rss_mib")) / len(nodes) * 1024
        per_node_fd = (total(u1, "fds") - total(base, "fds")) / len(nodes)
        print(
            f"brokers with the nodes: RSS {total(u1, 'rss_mib'):.0f} MiB "
            f"(from {total(base, 'rss_mib'):.0f}), fds {total(u1, 'fds'):.0f}: "
            f"{per_node_rss:.1f} KiB and {per_node_fd:.2f} fds per node",
            flush=True,
        )
        # The sessions.
        clients = args.clients or args.brokers
        shares: dict[int, list[tuple[str, str]]] = {}
        for i in range(n_sessions):
            shares.setdefault(i % clients, []).append(nodes[i % len(nodes)])
        loads = []
        e0, s0, all_e0, pge0 = c.pg.snapshot(), brokers_usage(c), cpu_all(), _pg_cpu()
        for k, mine in shares.items():
            spec = {
                "key": ADMIN_KEY,
                "secret": ADMIN_SECRET,
                "region": REGION,
                "targets": mine,
                "concurrency": args.concurrency,
                "document": args.document,
                "deadline": args.deadline,
            }
            load = Load("client", spec, c.root / f"client{k}.log")
            c.loads.append(load)
            loads.append(load)
        est = [load.read() for load in loads]
        e1, s1, all_e1, pge1 = c.pg.snapshot(), brokers_usage(c), cpu_all(), _pg_cpu()
        ok = sum(r["sessions"] for r in est)
        lat = [x for r in est for x in r["latencies"]]
        wall = e1["t"] - e0["t"]
        errors = [r["errors"] for r in est if r["errors"]]
        first = next((r["first_error"] for r in est if r["first_error"]), "")
        print(
            f"sessions: {ok} of {n_sessions} established in {wall:.1f} s ({ok / wall:.0f}/s); "
            f"StartSession → prompt {quantiles(lat)}; errors {errors or 0} {first}",
            flush=True,
        )
        ed = diff(e0, e1)
        beats = len(nodes) / args.ping * ed["t"]
        other = (bg_rate + hb_commits * len(nodes) / args.ping) * ed["t"]
        cpu_est = cpu_ms(s0, s1)
        print(
            f"establishing: broker CPU {cpu_est:.1f} s ({cpu_est / max(ok, 1) * 1e3:.2f} ms per "
            f"session, {cpu_est / wall * 100:.0f}% of a core; waiting for a CPU "
            f"{(total(s1, 'wait_s') - total(s0, 'wait_s')) / wall * 100:.0f}% of the time), "
            f"PostgreSQL CPU "
            f"{(pge1 - pge0) / wall * 100:.0f}% ({(pge1 - pge0) / max(ok, 1) * 1e3:.2f} ms per "
            f"session), machine {(all_e1 - all_e0) / wall * 100:.0f}% of one core; PostgreSQL per "
            f"session (background and heartbeats taken out): "
            f"{(ed['commits'] - other) / max(ok, 1):.2f} commits, "
            f"{ed['inserted'] / max(ok, 1):.2f} rows inserted, "
            f"{(ed['updated'] - beats) / max(ok, 1):.2f} updated, "
            f"{(ed['wal_bytes'] - beats * hb['wal_bytes'] / max(len(nodes) / args.ping * secs, 1)) / max(ok, 1) / 1024:.1f} KiB WAL; "  # noqa: E501
            f"{ed['notifies']:.0f} NOTIFYs",
            flush=True,
        )
        time.sleep(2)
        i0, ui0 = c.pg.snapshot(), brokers_usage(c)
        time.sleep(args.hold)
        i1, ui1 = c.pg.snapshot(), brokers_usage(c)
        per_rss = (total(ui1, "rss_mib") - total(u1, "rss_mib")) / max(ok, 1) * 1024
        per_fd = (total(ui1, "fds") - total(u1, "fds")) / max(ok, 1)
        idl = diff(i0, i1)
        each = ", ".join(f"{u['rss_mib']:.0f} MiB/{u['fds']:.0f} fds" for u in ui1)
        print(
            f"brokers with the sessions: RSS {total(ui1, 'rss_mib'):.0f} MiB, "
            f"fds {total(ui1, 'fds'):.0f} ({each}): {per_rss:.1f} KiB and {per_fd:.2f} fds per "
            f"session; idle {idl['t']:.0f} s: broker CPU "
            f"{cpu_ms(ui0, ui1) / idl['t'] * 100:.1f}% of a core, "
            f"{idl['commits'] / idl['t']:.0f} commits/s",
            flush=True,
        )
        for load in c.loads:
            load.send("usage")
        use = [(load in loads, load.read()) for load in c.loads]
        ag = [u for is_client, u in use if not is_client]
        cl = [u for is_client, u in use if is_client]
        print(
            f"load processes: agents {sum(u['rss_mib'] for u in ag):.0f} MiB, "
            f"{sum(u['fds'] for u in ag):.0f} fds, {sum(u['cpu_s'] for u in ag):.1f} CPU s; "
            f"clients {sum(u['rss_mib'] for u in cl):.0f} MiB, {sum(u['fds'] for u in cl):.0f} "
            f"fds, {sum(u['cpu_s'] for u in cl):.1f} CPU s",
            flush=True,
        )
        for load in loads:
            load.send("echo", count=max(1, args.echo // len(loads)))
        echo = [x for load in loads for x in load.read()["latencies"]]
        print(f"echo among {ok} idle sessions: {quantiles(echo)}", flush=True)
        t0_, ut0 = c.pg.snapshot(), brokers_usage(c)
        for load in loads:
            load.send("terminate")
        term = [load.read() for load in loads]
        t1_, ut1 = c.pg.snapshot(), brokers_usage(c)
        td = diff(t0_, t1_)
        beats = len(nodes) / args.ping * td["t"]
        other = (bg_rate + hb_commits * len(nodes) / args.ping) * td["t"]
        print(
            f"teardown: {max(r['wall_s'] for r in term):.1f} s, broker CPU "
            f"{cpu_ms(ut0, ut1) / max(ok, 1) * 1e3:.2f} ms per session; PostgreSQL per session "
            f"{(td['commits'] - other) / max(ok, 1):.2f} commits, "
            f"{(td['updated'] - beats) / max(ok, 1):.2f} rows updated; errors "
            f"{[r['errors'] for r in term if r['errors']] or 0}",
            flush=True,
        )
        time.sleep(3)
        ua = brokers_usage(c)
        print(
            f"after teardown: RSS {total(ua, 'rss_mib'):.0f} MiB, fds {total(ua, 'fds'):.0f}",
            flush=True,
        )
    if args.profile is not None:
        import pstats

        for key in ("tottime", "cumulative"):
            print(f"\n--- broker 0, top 25 by {key} ---")
            pstats.Stats(str(args.profile)).strip_dirs().sort_stats(key).print_stats(25)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _pg_cpu() -> float:
    return sum(cpu_pid(p) for p in _postgres_pids())


# -- rate -------------------------------------------------------------------------------------


async def pairs(spec: dict[str, Any]) -> dict[str, Any]:
    """StartSession + TerminateSession in a loop on ``concurrency`` connections spread over
    the brokers, each on a random node; no data channel."""
    urls: list[str] = spec["urls"]
    targets: list[str] = spec["targets"]
    signers = {u: Signer(u, ADMIN_KEY, ADMIN_SECRET, REGION, AGENT) for u in urls}
    loop = asyncio.get_running_loop()
    counts = {"pairs": 0, "errors": 0}
    lat: list[float] = []
    first: list[str] = []
    rnd = random.Random(1)

    async def worker(k: int) -> None:
        url = urls[k % len(urls)]
        signer = signers[url]
        conn = await Connection.open(signer.host)
        try:
            while loop.time() < end:
                body, headers = signer.ssm("StartSession", {"Target": rnd.choice(targets)})
                t0 = loop.time()
                status, raw = await conn.request("POST", "/", body, headers)
                t1 = loop.time()
                if status != 200:
                    counts["errors"] += 1
                    first.append(raw[:300].decode("utf-8", "replace"))
                    continue
                sid = json.loads(raw)["SessionId"]
                body, headers = signer.ssm("TerminateSession", {"SessionId": sid})
                status, raw = await conn.request("POST", "/", body, headers)
                if status != 200:
                    counts["errors"] += 1
                    first.append(raw[:300].decode("utf-8", "replace"))
                if t0 >= warm and loop.time() <= end:
                    counts["pairs"] += 1
                    lat.append(t1 - t0)
        finally:
            conn.close()

    warm = loop.time() + spec["warmup"]
    end = warm + spec["seconds"]
    tasks = [asyncio.create_task(worker(k)) for k in range(spec["concurrency"])]
    await asyncio.sleep(max(0.0, warm - loop.time()))
    c0, b0, a0 = cpu_self(), sum(cpu_pid(p) for p in spec["pids"]), cpu_all()
    w0 = sum(usage(p)["wait_s"] for p in spec["pids"])
    await asyncio.sleep(max(0.0, end - loop.time()))
    c1, b1, a1 = cpu_self(), sum(cpu_pid(p) for p in spec["pids"]), cpu_all()
    w1 = sum(usage(p)["wait_s"] for p in spec["pids"])
    await asyncio.gather(*tasks)
    return {
        "pairs": counts["pairs"],
        "errors": counts["errors"],
        "first_error": first[0] if first else "",
        "start_latencies": lat,
        "client_cpu": (c1 - c0) / spec["seconds"],
        "broker_cpu": (b1 - b0) / spec["seconds"],
        "broker_wait": (w1 - w0) / spec["seconds"],
        "machine_cpu": (a1 - a0) / spec["seconds"],
    }


def rate(args: argparse.Namespace) -> None:
    now = dt.datetime.now(dt.UTC)
    print(f"# Brokers on PostgreSQL: sessions/s, start latency, {now:%Y-%m-%d %H:%M} UTC")
    print(f"# load average at the start {_load()}")
    print(f"# {machine()}; PostgreSQL 15 (fsync off, as the tests)")
    rows = []
    for n in [int(x) for x in args.brokers.split(",")]:
        with Cluster(n, args.ping, None, _ports(args), args.lb) as c:
            nodes = c.nodes(args.nodes, n, args.lb)
            time.sleep(1)
            q0 = c.pg.snapshot()
            time.sleep(5)
            q1 = c.pg.snapshot()
            bg = diff(q0, q1)
            bg_rate = bg["commits"] / bg["t"]  # background duties and heartbeats
            pg_pids = _postgres_pids()
            spec = {
                "urls": [args.lb] if args.lb else [b.url for b in c.brokers],
                "targets": [iid for iid, _ in nodes],
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "pids": [b.proc.pid for b in c.brokers],
            }
            pg0 = c.pg.snapshot()
            pgc0 = sum(cpu_pid(p) for p in _postgres_pids()) if pg_pids else 0.0
            out = subprocess.run(
                [sys.executable, __file__, "pairs-client", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            pg1 = c.pg.snapshot()
            pgc1 = sum(cpu_pid(p) for p in _postgres_pids())
            wall = args.seconds + args.warmup
            pgd = diff(pg0, pg1)
            r["pg_cpu"] = (pgc1 - pgc0) / (pg1["t"] - pg0["t"])
            done = r["pairs"] * (wall / args.seconds)  # the warm-up's pairs too, roughly
            r["commits_per_pair"] = (pgd["commits"] - bg_rate * pgd["t"]) / max(done, 1)
            # Shell start: StartSession → prompt through the data channel, one at a time.
            start_lat = asyncio.run(_starts(nodes, args.starts))
            r["shell_start"] = start_lat
            rows.append((n, r))
            print(
                f"{n} broker(s): {r['pairs'] / args.seconds:,.0f} Start+Terminate pairs/s "
                f"(StartSession {quantiles(r['start_latencies'])}), errors {r['errors']} "
                f"{r['first_error'][:200]}; CPU in cores: brokers {r['broker_cpu']:.2f} (and "
                f"{r['broker_wait']:.2f} waiting for a CPU), "
                f"PostgreSQL {r['pg_cpu']:.2f}, client {r['client_cpu']:.2f}, machine "
                f"{r['machine_cpu']:.2f}; {r['commits_per_pair']:.2f} commits per pair; "
                f"shell start (StartSession → prompt) {quantiles(start_lat)}",
                flush=True,
            )
    print()
    print(
        "| brokers | Start+Terminate pairs/s | StartSession p50 / p99 ms | brokers CPU "
        "| PostgreSQL CPU | client CPU | machine | shell start p50 / p90 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows:
        s = sorted(r["start_latencies"])
        h = sorted(r["shell_start"])
        print(
            f"| {n} | {r['pairs'] / args.seconds:,.0f} | {pick(s, 0.5):.1f} / {pick(s, 0.99):.1f} "
            f"| {r['broker_cpu']:.2f} | {r['pg_cpu']:.2f} | {r['client_cpu']:.2f} "
            f"| {r['machine_cpu']:.2f} "
            f"| {pick(h, 0.5):.1f} / {pick(h, 0.9):.1f} |"
        )


def _ports(args: argparse.Namespace) -> list[int]:
    return [int(p) for p in args.ports.split(",")] if args.ports else []


def pick(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` in ms (NaN if none)."""
    return values[min(len(values) - 1, int(q * len(values)))] * 1e3 if values else math.nan


def _postgres_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "postgres":
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


async def _starts(nodes: list[tuple[str, str]], count: int) -> list[float]:
    from loadagent import LoadClient

    client = LoadClient(ADMIN_KEY, ADMIN_SECRET, REGION)
    client.ticker.start()
    conns: dict[str, Connection] = {}
    out = []
    try:
        for i in range(count):
            target, endpoint = nodes[i % len(nodes)]
            conn = conns.get(endpoint)
            if conn is None:
                conn = conns[endpoint] = await Connection.open(endpoint.split("://", 1)[1])
            side = await asyncio.wait_for(client.start_one(conn, endpoint, target), 30)
            out.append(side.established - side.started)
            await client.call(conn, endpoint, "TerminateSession", {"SessionId": side.session_id})
            await asyncio.wait_for(side.closed.wait(), 30)
    finally:
        for c in conns.values():
            c.close()
    return out


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("idle", help="concurrent idle sessions")
    a.add_argument("--brokers", type=int, default=2)
    a.add_argument("--sessions", type=int, default=1000)
    a.add_argument(
        "--nodes", type=int, default=0, help="simulated nodes (default: one per session)"
    )
    a.add_argument(
        "--agents", type=int, default=0, help="load-agent processes (default: one per broker)"
    )
    a.add_argument(
        "--clients", type=int, default=0, help="load-client processes (default: one per broker)"
    )
    a.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="sessions being started at once per client process",
    )
    a.add_argument("--hold", type=float, default=20.0, help="seconds each idle phase is measured")
    a.add_argument("--ping", type=float, default=20.0, help="the brokers' --ping-interval")
    a.add_argument(
        "--echo", type=int, default=200, help="sessions probed with an echo while the rest idle"
    )
    a.add_argument("--document", help="session document (default: the shell)")
    a.add_argument(
        "--deadline",
        type=float,
        help="seconds after which no new session is started; the run goes on with those reached",
    )
    a.add_argument("--lb", help="one load balancer URL for everything (sessions across brokers)")
    a.add_argument("--ports", help=PORTS_HELP)
    a.add_argument(
        "--profile", type=Path, help="run broker 0 under cProfile, write the profile here"
    )
    r = sub.add_parser("rate", help="Start+Terminate/s and shell start latency per broker count")
    r.add_argument("--brokers", default="1,2,3")
    r.add_argument("--nodes", type=int, default=30)
    r.add_argument("--concurrency", type=int, default=50)
    r.add_argument("--seconds", type=float, default=10.0)
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--starts", type=int, default=100, help="shell starts timed one at a time")
    r.add_argument("--ping", type=float, default=20.0)
    r.add_argument("--lb", help="one load balancer URL for everything (sessions across brokers)")
    r.add_argument("--ports", help=PORTS_HELP)
    c = sub.add_parser("pairs-client", help=argparse.SUPPRESS)
    c.add_argument("spec")
    args = ap.parse_args()
    if args.mode == "pairs-client":
        print(json.dumps(asyncio.run(pairs(json.loads(args.spec)))))
        return
    reason = why_unavailable()
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    if args.mode == "idle":
        idle(args)
    else:
        rate(args)


if __name__ == "__main__":
    main()
