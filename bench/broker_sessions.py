"""Broker throughput: signed StartSession + TerminateSession against a real ``hatchway server``.

Run with ``.venv/bin/python bench/broker_sessions.py`` (about three minutes). Nothing is
asserted: the script prints figures and ratios against baselines measured in the same run.

Set-up: a broker (``hatchway server``, SQLite store in a temporary data dir, ``--ping-interval
5``) and a registered agent (``hatchway agent``, instance ``i-02573cafcfEXAMPLE``, Online) run as
subprocesses (``--workers N``: the broker with N API worker processes). The load comes from a
third process, a lean asyncio HTTP/1.1 client (``leanhttp.py``) that builds every request as
boto3 builds it and signs it with SigV4, with the admin credentials the script gave the broker;
at start it checks that its signed headers equal botocore's ``SigV4Auth`` output for the same
request and instant, so the broker receives exactly what boto3 would send. (Until 2026-11-28
the client used aiohttp and botocore's signer: 0.35–0.45 ms of client CPU per request, which on
two cores took CPU from the broker being measured.)

Workloads, each run at 1, 10 and 50 concurrent clients (one keep-alive connection each) for
``--seconds`` after ``--warmup`` seconds that are not counted:

* ``health``: ``GET /health`` (no signature, no store): aiohttp's floor.
* ``sts``: signed ``sts:GetCallerIdentity`` (Query POST): routing, SigV4 verification, key
  lookup, one IAM decision, XML output and the audit record (store row and JSON line).
* ``status``: signed ``ssm:GetConnectionStatus`` (JSON 1.1): the same plus one read of the
  instance row and its ping status; the closest cheap relative of StartSession.
* ``session``: signed ``ssm:StartSession(Target=…)`` followed by
  ``ssm:TerminateSession(SessionId=…)`` on each client in turn. Latencies are per request.

Before the load, the client times SigV4 signing alone, its own and botocore's
(``SigV4Auth.add_auth`` on a fresh ``AWSRequest``, as boto3 does per request). During each
workload it records its own CPU time and the broker's (``/proc/PID/stat``, the broker and its
worker processes) so the reader can tell which side was saturated.

``--profile FILE`` runs the broker under cProfile, drives only the session workload at the
highest concurrency, writes the profile to FILE and prints its top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import cpu_all, cpu_self, cpu_tree, machine
from leanhttp import Connection, Signer

BIN = Path(sys.executable).parent
ADMIN_KEY = "AKIAHATCHWAYBENCH001"
ADMIN_SECRET = "hatchway-bench-admin-secret-000000000000"
REGION = "us-east-1"
TARGET = "i-02573cafcfEXAMPLE"
WORKLOADS = ("health", "sts", "status", "session")
GOAL_RPS = 1000.0
GOAL_P99_MS = 20.0
AGENT = "Boto3/1.44.8 md/Botocore#1.44.8 hatchway-bench"


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_broker(tmp: Path, profile: Path | None, workers: int = 0) -> tuple[Proc, str]:
    log = tmp / "broker.log"
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
        "127.0.0.1:0",
        "--data-dir",
        str(tmp / "data"),
        "--region",
        REGION,
        "--ping-interval",
        "5",
        "--log-level",
        "WARNING",
        "--workers",
        str(workers),
        # One principal (the admin) is the whole load here: measure the broker, not its
        # per-principal throttle (docs/broker.md, "Limits").
        "--throttle-rate",
        "0",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text())
        if m:
            return Proc(proc, log), m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"broker did not start:\n{log.read_text()}")


def _ssm(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "ssm",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(retries={"max_attempts": 1}),
    )


def start_agent(tmp: Path, url: str) -> Proc:
    ssm = _ssm(url)
    act = ssm.create_activation(IamRole="SSMServiceRole")
    # An EC2-style id is the operator's to allow (docs/nodes.md).
    subprocess.run(
        [
            str(BIN / "hatchway"),
            "activation",
            "allow-instance-id",
            "--data-dir",
            str(tmp / "data"),
            act["ActivationId"],
            TARGET,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    log = tmp / "agent.log"
    cmd = [
        str(BIN / "hatchway"),
        "agent",
        "--endpoint",
        url,
        "--activation-id",
        act["ActivationId"],
        "--instance-id",
        TARGET,
        "--state-dir",
        str(tmp / "agent"),
    ]
    env = {**os.environ, "HATCHWAY_ACTIVATION_CODE": act["ActivationCode"]}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [TARGET]}]
        )["InstanceInformationList"]
        if items and items[0]["PingStatus"] == "Online":
            return Proc(proc, log)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"agent did not come online:\n{log.read_text()}")


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    """One client process for one workload (or the signing baseline); returns its figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--client", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the client process ---------------------------------------------------------------------


