"""End to end against the real broker and agent: ``aws ssm start-session`` → our plugin,
``hatchway start-session``, a PTY with resize and ``~.``, and a dropped websocket resumed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import harness as srv
import pytest
from harness.client import PipeClient, clean_aws_env, plugin_on_path, wait_for

BIN = Path(sys.executable).parent
TARGET = "i-0c11e47a0b2c3d4e5"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[srv.Broker]:
    b = srv.start_broker(tmp_path_factory.mktemp("client-broker") / "data")
    yield b
    srv.stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: srv.Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[srv.Agent]:
    a = srv.start_agent(broker, tmp_path_factory.mktemp("client-node") / "state", TARGET)
    yield a
    a.stop()


@pytest.fixture
def plugin_path(tmp_path: Path) -> str:
    return plugin_on_path(tmp_path)


def admin_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return clean_aws_env(
        {
            "AWS_ACCESS_KEY_ID": srv.ADMIN_KEY,
            "AWS_SECRET_ACCESS_KEY": srv.ADMIN_SECRET,
            **(extra or {}),
        }
    )


def status(broker: srv.Broker, sid: str) -> str:
    ssm = broker.client("ssm")
    for state in ("Active", "History"):
        found = ssm.describe_sessions(State=state, Filters=[{"key": "SessionId", "value": sid}])
        if found["Sessions"]:
            return str(found["Sessions"][0]["Status"])
    return "missing"


def test_aws_cli_start_session_through_our_plugin(
    broker: srv.Broker, node: srv.Agent, plugin_path: str
) -> None:
    done = subprocess.run(
        [
            str(BIN / "aws"),
            "ssm",
            "start-session",
            "--target",
            TARGET,
            "--endpoint-url",
            broker.url,
        ],
        input=b"echo A=$((6*7))\rexit\r",
        capture_output=True,
        env=admin_env({"PATH": plugin_path}),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout
    assert out.startswith(b"\nStarting session with SessionId: ")
    sid = out.split(b"SessionId: ", 1)[1].split(b"\n", 1)[0].decode()
    assert b"A=42" in out
    assert f"sessionId: {sid}".encode() in out or f"SessionId: {sid} :".encode() in out
    assert status(broker, sid) == "Terminated"


def test_hatchway_start_session(broker: srv.Broker, node: srv.Agent) -> None:
    done = subprocess.run(
        [
            str(BIN / "hatchway"),
            "start-session",
            "--target",
            TARGET,
            "--endpoint-url",
            broker.url,
            "--region",
            "us-east-1",
        ],
        input=b"echo B=$((7*6))\rexit\r",
        capture_output=True,
        env=admin_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"Starting session with SessionId: " in done.stdout
    assert b"B=42" in done.stdout


def test_dropped_websocket_is_resumed_with_every_byte_once(
    broker: srv.Broker, node: srv.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in admin_env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    response = broker.client("ssm").start_session(Target=TARGET)

    async def go() -> tuple[int, bytes, int]:
        client = PipeClient(response, broker.url)
        session = client.session
        task = asyncio.create_task(session.run())
        try:
            await wait_for(lambda: session.handler is not None, 15)
            client.type(b"echo one-$((1+1))\r")
            await wait_for(lambda: b"one-2" in client.output, 15)
            assert session._ws is not None
            await session._ws.close()  # the network drops (no channel_closed)
            client.type(b"echo two-$((2+2))\r")
            await wait_for(lambda: b"two-4" in client.output, 15)
            client.type(b"exit\r")
            code = await asyncio.wait_for(task, 20)
        finally:
            client.close()
        return code, client.output, session.connections

    code, out, connections = asyncio.run(go())
    assert code == 0
    assert connections == 2
    assert out.count(b"one-2") == 1 and out.count(b"two-4") == 1
    assert status(broker, response["SessionId"]) == "Terminated"


def test_pty_resize_and_tilde_dot(broker: srv.Broker, node: srv.Agent, plugin_path: str) -> None:
    from test_client_process import PtyPlugin  # the same PTY driver as the fake-peer tests

    class BrokerPeer:
        url = broker.url
        sessions: ClassVar[dict[str, object]] = {}

        def new_session(self) -> dict[str, str]:
            out: dict[str, str] = broker.client("ssm").start_session(Target=TARGET)
            return out

    creds = {"AWS_ACCESS_KEY_ID": srv.ADMIN_KEY, "AWS_SECRET_ACCESS_KEY": srv.ADMIN_SECRET}
    p = PtyPlugin(BrokerPeer(), plugin_path, env=creds)  # type: ignore[arg-type]
    try:
        p.read_until(b"Starting session")
        p.type(b"echo C=$(tput cols)x$(tput lines)\r")
        p.read_until(b"C=100x30")
        p.set_size(133, 41)
        p.proc.send_signal(__import__("signal").SIGWINCH)
        # The Size message and the next keystrokes race (the plugin sends Size from its
        # SIGWINCH handler): ask until the shell reports the new size, as a user would see it.
        for attempt in range(20):
            p.type(f"echo D{attempt}=$(tput cols)x$(tput lines)\r".encode())
            p.read_until(f"D{attempt}=".encode() + b"1")  # the echo's output, not its echo
            if f"D{attempt}=133x41".encode() in p.output:
                break
        assert b"=133x41" in p.output
        p.type(b"sleep 600\r")
        p.type(b"~.")
        assert p.wait() == 0
        assert p.raw() is False
        assert status(broker, p.sid) == "Terminated"
    finally:
        p.close()


def test_upgrade_signed_with_unknown_keys_is_refused_not_resumed(
    broker: srv.Broker, node: srv.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = broker.client("ssm").start_session(Target=TARGET)
    for key, value in clean_aws_env().items():  # credentials the broker does not know
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)

    async def go() -> tuple[int, bytes, int]:
        client = PipeClient(response, broker.url)
        try:
            code = await asyncio.wait_for(client.session.run(), 20)
        finally:
            client.close()
        return code, client.output, client.session.connections

    code, out, connections = asyncio.run(go())
    assert code == 1
    assert connections == 1
    assert b"the data channel was closed: 4403" in out
