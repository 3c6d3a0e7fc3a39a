"""Session recordings end to end: a real broker and agent, a protocol client, the CLI.

The agent streams the transcript while the session runs; the broker keeps it (asciicast v2)
whatever happens to the node; ``hatchway sessions`` lists and replays it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import Agent, Broker, start_agent, start_broker, stop_broker
from harness.wsclient import Client

from hatchway.server.recordings import keeper as recordings
from hatchway.server.store import Store
from hatchway.server.store import schema as t

BIN = Path(sys.executable).parent
TARGET = "i-0e1f2a3b4c5d6e7f8"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("rec") / "data", "--record-input")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("rec-node") / "state", TARGET)
    yield a
    a.stop()


def cli(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hatchway"), *args, "--data-dir", str(broker.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_cast(data_dir: Path, session_id: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """The recording as the broker has it now: (header, events); ({}, []) if there is none."""
    store = Store(f"sqlite:///{data_dir / 'hatchway.db'}")
    try:
        row = store.get(t.sessions, session_id=session_id)
        assert row is not None
        lines = list(recordings.cast_lines(store, row))
    finally:
        store.close()
    if not lines:
        return {}, []
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def wait_cast(
    data_dir: Path,
    session_id: str,
    ready: Callable[[list[list[Any]]], bool],
    timeout: float = 20,
) -> tuple[dict[str, Any], list[list[Any]]]:
    deadline = time.monotonic() + timeout
    while True:
        header, events = read_cast(data_dir, session_id)
        if ready(events):
            return header, events
        if time.monotonic() > deadline:
            raise AssertionError(f"the recording never got there: {events}")
        time.sleep(0.1)


def text_of(events: list[list[Any]], code: str = "o") -> str:
    return "".join(e[2] for e in events if e[1] == code)


def exit_code(events: list[list[Any]]) -> Any:
    for e in events:
        if e[1] == "m":
            marker = json.loads(e[2])
            if marker.get("event") == "exit":
                return marker["code"]
    return None


def has_exit(events: list[list[Any]]) -> bool:
    return any(e[1] == "m" and '"exit"' in e[2] for e in events)


def status(broker: Broker, session_id: str) -> str:
    ssm = broker.client("ssm")
    for state in ("Active", "History"):
        found = ssm.describe_sessions(
            State=state, Filters=[{"key": "SessionId", "value": session_id}]
        )["Sessions"]
        if found:
            return str(found[0]["Status"])
    return "missing"


def test_a_shell_session_is_recorded_and_replays(broker: Broker, node: Agent) -> None:
    s = broker.client("ssm").start_session(Target=TARGET)
    sid = s["SessionId"]

    async def go() -> None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.resize(100, 30)
        await c.send(b"echo rec-$((6*7)) \xc3\xa9t\xc3\xa9\r")
        await c.read_until(b"rec-42")
        await c.send(b"exit 3\r")
        r = await c.read_until(None)
        await c.close()
        assert r.closed is not None

    asyncio.run(go())
    header, events = wait_cast(broker.data_dir, sid, has_exit)
    assert header["version"] == 2 and header["title"] == f"{sid} on {TARGET}"
    assert abs(header["timestamp"] - time.time()) < 300
    out = text_of(events)
    assert "echo rec-$((6*7)) été" in out  # the echo of what was typed, UTF-8 intact
    assert "rec-42 été" in out
    assert "echo rec-" in text_of(events, "i")  # keystrokes: this broker runs --record-input
    assert (header["width"], header["height"]) == (100, 30) or ["r", "100x30"] in [
        e[1:] for e in events
    ]
    assert exit_code(events) == 3
    times = [e[0] for e in events]
    assert times == sorted(times)

    raw = cli(broker, "sessions", "replay", sid, "--raw")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout.splitlines()[0]) == header
    played = cli(broker, "sessions", "replay", sid, "--speed", "50", "--max-idle", "0.05")
    assert played.returncode == 0, played.stderr
    assert "rec-42 été" in played.stdout
    assert '"exit"' in played.stderr and played.stdout.count("rec-42") == 1
    listed = cli(broker, "sessions", "list", "--output", "json")
    mine = [json.loads(line) for line in listed.stdout.splitlines() if sid in line]
    assert mine and mine[0]["Status"] == "Terminated" and mine[0]["RecordingBytes"] > 0


def test_replay_of_an_unknown_or_empty_session_says_so(broker: Broker, node: Agent) -> None:
    missing = cli(broker, "sessions", "replay", "nobody-0123456789abcdef0")
    assert missing.returncode == 1
    assert "Session nobody-0123456789abcdef0 does not exist." in missing.stderr
    s = broker.client("ssm").start_session(Target=TARGET)  # never connected: nothing recorded
    empty = cli(broker, "sessions", "replay", s["SessionId"], "--raw")
    assert empty.returncode == 1
    assert f"Session {s['SessionId']} has no recording." in empty.stderr
    broker.client("ssm").terminate_session(SessionId=s["SessionId"])


def test_killing_the_agent_keeps_what_it_already_sent(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    state = tmp_path_factory.mktemp("rec-victim") / "state"
    victim = start_agent(broker, state)
    s = broker.client("ssm").start_session(Target=victim.instance_id)
    sid = s["SessionId"]
    restarted: list[Any] = []

    async def go() -> None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(b"echo before-kill-$((2*21))\r")
        await c.read_until(b"before-kill-42")
        # The broker has it while the session still runs (streamed, not uploaded at the end).
        await asyncio.to_thread(
            wait_cast, broker.data_dir, sid, lambda ev: "before-kill-42" in text_of(ev)
        )
        assert status(broker, sid) == "Connected"
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        # The session waits for the node (issue 11); the agent, restarted, no longer runs it,
        # and the session ends Failed.
        restarted.append(await asyncio.to_thread(start_agent, broker, state))
        r = await c.read_until(None, 15)
        await c.close()
        assert r.closed is not None

    try:
        asyncio.run(go())
    finally:
        victim.stop()
        for agent in restarted:
            agent.stop()
    assert status(broker, sid) == "Failed"
    _header, events = read_cast(broker.data_dir, sid)
    assert "before-kill-42" in text_of(events)
    assert "echo before-kill" in text_of(events, "i")
    assert not has_exit(events)  # the agent never got to end it


def test_the_broker_decides_and_keystrokes_stay_out_by_default(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    b = start_broker(tmp_path_factory.mktemp("rec-default") / "data")
    a = start_agent(b, tmp_path_factory.mktemp("rec-default-node") / "state")
    try:
        s = b.client("ssm").start_session(Target=a.instance_id)

        async def go() -> None:
            c = Client(s["StreamUrl"], s["TokenValue"])
            await c.open()
            await c.send(
                b"stty -echo; echo ready-$((1+1)); read secret; stty echo; echo got-${#secret}\r"
            )
            await c.read_until(b"ready-2")
            await c.send(b"hunter2\r")
            await c.read_until(b"got-7")
            await c.send(b"exit\r")
            await c.read_until(None)
            await c.close()

        asyncio.run(go())
        _h, events = wait_cast(b.data_dir, s["SessionId"], has_exit)
        assert "got-7" in text_of(events)
        assert not [e for e in events if e[1] == "i"]
        assert "hunter2" not in json.dumps(events)  # typed with echo off: nowhere
    finally:
        a.stop()
        stop_broker(b)


def _shell_session(broker: Broker, target: str, command: bytes, until: bytes) -> str:
    s = broker.client("ssm").start_session(Target=target)

    async def go() -> None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(command + b"\r")
        await c.read_until(until)
        await c.send(b"exit\r")
        await c.read_until(None)
        await c.close()

    asyncio.run(go())
    return str(s["SessionId"])


def test_recordings_on_postgresql(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_rec")
        conn.execute("CREATE DATABASE hatchway_rec")
    url = postgres_url.rsplit("/", 1)[0] + "/hatchway_rec"
    b = start_broker(tmp_path_factory.mktemp("rec-pg") / "data", "--database-url", url)
    a = start_agent(b, tmp_path_factory.mktemp("rec-pg-node") / "state")
    try:
        sid = _shell_session(b, a.instance_id, b"echo pg-$((6*7))", b"pg-42")

        def replay() -> list[list[Any]]:
            out = subprocess.run(
                [str(BIN / "hatchway"), "sessions", "replay", sid, "--raw", "--database-url", url],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            return [json.loads(line) for line in out.splitlines()[1:]]

        deadline = time.monotonic() + 20
        while not has_exit(events := replay()):
            assert time.monotonic() < deadline, events
            time.sleep(0.2)
        assert "pg-42" in text_of(events)
    finally:
        a.stop()
        stop_broker(b)


@pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"), reason="tmux is not installed"
)
def test_replay_in_a_terminal_shows_what_the_user_saw(broker: Broker, node: Agent) -> None:
    sid = _shell_session(
        broker, TARGET, b"printf '\\033[1;31mred-%s\\033[0m\\n' $((3*3))", b"red-9"
    )
    wait_cast(broker.data_dir, sid, has_exit)
    name = f"replay-{uuid.uuid4().hex[:8]}"
    cmd = (
        f"{BIN / 'hatchway'} sessions replay {sid} --data-dir {broker.data_dir} --max-idle 0.2; "
        "echo replay-done; sleep 30"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd],
        check=True,
        timeout=10,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-e", "-t", name],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if "replay-done" in screen:
                break
            assert time.monotonic() < deadline, screen
            time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], timeout=10)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    assert "red-9" in plain  # the output, as the terminal drew it
    assert "\x1b[31mred-9" in screen  # in red: escape sequences replayed, not stripped
    assert plain.index("red-9") < plain.index("replay-done")