def _signer(url: str) -> Signer:
    return Signer(url, ADMIN_KEY, ADMIN_SECRET, REGION, AGENT)


def _run_delay(pid: int) -> float:
    """Seconds the process spent runnable but waiting for a CPU (``/proc/PID/schedstat``)."""
    total = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")
    return total


def sign_baseline(url: str, count: int) -> dict[str, Any]:
    """Signing alone: the load client's signer, and botocore's (what boto3 spends)."""
    signer = _signer(url)
    body = json.dumps({"Target": TARGET}).encode()
    headers = signer.ssm("StartSession", {"Target": TARGET})[1]
    plain = {k: headers[k] for k in ("X-Amz-Target", "Content-Type", "User-Agent")}
    plain["Content-Length"] = str(len(body))

    def best(fn: Callable[[], object]) -> float:
        for _ in range(200):
            fn()
        out = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(count):
                fn()
            out = min(out, (time.perf_counter() - t0) / count)
        return out * 1e6

    return {
        "sign_us": best(lambda: signer.ssm("StartSession", {"Target": TARGET})),
        "botocore_us": best(lambda: signer.botocore("ssm", body, dict(plain))),
    }


async def load(spec: dict[str, Any]) -> dict[str, Any]:
    signer = _signer(spec["url"])
    kind: str = spec["kind"]
    n: int = spec["concurrency"]
    lat: dict[str, list[float]] = {"a": [], "b": []}
    counts = {"a": 0, "b": 0, "pairs": 0}
    errors: dict[str, int] = {}
    first_error: list[str] = []
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    warm_end = t_start + spec["warmup"]
    end = warm_end + spec["seconds"]

    async def post(conn: Connection, body: bytes, headers: dict[str, str]) -> Any:
        status, raw = await conn.request("POST", "/", body, headers)
        if status != 200:
            code = str(status)
            errors[code] = errors.get(code, 0) + 1
            if not first_error:
                first_error.append(raw.decode("utf-8", "replace")[:400])
            return None
        return raw

    def record(slot: str, t0: float, t1: float) -> None:
        if t0 >= warm_end and t1 <= end:
            counts[slot] += 1
            lat[slot].append(t1 - t0)

    async def worker(session: Connection) -> None:
        now = loop.time
        while now() < end:
            if kind == "health":
                t0 = now()
                status, _ = await session.request("GET", "/health")
                if status != 200:
                    errors["health"] = errors.get("health", 0) + 1
                record("a", t0, now())
            elif kind in ("sts", "status"):
                if kind == "sts":
                    body, headers = signer.sts("GetCallerIdentity")
                else:
                    body, headers = signer.ssm("GetConnectionStatus", {"Target": TARGET})
                t0 = now()
                await post(session, body, headers)
                record("a", t0, now())
            else:
                body, headers = signer.ssm("StartSession", {"Target": TARGET})
                t0 = now()
                raw = await post(session, body, headers)
                t1 = now()
                record("a", t0, t1)
                if raw is None:
                    continue
                sid = json.loads(raw)["SessionId"]
                body, headers = signer.ssm("TerminateSession", {"SessionId": sid})
                t2 = now()
                await post(session, body, headers)
                t3 = now()
                record("b", t2, t3)
                if t0 >= warm_end and t3 <= end:
                    counts["pairs"] += 1

    # Open the connections before the clock starts.
    conns = await asyncio.gather(*(Connection.open(signer.host) for _ in range(n)))
    try:
        warm_end = loop.time() + spec["warmup"]
        end = warm_end + spec["seconds"]
        tasks = [asyncio.create_task(worker(conn)) for conn in conns]
        await asyncio.sleep(max(0.0, warm_end - loop.time()))
        cpu0, broker0, wall0 = cpu_self(), cpu_tree(spec["broker_pid"]), loop.time()
        all0, wait0 = cpu_all(), _run_delay(spec["broker_pid"])
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu1, broker1, wall1 = cpu_self(), cpu_tree(spec["broker_pid"]), loop.time()
        all1, wait1 = cpu_all(), _run_delay(spec["broker_pid"])
        await asyncio.gather(*tasks)
    finally:
        for conn in conns:
            conn.close()
    wall = wall1 - wall0
    return {
        "kind": kind,
        "concurrency": n,
        "seconds": spec["seconds"],
        "a": counts["a"],
        "b": counts["b"],
        "pairs": counts["pairs"],
        "lat_a": _percentiles(lat["a"]),
        "lat_b": _percentiles(lat["b"]),
        "client_cpu": (cpu1 - cpu0) / wall,
        "broker_cpu": (broker1 - broker0) / wall,
        # Time the broker was ready to run but another process had the CPU.
        "broker_wait": (wait1 - wait0) / wall,
        # Everything else on the machine (the agent, other users' processes), in cores.
        "other_cpu": ((all1 - all0) - (cpu1 - cpu0) - (broker1 - broker0)) / wall,
        "errors": errors,
        "first_error": first_error[0] if first_error else None,
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    values.sort()
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1e3  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99)}


