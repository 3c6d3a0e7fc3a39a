"""Issue 11, item 2: a broker killed (SIGKILL) and restarted leaves no zombie session.

The broker runs behind a :class:`TcpProxy` (the agent's ``--endpoint``, the broker's
``--public-url`` and the client's endpoint all name it), so a broker restarted on a new port
is reached at the same address. On SQLite and on PostgreSQL:

* a command still running on the node is resumed: the client's ResumeSession works, the
  node's side re-attaches (CreateDataChannel), every numbered line arrives once, the exit code
  too, and no second process ever starts under the session's id;
* a session its node no longer runs (the agent was killed too) ends Failed with the reason,
  and the client says so and exits non-zero;
* a session whose node never comes back ends after ``--resume-window``.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faulthelp import (
    PipeClient,
    admin_env,
    gate_dir,
    numbered_lines,
    port_of,
    session_status,
    srv,
    wait_for,
    wait_until,
)
from tcpproxy import TcpProxy

from hatchway.client.session import Backoff


class Stack:
    """A broker (restartable, same store), an agent, both behind one proxy."""

    def __init__(self, tmp: pytest.TempPathFactory, store: list[str]) -> None:
        self.tmp = tmp
        self.store = store
        self.restarts = 0
        self.proxy = TcpProxy("127.0.0.1", 1).start()
        self.url = f"http://127.0.0.1:{self.proxy.port}"
        self.data_dir = tmp.mktemp("restart-broker") / "data"
        self.broker = self._start_broker()
        self.agent_state = tmp.mktemp("restart-node") / "state"
        via = srv.Broker(self.url, self.data_dir, self.broker.proc, self.broker.log)
        self.agent = srv.start_agent(via, self.agent_state)

    def _start_broker(self, *extra: str) -> Any:
        b = srv.start_broker(
            self.data_dir, "--public-url", self.url, "--resume-window", "60", *self.store, *extra
        )
        self.proxy.retarget("127.0.0.1", port_of(b.url))
        return b

    def kill_broker(self) -> None:
        self.broker.proc.send_signal(signal.SIGKILL)
        self.broker.proc.wait(10)
        self.proxy.cut()

    def restart_broker(self, *extra: str, node: bool = True) -> None:
        log = self.broker.log
        self.restarts += 1
        log.rename(log.with_name(f"{log.name}.{self.restarts}"))  # kept for a post-mortem
        self.broker = self._start_broker(*extra)
        if node:  # the store still says Online (the last run's ping): wait for the channel
            wait_until(
                lambda: "control channel open" in self.broker.log.read_text(), 30, "node back"
            )

    def restart_agent(self) -> None:
        self.agent.proc.send_signal(signal.SIGKILL)
        self.agent.proc.wait(10)
        self.restarts += 1
        self.agent.log.rename(self.agent.log.with_name(f"{self.agent.log.name}.{self.restarts}"))
        via = srv.Broker(self.url, self.data_dir, self.broker.proc, self.broker.log)
        self.agent = srv.start_agent(via, self.agent_state)

    def ssm(self) -> Any:
        assert srv.wait_ping(self.broker, self.agent.instance_id, "Online", 30)
        return self.broker.client("ssm")

    def close(self) -> None:
        self.agent.stop()
        srv.stop_broker(self.broker)
        self.proxy.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One stack per store for the module: each test leaves it running (restarted), the last
    one leaves its node gone."""
    store: list[str] = []
    if request.param == "postgresql":
        import psycopg

        base: str = request.getfixturevalue("postgres_url")
        name = f"hatchway_restart_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        store = ["--database-url", base.rsplit("/", 1)[0] + f"/{name}"]
    s = Stack(tmp_path_factory, store)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def _admin(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in admin_env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


def _command(stack: Stack, gate: Path) -> dict[str, Any]:
    script = (
        "for i in $(seq 1 200); do echo n-$i; done; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done; "
        "for i in $(seq 201 2000); do echo n-$i; done; exit 5"
    )
    response: dict[str, Any] = stack.ssm().start_session(
        Target=stack.agent.instance_id,
        DocumentName="AWS-StartNonInteractiveCommand",
        Parameters={"command": [script]},
    )
    return response


def _patient(response: dict[str, Any], stack: Stack) -> PipeClient:
    # The broker is down for a few seconds: the client keeps asking (ResumeSession).
    return PipeClient(response, stack.url, backoff=Backoff(attempts=120, cap=0.5))


def test_a_running_session_is_resumed_after_a_broker_restart(stack: Stack) -> None:
    gate = gate_dir() / "go"
    response = _command(stack, gate)
    sid = response["SessionId"]

    async def go() -> tuple[int, bytes]:
        client = _patient(response, stack)
        task = asyncio.create_task(client.session.run())
        try:
            await wait_for(lambda: b"n-200\n" in client.output.replace(b"\r", b""), 30)
            await asyncio.to_thread(stack.kill_broker)
            gate.touch()  # the rest is printed while the broker is away
            await asyncio.to_thread(stack.restart_broker)
            code = await asyncio.wait_for(task, 90)
        finally:
            client.close()
        return code, client.output

    code, out = asyncio.run(go())
    assert numbered_lines(out, "n") == list(range(1, 2001))  # each once: one process only
    assert code == 5
    wait_until(lambda: session_status(stack.broker, sid)[0] == "Terminated", 30, "Terminated")
    assert "refused to start it again" not in stack.agent.log.read_text()


def test_a_session_the_node_no_longer_runs_ends_with_the_reason(stack: Stack) -> None:
    gate = gate_dir() / "go"  # never opened: the command would run for ever
    response = _command(stack, gate)
    sid = response["SessionId"]

    async def go() -> tuple[int, bytes]:
        client = _patient(response, stack)
        task = asyncio.create_task(client.session.run())
        try:
            await wait_for(lambda: b"n-200\n" in client.output.replace(b"\r", b""), 30)
            await asyncio.to_thread(stack.kill_broker)
            await asyncio.to_thread(stack.restart_broker)
            await wait_for(lambda: client.session.connections >= 2, 60)  # resumed, waiting
            assert session_status(stack.broker, sid)[0] in ("Connected", "Disconnected")
            await asyncio.to_thread(stack.restart_agent)  # its command died with it
            code = await asyncio.wait_for(task, 60)
        finally:
            client.close()
        return code, client.output + client.err.getvalue()

    code, out = asyncio.run(go())
    assert code != 0
    assert b"no longer runs it" in out
    status, details = session_status(stack.broker, sid)
    assert status == "Failed"
    assert "no longer runs it" in details


def test_a_session_whose_node_never_returns_ends_after_the_window(stack: Stack) -> None:
    response = stack.ssm().start_session(Target=stack.agent.instance_id)
    sid = response["SessionId"]

    async def go() -> None:
        client = PipeClient(response, stack.url)
        task = asyncio.create_task(client.session.run())
        try:
            await wait_for(lambda: client.session.handler is not None, 30)
            client.type(b"echo up-$((40+2))\r")
            await wait_for(lambda: b"up-42" in client.output, 30)
            await asyncio.to_thread(stack.agent.stop)  # the node goes away for good…
            await asyncio.to_thread(stack.kill_broker)  # …then the broker dies
            await asyncio.to_thread(
                lambda: stack.restart_broker("--resume-window", "1", node=False)
            )
            await asyncio.wait_for(task, 60)  # told the session ended, or gave up
        finally:
            client.close()

    asyncio.run(go())
    wait_until(lambda: session_status(stack.broker, sid)[0] == "Failed", 30, "Failed")
    assert "did not reconnect within 1 seconds" in session_status(stack.broker, sid)[1]
