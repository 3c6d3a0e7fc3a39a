"""Idle timeout and maximum duration, enforced by the broker (the agent enforces neither).

One case runs on real time: a broker started with ``--timeout-unit 1`` (the documents' minutes
count as seconds) ends an idle session. The others run a broker whose session timers read a
clock the test moves (:mod:`harness.clock`), with the documents' minutes as real minutes: the
test jumps the clock forward, waits for one pass of the timers' sweep, and checks what ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import pytest
from harness import Agent, Broker, MovableClock, start_agent, start_broker, stop_broker
from harness.wsclient import Client

from hatchway.server.relay.datachannel import IDLE_MESSAGE, MAX_MESSAGE

TARGET = "i-0f00dbabe0000cafe"
DOCUMENTS = (
    ("Idle2", {"idleSessionTimeout": "2"}),
    ("Max3", {"idleSessionTimeout": "60", "maxSessionDuration": "3"}),
    ("Idle5", {"idleSessionTimeout": "5"}),
    ("Idle10", {"idleSessionTimeout": "10"}),
)


def _create_documents(broker: Broker) -> None:
    ssm = broker.client("ssm")
    for name, inputs in DOCUMENTS:
        ssm.create_document(
            Name=name,
            DocumentType="Session",
            Content=json.dumps(
                {
                    "schemaVersion": "1.0",
                    "description": name,
                    "sessionType": "Standard_Stream",
                    "inputs": inputs,
                }
            ),
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    """A broker on real time, its minutes shortened to seconds."""
    b = start_broker(tmp_path_factory.mktemp("to") / "data", "--timeout-unit", "1")
    a = start_agent(b, tmp_path_factory.mktemp("tonode") / "state", TARGET)
    _create_documents(b)
    yield b, a
    a.stop()
    stop_broker(b)


@pytest.fixture(scope="module")
def clocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, MovableClock]]:
    """A broker whose session timers read a clock the test moves; minutes are minutes."""
    clock = MovableClock(tmp_path_factory.mktemp("clock"))
    b = start_broker(tmp_path_factory.mktemp("to-clock") / "data", clock=clock)
    a = start_agent(b, tmp_path_factory.mktemp("to-clock-node") / "state", TARGET)
    _create_documents(b)
    yield b, clock
    a.stop()
    stop_broker(b)


def _history(broker: Broker, sid: str) -> dict[str, object]:
    found = broker.client("ssm").describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": sid}]
    )["Sessions"]
    return dict(found[0]) if found else {}


def _active_status(broker: Broker, sid: str) -> str | None:
    found = broker.client("ssm").describe_sessions(
        State="Active", Filters=[{"key": "SessionId", "value": sid}]
    )["Sessions"]
    return str(found[0]["Status"]) if found else None


async def _listen(c: Client, seconds: float) -> None:
    """Read (ack, retransmit) for ``seconds`` or until the channel closes."""
    with contextlib.suppress(TimeoutError):
        await c.read_until(None, seconds)


async def _type(c: Client, word: str) -> None:
    """A keystroke line, and its echo back (so the broker has relayed it)."""
    assert await c.send(f"echo {word}\r".encode())
    await c.read_until(f"{word}\r\n".encode(), 10)


async def _ended(c: Client) -> str:
    """Read until the broker closes the channel (a generous bound); its message."""
    r = await c.read_until(None, 30)
    await c.close()
    assert r.closed is not None
    return r.closed.output


def test_idle_timeout_ends_the_session_and_input_resets_it(stack: tuple[Broker, Agent]) -> None:
    """The end-to-end case on real time (the production clock): 2 s idle, after 4 s of typing."""
    broker, _ = stack
    s = broker.client("ssm").start_session(Target=TARGET, DocumentName="Idle2")

    async def go() -> tuple[float, str]:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        t0 = time.monotonic()
        for i in range(4):  # 4 s of typing keeps the 2 s idle timer from firing
            await c.send(f"echo tick-{i}\r".encode())
            await c.read_until(f"tick-{i}\r\n".encode(), 5)
            await asyncio.sleep(1.0)
        r = await c.read_until(None, 10)
        await c.close()
        assert r.closed is not None
        return time.monotonic() - t0, r.closed.output

    elapsed, output = asyncio.run(go())
    assert elapsed > 4.0
    assert output == IDLE_MESSAGE
    h = _history(broker, s["SessionId"])
    assert h["Status"] == "Terminated" and h["Details"] == IDLE_MESSAGE


def test_input_resets_the_idle_timer_on_the_session_clock(
    clocked: tuple[Broker, MovableClock],
) -> None:
    broker, clock = clocked
    s = broker.client("ssm").start_session(Target=TARGET, DocumentName="Idle2")  # 2 minutes
    sid = s["SessionId"]

    async def go() -> str:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        for i in range(3):  # 3 × 90 s with a keystroke between: 270 s, never 120 s idle
            await _type(c, f"tick-{i}")
            clock.advance(90)
            await clock.settle()
            assert _active_status(broker, sid) == "Connected", f"ended after tick {i}"
        clock.advance(31)  # 121 s since the last keystroke
        return await _ended(c)

    assert asyncio.run(go()) == IDLE_MESSAGE
    h = _history(broker, sid)
    assert h["Status"] == "Terminated" and h["Details"] == IDLE_MESSAGE


def test_max_duration_ends_even_an_active_session(clocked: tuple[Broker, MovableClock]) -> None:
    broker, clock = clocked
    ssm = broker.client("ssm")
    s = ssm.start_session(Target=TARGET, DocumentName="Max3")  # 3 minutes, 60 idle
    sid = s["SessionId"]
    active = ssm.describe_sessions(State="Active", Filters=[{"key": "SessionId", "value": sid}])
    assert active["Sessions"][0]["MaxSessionDuration"] == "3"

    async def go() -> str:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await _type(c, "busy-0")
        clock.advance(100)
        await clock.settle()
        assert _active_status(broker, sid) == "Connected"
        await _type(c, "busy-1")  # busy all along: only the duration can end it
        clock.advance(81)  # 181 s after the start
        return await _ended(c)

    assert asyncio.run(go()) == MAX_MESSAGE
    h = _history(broker, sid)
    assert h["Status"] == "Terminated" and h["Details"] == MAX_MESSAGE


def test_resizing_the_terminal_resets_the_idle_timer(clocked: tuple[Broker, MovableClock]) -> None:
    broker, clock = clocked
    s = broker.client("ssm").start_session(Target=TARGET, DocumentName="Idle5")  # 5 minutes
    sid = s["SessionId"]

    async def go() -> str:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await _listen(c, 0.5)  # the shell's prompt
        # 400 s without a keystroke, only window-size changes: longer than the 300 s timeout.
        for cols in (81, 82):
            await c.resize(cols, 24)
            await _listen(c, 0.2)
            clock.advance(200)
            await clock.settle()
            assert _active_status(broker, sid) == "Connected", f"ended after the {cols} resize"
        clock.advance(101)  # then nothing at all: 301 s after the last resize
        return await _ended(c)

    assert asyncio.run(go()) == IDLE_MESSAGE
    assert _history(broker, sid)["Details"] == IDLE_MESSAGE


def test_resuming_the_session_resets_the_idle_timer(clocked: tuple[Broker, MovableClock]) -> None:
    broker, clock = clocked
    ssm = broker.client("ssm")
    s = ssm.start_session(Target=TARGET, DocumentName="Idle10")  # 10 minutes
    sid = s["SessionId"]

    async def go() -> str:
        first = Client(s["StreamUrl"], s["TokenValue"])
        await first.open()
        clock.advance(400)  # 400 s idle
        await clock.settle()
        await first.close()  # the network drops; the client resumes
        resumed = ssm.resume_session(SessionId=sid)
        second = Client(resumed["StreamUrl"], resumed["TokenValue"])
        await second.open()
        await _listen(second, 0.5)
        # 800 s after the start the first idle deadline (600 s) has passed; the resume at 400 s
        # moved it to 1,000 s.
        clock.advance(400)
        await clock.settle()
        assert _active_status(broker, sid) == "Connected"
        clock.advance(201)
        return await _ended(second)

    assert asyncio.run(go()) == IDLE_MESSAGE
    h = _history(broker, sid)
    assert h["Status"] == "Terminated" and h["Details"] == IDLE_MESSAGE