def client_main(spec: dict[str, Any]) -> None:
    if spec["kind"] == "sign":
        result = sign_baseline(spec["url"], spec.get("count", 5000))
    else:
        result = asyncio.run(load(spec))
    print(json.dumps(result))


# -- report ---------------------------------------------------------------------------------


def _rate(r: dict[str, Any], slot: str = "a") -> float:
    return float(r[slot]) / r["seconds"]


def report(sign: dict[str, Any], results: dict[tuple[str, int], dict[str, Any]]) -> None:
    levels = sorted({n for _, n in results})
    print()
    print(
        f"SigV4 signing alone (client, one core): {sign['sign_us']:.1f} µs per request "
        f"= at most {1e6 / sign['sign_us']:,.0f} signed requests/s "
        f"(botocore's SigV4Auth, as boto3 signs: {sign['botocore_us']:.1f} µs)"
    )
    print()
    print(
        "| clients | workload | req/s | p50 ms | p99 ms | broker CPU | broker ms/req | client CPU "
        "| client µs/req | other CPU | broker CPU wait | errors |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    names = {
        "health": "`GET /health`",
        "sts": "sts:GetCallerIdentity (Query)",
        "status": "ssm:GetConnectionStatus (JSON)",
        "session": "ssm:StartSession",
    }
    for n in levels:
        for kind in WORKLOADS:
            r = results.get((kind, n))
            if r is None:
                continue
            reqs = r["a"] + r["b"]
            client_us = r["client_cpu"] * r["seconds"] / max(reqs, 1) * 1e6
            broker_ms = r["broker_cpu"] * r["seconds"] / max(reqs, 1) * 1e3
            errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
            rows = [("a", names[kind])]
            if kind == "session":
                rows.append(("b", "ssm:TerminateSession"))
            for slot, label in rows:
                first = slot == "a"
                print(
                    f"| {n} | {label} | {_rate(r, slot):,.0f} | {r['lat_' + slot]['p50']:.2f} "
                    f"| {r['lat_' + slot]['p99']:.2f} "
                    f"| {r['broker_cpu'] * 100:.0f}%{'' if first else ' (same run)'} "
                    f"| {broker_ms:.2f} "
                    f"| {r['client_cpu'] * 100:.0f}% | {client_us:.0f} "
                    f"| {r['other_cpu'] * 100:.0f}% | {r['broker_wait'] * 100:.0f}% | {errs} |"
                )
            if kind == "session":
                print(f"| {n} | pairs (Start + Terminate) | {_rate(r, 'pairs'):,.0f} |" + " |" * 9)
    print()
    print("Ratios (same run, same client):")
    for n in levels:
        s = results.get(("session", n))
        if s is None:
            continue
        parts = [f"StartSession/s {_rate(s):,.0f}"]
        for kind in ("health", "sts", "status"):
            b = results.get((kind, n))
            if b is not None and b["a"]:
                parts.append(f"÷ {kind} {_rate(s) / _rate(b):.3f}")
        if s["a"]:
            busy = s["broker_cpu"] * s["seconds"] / (s["a"] + s["b"]) * 1e3
            parts.append(f"broker CPU ms per request (Start or Terminate) {busy:.2f}")
        print(f"  {n:>3} clients: " + ", ".join(parts))
    top = max(levels)
    s = results.get(("session", top))
    if s is not None:
        ok_rate = _rate(s) >= GOAL_RPS
        ok_p99 = s["lat_a"]["p99"] <= GOAL_P99_MS
        print()
        print(
            f"Goal at {top} clients: >= {GOAL_RPS:,.0f} StartSession/s: {_rate(s):,.0f} "
            f"({'met' if ok_rate else 'missed'}, {_rate(s) / GOAL_RPS:.2f}× the goal); "
            f"p99 <= {GOAL_P99_MS:.0f} ms: {s['lat_a']['p99']:.1f} ms "
            f"({'met' if ok_p99 else 'missed'})"
        )


