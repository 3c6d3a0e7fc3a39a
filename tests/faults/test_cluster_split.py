"""Two brokers on one PostgreSQL database *without* a load balancer hashing the data channel
(each broker's StreamUrls name itself): docs/scale-out.md, "A session across brokers".

* The node's control channel is on broker B, the client calls broker A: A relays the session
  and asks B (PostgreSQL NOTIFY) to start it; the shell works.
* TerminateSession through B (served by B's API worker, which asks B's primary, which tells
  A) closes the client's channel on A and stops the shell on the node.
* The client then resumes through B: its end reaches B while the node's end goes back to A
  (the URL it was given). The relay would move back and forth between the brokers; instead the
  session ends ``Failed`` with the reason that names the misconfiguration.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from faulthelp import PipeClient, admin_env, session_status, srv, wait_for, wait_until

from hatchway.server.process.cluster import SPLIT_MESSAGE


@pytest.fixture(scope="module")
def pair(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_split")
        conn.execute("CREATE DATABASE hatchway_split")
    db = postgres_url.rsplit("/", 1)[0] + "/hatchway_split"
    root = tmp_path_factory.mktemp("split")
    a = srv.start_broker(root / "a", "--database-url", db)
    (root / "b").mkdir(mode=0o700)
    shutil.copy(root / "a" / "master.key", root / "b" / "master.key")
    b = srv.start_broker(root / "b", "--database-url", db, "--workers", "1")  # API in a worker
    (root / "node").mkdir()
    agent = srv.start_agent(b, root / "node" / "state")
    yield a, b, agent
    agent.stop()
    srv.stop_broker(b)
    srv.stop_broker(a)


def test_ends_on_different_brokers_work_then_fail_with_the_reason(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, agent = pair
    for key, value in admin_env().items():
        monkeypatch.setenv(key, value)
    response = a.client("ssm").start_session(Target=agent.instance_id)
    sid = response["SessionId"]
    assert response["StreamUrl"].startswith(a.url.replace("http", "ws"))

    async def go() -> None:
        client = PipeClient(response, b.url)  # ResumeSession goes to B
        session = client.session
        task = asyncio.create_task(session.run())
        try:
            await wait_for(lambda: session.handler is not None, 30)
            client.type(b"echo across-$((20+22))\r")
            await wait_for(lambda: b"across-42" in client.output, 30)
            assert session._ws is not None
            await session._ws.close()  # the client resumes, through B, onto B
            await asyncio.wait_for(task, 120)
        finally:
            client.close()
            if not task.done():
                task.cancel()

    asyncio.run(go())
    assert f"data channel {sid}: the node is asked to start the session" in a.log.read_text()
    wait_until(lambda: session_status(a, sid)[0] == "Failed", 60, "the session Failed")
    assert session_status(b, sid) == ("Failed", SPLIT_MESSAGE)


def test_terminate_through_the_other_broker_closes_both_ends(
    pair: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Relay and node on A, TerminateSession through B: only A can close either."""
    a, b, _ = pair
    for key, value in admin_env().items():
        monkeypatch.setenv(key, value)
    (tmp_path / "node").mkdir()
    agent = srv.start_agent(a, tmp_path / "node" / "state")
    try:
        response = a.client("ssm").start_session(Target=agent.instance_id)
        sid = response["SessionId"]
        code, pid = asyncio.run(_terminated_through(a, b, response))
        assert code == 0
        assert session_status(a, sid)[0] == "Terminated"
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the node stopped the shell")
    finally:
        agent.stop()


async def _terminated_through(a: Any, b: Any, response: dict[str, Any]) -> tuple[int, int]:
    """A shell on A's relay, terminated through B: (the client's exit code, the shell's pid)."""
    sid = response["SessionId"]
    client = PipeClient(response, a.url)
    session = client.session
    task = asyncio.create_task(session.run())
    try:
        await wait_for(lambda: session.handler is not None, 30)
        client.type(b"echo pid=$$=\r")
        await wait_for(lambda: re.search(rb"pid=(\d+)=", client.output) is not None, 30)
        found = re.search(rb"pid=(\d+)=", client.output)
        assert found is not None
        await asyncio.to_thread(b.client("ssm").terminate_session, SessionId=sid)
        code = await asyncio.wait_for(task, 60)  # A closed the client's channel
    finally:
        client.close()
        if not task.done():
            task.cancel()
    return code, int(found[1])
