"""Idle timeout and maximum duration, enforced by the broker (the agent enforces neither).

The broker runs with ``--timeout-unit 1``: the documents' minutes count as seconds here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import pytest
from conftest import Agent, Broker, start_agent, start_broker, stop_broker
from pclient import Client

from hatchway.server.relay.datachannel import IDLE_MESSAGE, MAX_MESSAGE

TARGET = "i-0f00dbabe0000cafe"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    b = start_broker(tmp_path_factory.mktemp("to") / "data", "--timeout-unit", "1")
    a = start_agent(b, tmp_path_factory.mktemp("tonode") / "state", TARGET)
    ssm = b.client("ssm")
    for name, inputs in (
        ("Idle2", {"idleSessionTimeout": "2"}),
        ("Max3", {"idleSessionTimeout": "60", "maxSessionDuration": "3"}),
        ("Idle5", {"idleSessionTimeout": "5"}),
        ("Idle10", {"idleSessionTimeout": "10"}),
    ):
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
    yield b, a
    a.stop()
    stop_broker(b)


def _history(broker: Broker, sid: str) -> dict[str, object]:
    found = broker.client("ssm").describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": sid}]
    )["Sessions"]
    return dict(found[0]) if found else {}


def test_idle_timeout_ends_the_session_and_input_resets_it(stack: tuple[Broker, Agent]) -> None:
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


def test_max_duration_ends_even_an_active_session(stack: tuple[Broker, Agent]) -> None:
    broker, _ = stack
    s = broker.client("ssm").start_session(Target=TARGET, DocumentName="Max3")
    assert (
        broker.client("ssm").describe_sessions(
            State="Active", Filters=[{"key": "SessionId", "value": s["SessionId"]}]
        )["Sessions"][0]["MaxSessionDuration"]
        == "3"
    )

    async def go() -> str:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        closed = None
        for i in range(20):
            assert c.ws is not None
            if c.ws.closed or c.result.closed is not None:
                break
            if not await c.send(f"echo busy-{i}\r".encode()):
                break
            await c.read_until(f"busy-{i}\r\n".encode(), 5)
            await asyncio.sleep(0.5)
        if c.result.closed is None:
            await c.read_until(None, 5)
        closed = c.result.closed
        await c.close()
        assert closed is not None
        return closed.output

    assert asyncio.run(go()) == MAX_MESSAGE
    assert _history(broker, s["SessionId"])["Details"] == MAX_MESSAGE


async def _listen(c: Client, seconds: float) -> None:
    """Read (ack, retransmit) for ``seconds`` or until the channel closes."""
    with contextlib.suppress(TimeoutError):
        await c.read_until(None, seconds)


def _active_status(broker: Broker, sid: str) -> str | None:
    found = broker.client("ssm").describe_sessions(
        State="Active", Filters=[{"key": "SessionId", "value": sid}]
    )["Sessions"]
    return str(found[0]["Status"]) if found else None


def test_resizing_the_terminal_resets_the_idle_timer(stack: tuple[Broker, Agent]) -> None:
    broker, _ = stack
    s = broker.client("ssm").start_session(Target=TARGET, DocumentName="Idle5")

    async def go() -> tuple[bool, str]:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        start = time.monotonic()
        # 9 s without a keystroke, only window-size changes: longer than the 5 s timeout.
        while time.monotonic() - start < 9:
            await c.resize(80 + int(time.monotonic() - start), 24)
            await _listen(c, 1.0)
            if c.result.closed is not None:
                break
        survived = c.result.closed is None
        await _listen(c, 30)  # then nothing at all: the idle timeout ends it
        await c.close()
        assert c.result.closed is not None
        return survived, c.result.closed.output

    survived, output = asyncio.run(go())
    assert survived
    assert output == IDLE_MESSAGE
    assert _history(broker, s["SessionId"])["Details"] == IDLE_MESSAGE


def test_resuming_the_session_resets_the_idle_timer(stack: tuple[Broker, Agent]) -> None:
    broker, _ = stack
    ssm = broker.client("ssm")
    s = ssm.start_session(Target=TARGET, DocumentName="Idle10")
    sid = s["SessionId"]

    async def go() -> tuple[str | None, str]:
        first = Client(s["StreamUrl"], s["TokenValue"])
        await first.open()
        t0 = time.monotonic()
        await _listen(first, 6)  # 6 s idle
        await first.close()  # the network drops; the client resumes
        resumed = ssm.resume_session(SessionId=sid)
        second = Client(resumed["StreamUrl"], resumed["TokenValue"])
        await second.open()
        # 13 s after the start the first idle deadline (10 s) has passed; the resume at 6 s
        # moved it to 16 s.
        await _listen(second, 13 - (time.monotonic() - t0))
        alive = _active_status(broker, sid)
        await _listen(second, 30)
        await second.close()
        assert second.result.closed is not None
        return alive, second.result.closed.output

    alive, output = asyncio.run(go())
    assert alive == "Connected"
    assert output == IDLE_MESSAGE
    assert _history(broker, sid)["Status"] == "Terminated"
