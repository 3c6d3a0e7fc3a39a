"""The agent's session-log sink: what it batches, when it sends, what it leaves out."""

from __future__ import annotations

import asyncio
from typing import Any

from hatchway.agent.recorder import FLUSH_BYTES, LogStreamer
from hatchway.agent.registration import Registration
from hatchway.agent.session import OUTPUT_CHUNK, AgentSession, SessionSettings
from hatchway.protocol import decode
from hatchway.protocol.sessionlog import (
    AGENT_SESSION_LOG,
    LogBatch,
    OutputRef,
    parse_session_log,
)


def _batches(frames: list[bytes]) -> list[LogBatch]:
    out = []
    for data in frames:
        frame = decode(data)
        assert frame.message_type == AGENT_SESSION_LOG
        assert frame.sequence_number == 0  # outside the reliable stream
        out.append(parse_session_log(frame.payload))
    return out


def _kinds(batches: list[LogBatch]) -> list[tuple[str, Any]]:
    return [(ev.kind, ev.data) for b in batches for ev in b.events]


def test_small_events_wait_for_the_timer_and_go_out_together() -> None:
    async def go() -> tuple[list[bytes], list[bytes]]:
        sent: list[bytes] = []
        sink = LogStreamer("s-1", sent.append)
        sink("o", b"$ ")
        sink("r", (100, 30))
        sink("o", b"ls\r\n")
        before = list(sent)
        while not sent:  # the flush timer fires on its own
            await asyncio.sleep(0.01)
        return before, sent

    before, sent = asyncio.run(go())
    assert before == []
    (batch,) = _batches(sent)
    assert batch.seq == 0 and batch.session_id == "s-1"
    assert _kinds([batch]) == [("o", b"$ "), ("r", [100, 30]), ("o", b"ls\r\n")]
    times = [ev.time for ev in batch.events]
    assert times == sorted(times) and times[0] >= 0


def test_bulk_output_is_sent_at_once_in_order() -> None:
    async def go() -> list[bytes]:
        sent: list[bytes] = []
        sink = LogStreamer("s-1", sent.append)
        chunk = b"x" * (FLUSH_BYTES // 2)
        for i in range(6):
            sink("o", chunk + bytes([48 + i]))
        assert len(sent) == 3  # every second chunk crossed the threshold
        sink.close()
        return sent

    batches = _batches(asyncio.run(go()))
    assert [b.seq for b in batches] == [0, 1, 2]
    data = b"".join(d for b in batches for _k, d in _kinds([b]))
    assert data.count(b"x") == 6 * (FLUSH_BYTES // 2)
    assert [data[i] for i in range(len(data)) if data[i] != ord("x")] == list(b"012345")


def test_keystrokes_only_when_asked_and_port_sessions_keep_only_connections() -> None:
    async def go() -> tuple[list[bytes], list[bytes], list[bytes]]:
        plain: list[bytes] = []
        keys: list[bytes] = []
        port: list[bytes] = []
        sinks = [
            LogStreamer("a", plain.append),
            LogStreamer("b", keys.append, record_input=True),
            LogStreamer("c", port.append, session_type="Port", record_input=True),
        ]
        conn = {"event": "open", "stream": 1, "host": "localhost", "port": 22}
        for sink in sinks:
            sink("i", b"secret\r")
            sink("o", b"out")
            sink("o", b"")  # nothing to record
            sink("conn", conn)
            sink("bogus", 1)
            sink("end", 0)
            sink.close()
            sink("o", b"after the end")
        return plain, keys, port

    plain, keys, port = asyncio.run(go())
    conn = {"event": "open", "stream": 1, "host": "localhost", "port": 22}
    assert _kinds(_batches(plain)) == [("o", b"out"), ("conn", conn), ("end", 0)]
    assert _kinds(_batches(keys))[0] == ("i", b"secret\r")
    assert _kinds(_batches(port)) == [("conn", conn), ("end", 0)]


def _session(task: dict[str, Any]) -> AgentSession:
    reg = Registration("mi-0123456789abcdef0", "us-east-1", "123456789012", "http://x", "A", "S")
    return AgentSession(reg, {"sessionId": "alice-0123456789abcdef0", **task}, SessionSettings())


def test_a_session_streams_only_when_the_broker_asks() -> None:
    async def go() -> tuple[list[bytes], list[bytes]]:
        out = []
        for task in ({}, {"sessionLog": {"input": False}}):
            s = _session(task)
            s._start_log("Port")
            # What the port plugin reports for each forwarded connection:
            s.record("conn", {"event": "open", "stream": 3, "host": "db.internal", "port": 5432})
            s.record("o", b"forwarded bytes are not a transcript")
            s.record(
                "conn",
                {"event": "close", "stream": 3, "host": "db.internal", "port": 5432,
                 "bytes_in": 120, "bytes_out": 4096},
            )  # fmt: skip
            if s.log_stream is not None:
                s.log_stream.close()
            frames = []
            while not s.outbox.empty():
                item = s.outbox.get_nowait()
                assert item is not None
                frames.append(item)
            out.append(frames)
        return out[0], out[1]

    unasked, asked = asyncio.run(go())
    assert unasked == []
    kinds = _kinds(_batches(asked))
    assert [k for k, _ in kinds] == ["conn", "conn"]
    assert kinds[1][1]["bytes_out"] == 4096


def test_output_the_broker_relays_is_named_not_repeated() -> None:
    async def go(encrypted: bool) -> list[LogBatch]:
        s = _session({"sessionLog": {"input": False}})
        if encrypted:
            s.encrypt = lambda b: b"sealed:" + b
        s._start_log("Standard_Stream")
        big = b"y" * (OUTPUT_CHUNK + 10)  # two output frames
        for data in (b"$ ", big):
            s.output(data)
            s.record("o", data)
        s.record("o", b"$ ")  # equal, but not the object just sent: carried in the body
        assert s.log_stream is not None
        s.log_stream.close()
        logs = []
        while not s.outbox.empty():
            item = s.outbox.get_nowait()
            assert item is not None
            if decode(item).message_type == AGENT_SESSION_LOG:
                logs.append(item)
        return _batches(logs)

    plain = [ev.data for b in asyncio.run(go(False)) for ev in b.events]
    assert plain == [OutputRef(0, 0), OutputRef(1, 2), b"$ "]
    sealed = [ev.data for b in asyncio.run(go(True)) for ev in b.events]
    assert sealed == [b"$ ", b"y" * (OUTPUT_CHUNK + 10), b"$ "]  # plaintext, in the body
