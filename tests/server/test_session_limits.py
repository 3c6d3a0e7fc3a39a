"""A node and a broker under one session's abuse (issue 16): a real broker (small recording
limits) and a real agent, driven over the data channel.

* item 15: a process that never reads its input gets megabytes of it; the node's other sessions
  and its control channel keep working (the agent buffers a bounded amount and stops
  acknowledging, so the client stops at its window).
* item 16: recordings stop at the per-session and the total limit, with a visible marker and an
  audit event.
* item 19: StartSession refuses a non-integer value for a parameter used in shell arithmetic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Agent, Broker, start_agent, start_broker, stop_broker, wait_ping
from pclient import Client

SESSION_LIMIT = 256 * 1024
TOTAL_LIMIT = 300 * 1024  # the second session reaches it before its own limit


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("limits") / "data")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("node") / "state")
    yield a
    a.stop()


def _start(broker: Broker, node: Agent) -> dict[str, str]:
    s: dict[str, str] = broker.client("ssm").start_session(Target=node.instance_id)
    return s


def test_a_process_that_never_reads_its_input_does_not_freeze_the_node(
    broker: Broker, node: Agent
) -> None:
    flood = 4 * 1024 * 1024

    async def go() -> tuple[bytes, int]:
        stuck = Client(**_conn(_start(broker, node)))
        await stuck.open()
        # The shell becomes `sleep`, which never reads the terminal ('RE""ADY' is not its echo).
        await stuck.send(b'stty -echo; echo RE""ADY; exec sleep 600\n')
        await stuck.read_until(b"READY")
        # Whole lines: a terminal in canonical mode discards what does not fit in an
        # unfinished line, but queues finished ones until its input queue is full.
        piece = (b"x" * 1023 + b"\n") * 32
        for _ in range(flood // len(piece)):
            assert await stuck.send(piece)
        # A second session on the same node: its start_session travels the control channel.
        other = Client(**_conn(_start(broker, node)))
        await other.open()
        await other.send(b"echo $((6*7))\n")
        out = (await other.read_until(b"42\r\n", timeout=30)).output
        await other.send(b"exit\n")
        await other.read_until(None)
        await other.close()
        # Read (and take acks) a moment: what the node holds back stays unacknowledged.
        with pytest.raises(TimeoutError):
            await stuck.read_until(b"never", timeout=1)
        held = stuck.stream.unacked_count
        await stuck.close()
        return out, held

    out, held = asyncio.run(go())
    assert b"42\r\n" in out
    assert held > 0  # back-pressure: the node stopped acknowledging the flood
    assert node.proc.poll() is None
    assert wait_ping(broker, node.instance_id, "Online", 5)


def _conn(s: dict[str, str]) -> dict[str, str]:
    return {"url": s["StreamUrl"], "token": s["TokenValue"]}


def test_start_session_refuses_a_command_in_an_arithmetic_parameter(
    broker: Broker, node: Agent
) -> None:
    ssm = broker.client("ssm")
    content = {
        "schemaVersion": "1.0",
        "sessionType": "NonInteractiveCommands",
        "parameters": {"n": {"type": "String"}},
        "properties": {"linux": {"commands": "[[ {{n}} -gt 1 ]] && let x={{n}}; a[{{n}}]=1"}},
    }
    ssm.create_document(Name="Arith", DocumentType="Session", Content=json.dumps(content))
    pwned = Path("/tmp/hatchway-broker-pwned")
    with pytest.raises(ssm.exceptions.ClientError) as exc:
        ssm.start_session(
            Target=node.instance_id,
            DocumentName="Arith",
            Parameters={"n": [f"a[$(touch {pwned})]"]},
        )
    assert exc.value.response["Error"]["Code"] == "InvalidParameters"
    assert "used in shell arithmetic" in exc.value.response["Error"]["Message"]
    assert not pwned.exists()
    s = ssm.start_session(Target=node.instance_id, DocumentName="Arith", Parameters={"n": ["7"]})
    assert s["SessionId"]
