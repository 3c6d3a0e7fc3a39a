"""How long a broker takes to stop on SIGTERM (issue 11, item 3: "a broker stops within 5 s").

For each configuration (one process, ``--workers 2``) and number of open shell sessions, start
a broker and one agent, open the sessions, send SIGTERM and measure: the time until every
client has the ``channel_closed`` with the reason, and until the broker process has exited.
Prints a Markdown table (medians of ``--repeats`` runs). Asserts nothing.

    .venv/bin/python bench/shutdown.py [--repeats 3] [--sessions 1,10]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import machine, server_conftest

srv = server_conftest()
pclient = importlib.import_module("harness.wsclient")

TARGET = "i-0be0c4be0c4be0c40"


async def _open(broker: Any, count: int) -> list[Any]:
    ssm = broker.client("ssm")
    clients = []
    for i in range(count):
        started = ssm.start_session(Target=TARGET)
        c = pclient.Client(started["StreamUrl"], started["TokenValue"])
        await c.open()
        await c.send(f"echo up-{i}''\r".encode())
        await c.read_until(f"up-{i}\r\n".encode(), 30)
        clients.append(c)
    return clients


def one_run(extra: tuple[str, ...], sessions: int) -> tuple[float, float, bool]:
    """(seconds until every client was told, seconds until the process exited, all told)."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = srv.start_broker(Path(tmp) / "data", *extra)
        agent = srv.start_agent(broker, Path(tmp) / "node", TARGET)
        try:

            async def go() -> tuple[float, float, bool]:
                clients = await _open(broker, sessions)
                t0 = time.perf_counter()
                broker.proc.send_signal(signal.SIGTERM)
                results = await asyncio.gather(*(c.read_until(None, 60) for c in clients))
                told = time.perf_counter() - t0
                await asyncio.to_thread(broker.proc.wait, 120)
                exited = time.perf_counter() - t0
                for c in clients:
                    await c.close()
                return told, exited, all(r.closed is not None for r in results)

            return asyncio.run(go())
        finally:
            agent.stop()
            srv.stop_broker(broker)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sessions", default="1,10")
    args = ap.parse_args()
    print(machine())
    print()
    print("| broker | open sessions | clients told (s) | process exited (s) | all told |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, extra in (("one process", ()), ("--workers 2", ("--workers", "2"))):
        for sessions in (int(n) for n in args.sessions.split(",")):
            runs = [one_run(extra, sessions) for _ in range(args.repeats)]
            told = statistics.median(r[0] for r in runs)
            exited = statistics.median(r[1] for r in runs)
            ok = "yes" if all(r[2] for r in runs) else "NO"
            print(f"| {label} | {sessions} | {told:.3f} | {exited:.3f} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