def print_profile(path: Path, top: int) -> None:
    for key in ("cumulative", "tottime"):
        print(f"\n--- top {top} by {key} ---")
        pstats.Stats(str(path)).strip_dirs().sort_stats(key).print_stats(top)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per workload")
    ap.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds before each")
    ap.add_argument("--concurrency", default="1,10,50", help="comma-separated client counts")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    ap.add_argument("--profile", type=Path, help="cProfile the broker under the session load")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    ap.add_argument(
        "--workers", type=int, default=0, help="the broker's API worker processes (--workers)"
    )
    args = ap.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return

    levels = [int(x) for x in args.concurrency.split(",")]
    kinds = [k for k in args.workloads.split(",") if k]
    if args.profile is not None:
        levels, kinds = [max(levels)], ["session"]
    tmp = Path(tempfile.mkdtemp(prefix="hatchway-bench-"))
    print(
        f"# Broker: StartSession + TerminateSession, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"# {machine()}; store SQLite in {tmp}")
    broker, url = start_broker(tmp, args.profile.resolve() if args.profile else None, args.workers)
    agent: Proc | None = None
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        agent = start_agent(tmp, url)
        print(f"# broker {url} (pid {broker.proc.pid}), agent {TARGET} Online", flush=True)
        sign = run_client({"kind": "sign", "url": url})
        base = {"url": url, "broker_pid": broker.proc.pid}
        for n in levels:
            for kind in kinds:
                spec = {
                    **base,
                    "kind": kind,
                    "concurrency": n,
                    "seconds": args.seconds,
                    "warmup": args.warmup,
                }
                r = run_client(spec)
                results[(kind, n)] = r
                extra = f", {_rate(r, 'b'):,.0f} Terminate/s" if kind == "session" else ""
                print(
                    f"#   {kind:<8} n={n:<3} {_rate(r):>8,.0f} req/s{extra}, "
                    f"p50 {r['lat_a']['p50']:.2f} ms, p99 {r['lat_a']['p99']:.2f} ms, "
                    f"broker CPU {r['broker_cpu'] * 100:.0f}%, "
                    f"client CPU {r['client_cpu'] * 100:.0f}%, "
                    f"other {r['other_cpu'] * 100:.0f}%, "
                    f"broker waiting for a CPU {r['broker_wait'] * 100:.0f}%, "
                    f"errors {r['errors'] or 0}",
                    flush=True,
                )
                if r["first_error"]:
                    print(f"#   first error body: {r['first_error']}", flush=True)
    finally:
        if agent is not None:
            agent.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report(sign, results)
    if args.profile is not None:
        print_profile(args.profile, 30)


if __name__ == "__main__":
    main()
