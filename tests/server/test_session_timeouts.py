"""Idle timeout and maximum duration, enforced by the broker (the agent enforces neither).

The broker runs with ``--timeout-unit 1``: the documents' minutes count as seconds here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from conftest import Agent, Broker, start_agent, start_broker, stop_broker
from pclient import Client

from hatchway.server.datachannel import IDLE_MESSAGE, MAX_MESSAGE

TARGET = "i-0f00dbabe0000cafe"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    b = start_broker(tmp_path_factory.mktemp("to") / "data", "--timeout-unit", "1")
    a = start_agent(b, tmp_path_factory.mktemp("tonode") / "state", TARGET)
    ssm = b.client("ssm")
    for name, inputs in (
        ("Idle2", {"idleSessionTimeout": "2"}),
        ("Max3", {"idleSessionTimeout": "60", "maxSessionDuration": "3"}),
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
