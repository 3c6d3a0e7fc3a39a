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
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import BIN, Agent, Broker, start_agent, start_broker, stop_broker, wait_ping
from harness.wsclient import Client

SESSION_LIMIT = 256 * 1024
TOTAL_LIMIT = 300 * 1024  # the second session reaches it before its own limit


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(
        tmp_path_factory.mktemp("limits") / "data",
        "--recording-session-limit",
        "256KiB",
        "--recording-total-limit",
        str(TOTAL_LIMIT),
    )
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


def _flood_session(broker: Broker, node: Agent, size: int) -> str:
    s = _start(broker, node)

    async def go() -> None:
        c = Client(**_conn(s))
        await c.open()
        await c.send(f"head -c {size} /dev/zero | tr '\\0' x; echo; echo DO''NE; exit\n".encode())
        await c.read_until(None, timeout=60)
        await c.close()

    asyncio.run(go())
    return s["SessionId"]


def _recording(broker: Broker, sid: str) -> str:
    data = str(broker.data_dir)
    deadline = time.monotonic() + 20
    while True:
        proc = subprocess.run(
            [str(BIN / "hatchway"), "sessions", "replay", sid, "--raw", "--data-dir", data],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "DONE" in proc.stdout or "truncated" in proc.stdout or time.monotonic() > deadline:
            return "".join(
                json.loads(line)[2]
                for line in proc.stdout.splitlines()[1:]
                if json.loads(line)[1] == "o"
            )
        time.sleep(0.2)


def _audit(broker: Broker, sid: str, name: str) -> list[dict[str, object]]:
    events = [
        json.loads(line) for line in (broker.data_dir / "audit.jsonl").read_text().splitlines()
    ]
    return [
        e
        for e in events
        if e["eventName"] == name and e["requestParameters"].get("SessionId") == sid
    ]


def test_recordings_stop_at_the_session_and_total_limits(broker: Broker, node: Agent) -> None:
    first = _flood_session(broker, node, 600_000)
    text = _recording(broker, first)
    assert "[hatchway: recording truncated: this session's recording reached the 256 KiB " in text
    assert "DONE" not in text  # nothing after the marker
    assert 100_000 < text.count("x") <= SESSION_LIMIT
    [event] = _audit(broker, first, "TruncateSessionLog")
    assert event["errorCode"] == "SessionLogTruncated"

    second = _flood_session(broker, node, 600_000)
    text = _recording(broker, second)
    assert "recording truncated: the broker's recordings reached their 300 KiB total limit" in text
    assert text.count("x") < TOTAL_LIMIT - 100_000  # the first session holds the rest
    assert _audit(broker, second, "TruncateSessionLog")

    # A new session gets what room is left (less than the batch that did not fit), no more.
    third = _flood_session(broker, node, 200_000)
    text = _recording(broker, third)
    assert "total limit" in text
    assert text.count("x") < 100_000


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
    assert "used where bash evaluates it" in exc.value.response["Error"]["Message"]
    assert not pwned.exists()
    s = ssm.start_session(Target=node.instance_id, DocumentName="Arith", Parameters={"n": ["7"]})
    assert s["SessionId"]
