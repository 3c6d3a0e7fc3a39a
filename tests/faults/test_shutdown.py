"""A broker stops fast and says why (issue 11, item 3).

On SIGTERM the broker stops accepting, ends each live session with "The broker is shutting
down." sent to its client (``channel_closed``), closes every websocket (data and control
channels) with 1001 Going Away so agents reconnect at once, and exits. It took ~48 s with one
agent connected (aiohttp's 60 s shutdown timeout waiting on the channels) while sessions froze
silently. ``/readyz`` answers 503 while draining and while the store does not answer;
``/health`` stays liveness only. The bounds here are generous (20 s); bench/shutdown.py
measures the stop exactly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness as srv
import harness.wsclient as pclient
import pytest
import urllib3

TARGET = "i-0f0aced0ff0aced00"
SHUTDOWN_MESSAGE = "The broker is shutting down."  # hatchway.server.relay.datachannel
BOUND = 20.0  # seconds: generous; the stop takes well under 5 s (bench/shutdown.py)


HTTP = urllib3.PoolManager(retries=False, timeout=10.0)


def get(url: str) -> tuple[int, bytes]:
    reply = HTTP.request("GET", url)
    return reply.status, reply.data


def _health(url: str) -> tuple[int, str]:
    """/health's status code and its "status" member (it reports version and cpuJobs too)."""
    code, body = get(url + "/health")
    return code, json.loads(body)["status"]


def eventually(check: Callable[[], bool], timeout: float = BOUND) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def history(broker: Any, session_id: str) -> dict[str, Any]:
    found = broker.client("ssm").describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": session_id}]
    )["Sessions"]
    return dict(found[0]) if found else {}


@pytest.mark.parametrize("extra", [(), ("--workers", "1")], ids=["one-process", "workers"])
def test_sigterm_ends_sessions_with_the_reason_and_exits(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    broker = srv.start_broker(tmp_path / "data", *extra)
    agent = srv.start_agent(broker, tmp_path / "node", TARGET)
    try:
        started = broker.client("ssm").start_session(Target=TARGET)

        async def session() -> Any:
            client = pclient.Client(started["StreamUrl"], started["TokenValue"])
            await client.open()
            await client.send(b"echo rea''dy\r")
            await client.read_until(b"ready\r\n", BOUND)
            broker.proc.send_signal(signal.SIGTERM)
            result = await client.read_until(None, BOUND)  # returns at channel_closed
            assert client.ws is not None
            while not client.ws.closed:  # then the websocket closes
                await client.ws.receive(timeout=BOUND)
            await client.close()
            return result

        result = asyncio.run(session())
        assert result.closed is not None, "the client was not told why"
        assert result.closed.output == SHUTDOWN_MESSAGE
        broker.proc.wait(BOUND)  # raises if the broker is still running
        first_log = broker.log.read_text()
        assert broker.proc.returncode == 0, first_log[-3000:]
        assert "Traceback" not in first_log
        # the agent's control channel was closed with 1001 (it reconnects at once)
        assert eventually(lambda: "closed by the broker (code 1001)" in agent.log.read_text())
        # the session's record says how it ended (read after a restart on the same data)
        port = int(broker.url.rsplit(":", 1)[1])
        broker = srv.start_broker(broker.data_dir, *extra, port=port)
        ended = history(broker, started["SessionId"])
        assert ended["Status"] == "Terminated" and ended["Details"] == SHUTDOWN_MESSAGE
    finally:
        agent.stop()
        srv.stop_broker(broker)


def test_readyz_answers_503_while_draining_and_health_stays_200(tmp_path: Path) -> None:
    broker = srv.start_broker(tmp_path / "data", "--shutdown-grace", "120")
    try:
        assert get(broker.url + "/readyz") == (200, b'{"status": "ready"}')
        broker.proc.send_signal(signal.SIGTERM)
        assert eventually(lambda: get(broker.url + "/readyz")[0] == 503)
        assert get(broker.url + "/readyz") == (503, b'{"status": "draining"}')
        assert _health(broker.url) == (200, "ok")
        # API calls are still served while draining (the grace is for load balancers)
        assert broker.client("sts").get_caller_identity()["Account"] == srv.ACCOUNT
        broker.proc.send_signal(signal.SIGTERM)  # a second signal ends the grace
        broker.proc.wait(BOUND)
        assert broker.proc.returncode == 0
    finally:
        srv.stop_broker(broker)


def _stop_postgres(url: str) -> None:
    """Stop the cluster behind ``url`` (as an operator would: pg_ctl stop)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl"
    cmd = [pg_ctl, "-D", str(row[0]), "-m", "immediate", "-w", "stop"]
    import os

    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def test_readyz_answers_503_while_postgresql_is_down(tmp_path: Path) -> None:
    from harness.postgres import postgres_cluster, why_unavailable

    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with postgres_cluster() as url:  # a cluster of this test's own: it is stopped here
        broker = srv.start_broker(tmp_path / "data", "--database-url", url)
        try:
            assert get(broker.url + "/readyz")[0] == 200
            _stop_postgres(url)
            assert get(broker.url + "/readyz") == (503, b'{"status": "store unreachable"}')
            assert _health(broker.url) == (200, "ok")
            broker.proc.send_signal(signal.SIGTERM)
            broker.proc.wait(BOUND)
        finally:
            srv.stop_broker(broker)
