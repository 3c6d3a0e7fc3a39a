"""Recordings in the store, on both engines: SQLite and a real PostgreSQL started by the test.

The broker's :class:`Recordings` ingests agent_session_log frames as the relay hands them over
(frames made by the agent's own :class:`LogStreamer`), writes them from a worker thread, drops
duplicates, and renders them back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import text

from hatchway.agent.recorder import LogStreamer
from hatchway.protocol import Frame, PayloadType, Role, Stream, decode, encode
from hatchway.protocol.sessionlog import AGENT_SESSION_LOG, OutputRef, build_session_log
from hatchway.server.app import open_state
from hatchway.server.base.crypto import SecretBox
from hatchway.server.recordings import keeper as recordings
from hatchway.server.recordings.keeper import Recordings
from hatchway.server.runtime.state import ServerConfig, ServerState
from hatchway.server.store import SessionRow, Store
from hatchway.server.store import schema as t
from hatchway.server.store.migrations import MIGRATIONS

SID = "alice-0123456789abcdef0"
OWNER = "arn:aws:iam::123456789012:user/alice"


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerState]:
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    config = ServerConfig(data_dir=tmp_path, database_url=url)
    store = Store(config.store_url)
    with store.transaction() as c:  # each test starts from empty tables
        for table in reversed(t.metadata.sorted_tables):
            if table is not t.meta:
                c.execute(table.delete())
    st = open_state(config, store, SecretBox.from_dir(tmp_path), [])
    store.insert(
        t.sessions,
        {
            "session_id": SID,
            "target": "i-0123456789abcdef0",
            "status": "Connected",
            "owner": OWNER,
            "start_date": datetime.now(UTC),
            "end_date": None,
            "document_name": "SSM-SessionManagerRunShell",
            "data": {"inputs": {}},
        },
    )
    yield st
    st.audit_log.close()
    store.close()


def _frames(session_type: str, record: list[tuple[str, Any]]) -> list[bytes]:
    sent: list[bytes] = []

    async def go() -> None:
        sink = LogStreamer(SID, sent.append, session_type=session_type, record_input=True)
        for kind, data in record:
            sink(kind, data)
            sink.flush()  # one batch per event: several rows
        sink.close()

    asyncio.run(go())
    return sent


def _session(state: ServerState) -> SessionRow:
    row = state.store.session(SID)
    assert row is not None
    return row


def _recordings(state: ServerState) -> Recordings:
    """The state's recordings as the class they are (the state names only their protocol)."""
    assert isinstance(state.recordings, Recordings)
    return state.recordings


def test_migration_four_adds_the_session_log_to_an_older_store(state: ServerState) -> None:
    assert (4, "session logs") in [(n, name) for n, name, _ in MIGRATIONS]
    assert state.store.schema_version == MIGRATIONS[-1][0]
    with state.store.transaction() as c:
        c.execute(text("DROP TABLE hw_session_log"))
        c.execute(text("UPDATE hw_meta SET value = '2' WHERE key = 'schema_version'"))
    upgraded = Store(state.store.url)
    try:
        assert upgraded.schema_version == MIGRATIONS[-1][0]
        assert upgraded.count(t.session_log) == 0  # the table is back, empty
    finally:
        upgraded.close()


def test_batches_are_stored_once_and_render_back(state: ServerState) -> None:
    frames = _frames(
        "Standard_Stream",
        [("r", (120, 40)), ("o", b"$ "), ("i", b"ls\r"), ("o", b"ls\r\nfile\r\n"), ("end", 0)],
    )
    rec = _recordings(state)

    async def go() -> None:
        assert await rec.prepare(_session(state), "Standard_Stream") is None
        for f in frames:
            rec.ingest(SID, f)
        rec.ingest(SID, frames[1])  # a re-sent batch
        await rec.flush()

    asyncio.run(go())
    assert state.store.count(t.session_log, session_id=SID) == len(frames)
    assert recordings.sizes(state.store)[SID][0] == len(frames)
    header, *events = [json.loads(x) for x in recordings.cast_lines(state.store, _session(state))]
    assert (header["width"], header["height"]) == (120, 40)
    assert [e[1:] for e in events] == [
        ["o", "$ "],
        ["i", "ls\r"],
        ["o", "ls\r\nfile\r\n"],
        ["m", '{"code":0,"event":"exit"}'],
    ]
    assert [line for _t, line in recordings.transcript_lines(state.store, SID)] == [
        "$ ls",
        "file",
    ]


def test_a_restarted_broker_does_not_fail_on_batches_it_already_has(state: ServerState) -> None:
    frames = _frames("Standard_Stream", [("o", b"one\n"), ("o", b"two\n"), ("o", b"three\n")])

    async def go(rec: Recordings, batch: list[bytes]) -> None:
        await rec.prepare(_session(state), "Standard_Stream")
        for f in batch:
            rec.ingest(SID, f)
        await rec.flush()

    asyncio.run(go(_recordings(state), frames[:2]))
    asyncio.run(go(Recordings(state), frames))  # knows nothing of what is stored
    assert state.store.count(t.session_log, session_id=SID) == 3
    assert [line for _t, line in recordings.transcript_lines(state.store, SID)] == [
        "one",
        "two",
        "three",
    ]


def test_bad_or_foreign_batches_are_dropped(state: ServerState) -> None:
    (good,) = _frames("Standard_Stream", [("o", b"ok")])
    frame = decode(good)
    truncated = good[:-1]  # the body is one byte short of what the events say
    garbage = encode(type(frame)(frame.message_type, 0, 0, b"not a batch", frame.message_id, 1))
    other = good.replace(SID.encode(), b"bobby-0123456789abcdef0")
    rec = _recordings(state)

    async def go() -> None:
        rec.ingest(SID, good)  # no live session yet: dropped
        await rec.prepare(_session(state), "Standard_Stream")
        for data in (b"short", truncated, garbage, other):
            rec.ingest(SID, data)
        await rec.flush()

    asyncio.run(go())
    assert state.store.count(t.session_log) == 0


def test_port_connections_get_who_and_from(state: ServerState) -> None:
    opened = {"event": "open", "stream": 1, "host": "db.internal", "port": 5432}
    closed = {**opened, "event": "close", "bytes_in": 10, "bytes_out": 2000}
    frames = _frames("Port", [("conn", opened), ("o", b"not kept"), ("conn", closed)])
    rec = _recordings(state)

    async def go() -> None:
        await rec.prepare(_session(state), "Port")
        rec.client_seen(SID, "203.0.113.7")
        rec.ingest(SID, frames[0])
        rec.client_seen(SID, "198.51.100.2")  # the client resumed from elsewhere
        for f in frames[1:]:
            rec.ingest(SID, f)
        await rec.finish(SID)

    asyncio.run(go())
    conns = [ev.data for ev in recordings.iter_events(state.store, SID, OWNER) if ev.kind == "conn"]
    assert conns == [
        {**opened, "who": OWNER, "from": "203.0.113.7"},
        {**closed, "who": OWNER, "from": "198.51.100.2"},
    ]
    _h, *events = [json.loads(x) for x in recordings.cast_lines(state.store, _session(state))]
    assert [e[1] for e in events] == ["m", "m"]
    assert json.loads(events[1][2])["bytes_out"] == 2000
    assert SID not in rec.live


def test_output_named_by_reference_is_taken_from_the_relayed_frames(state: ServerState) -> None:
    """The agent names the output frames the broker relayed instead of resending the bytes."""
    client_stream = Stream(Role.AGENT)  # the agent's side of the reliable stream
    now = 0.0
    relayed = [
        client_stream.send(PayloadType.OUTPUT, b"Failed: not recorded\r\n", now),  # seq 0
        client_stream.send(PayloadType.OUTPUT, b"$ ", now),  # seq 1
        client_stream.send(PayloadType.HANDSHAKE_COMPLETE, b"{}", now),  # seq 2: not output
        client_stream.send(PayloadType.OUTPUT, b"echo hi\r\n", now),  # seq 3
        client_stream.send(PayloadType.STDERR, b"hi\r\n", now),  # seq 4
    ]
    batches = [
        build_session_log(SID, 0, 100.0, [(0.1, "o", OutputRef(1, 1))]),
        build_session_log(SID, 1, 100.0, [(0.2, "o", OutputRef(3, 4)), (0.3, "o", b"inline")]),
        build_session_log(SID, 2, 100.0, [(0.4, "o", OutputRef(7, 7))]),  # never relayed
    ]
    rec = _recordings(state)

    async def go() -> None:
        await rec.prepare(_session(state), "Standard_Stream")
        for frame in relayed:
            ptype = decode(frame).payload_type
            rec.capture(SID, frame, ptype)
            rec.capture(SID, frame, ptype)  # a retransmission
        for seq, payload in enumerate(batches):
            rec.ingest(SID, _log_frame(payload))
            if seq == 0:
                rec.capture(SID, relayed[1], PayloadType.OUTPUT)  # re-sent after its use
        await rec.flush()

    asyncio.run(go())
    out = [(ev.time, ev.data) for ev in recordings.iter_events(state.store, SID) if ev.kind == "o"]
    assert out == [(0.1, b"$ "), (0.2, b"echo hi\r\nhi\r\n"), (0.3, b"inline"), (0.4, b"")]
    live = rec.live[SID]
    assert live.captured == {} and live.captured_bytes == 0


def test_encrypted_and_port_sessions_capture_nothing(state: ServerState) -> None:
    row = _session(state)
    frame = Stream(Role.AGENT).send(PayloadType.OUTPUT, b"x" * 100, 0.0)

    async def go(inputs: dict[str, Any], session_type: str) -> int:
        rec = _recordings(state)
        await rec.prepare(cast(SessionRow, dict(row, data={"inputs": inputs})), session_type)
        rec.capture(SID, frame, PayloadType.OUTPUT)
        return rec.live[SID].captured_bytes

    assert asyncio.run(go({}, "Standard_Stream")) == 100
    assert asyncio.run(go({"kmsKeyId": "alias/k"}, "Standard_Stream")) == 0
    assert asyncio.run(go({}, "Port")) == 0


def _log_frame(payload: bytes) -> bytes:
    return encode(Frame(AGENT_SESSION_LOG, 0, 0, payload, uuid.uuid4(), 1, 3))


def test_batches_survive_a_store_that_cannot_be_written() -> None:
    """A failed write keeps the batches for the next flush (no gap in the recording)."""
    from hatchway.server.recordings.keeper import Recordings

    rec = Recordings.__new__(Recordings)  # only the queue and the writer are exercised
    rec.pending = [{"session_id": "s", "seq": n, "chunk": b"x" * 10} for n in range(3)]
    rec._flushing = asyncio.Lock()
    written: list[list[dict[str, Any]]] = []
    failures = [RuntimeError("database is locked")]

    def write(rows: list[dict[str, Any]]) -> None:
        if failures:
            raise failures.pop()
        written.append(rows)

    rec._write = write  # type: ignore[method-assign]

    async def go() -> None:
        with pytest.raises(RuntimeError):
            await rec.flush()
        assert [r["seq"] for r in rec.pending] == [0, 1, 2]
        rec.pending.append({"session_id": "s", "seq": 3, "chunk": b"y"})
        await rec.flush()

    asyncio.run(go())
    assert [r["seq"] for r in written[0]] == [0, 1, 2, 3]
    assert rec.pending == []


def test_recordings_older_than_the_retention_are_deleted(state: ServerState) -> None:
    """Issue 16, item 16: the duty deletes recordings whose last batch is older than
    ``--recording-retention-days`` (an injected clock stands in for the days passing)."""
    frames = _frames("Standard_Stream", [("o", b"one\n"), ("o", b"two\n")])
    rec = _recordings(state)
    now = datetime.now(UTC)

    async def go() -> None:
        await rec.prepare(_session(state), "Standard_Stream")
        for f in frames:
            rec.ingest(SID, f)
        await rec.flush()

    asyncio.run(go())
    assert state.config.recording_retention_days == 30
    rec.clock = lambda: now + timedelta(days=31)
    assert rec.expire() == []  # the session is still running here: its recording grows
    asyncio.run(rec.finish(SID))
    rec.clock = lambda: now + timedelta(days=29)
    assert rec.expire() == []
    assert state.store.count(t.session_log, session_id=SID) == len(frames)
    state.config.recording_retention_days = 0  # 0: kept for ever
    rec.clock = lambda: now + timedelta(days=3650)
    assert rec.expire() == []
    state.config.recording_retention_days = 30
    rec.clock = lambda: now + timedelta(days=31)
    rec.duty()
    assert state.store.count(t.session_log, session_id=SID) == 0
    assert list(recordings.cast_lines(state.store, _session(state))) == []
    assert rec.stored_total == 0


def test_log_frames_a_node_makes_up_are_bounded_too(state: ServerState) -> None:
    """Issue 16, item 16: log frames are counted as they arrive from the node, whatever made
    them; past the limit one marker is stored and nothing more."""
    state.config.recording_session_limit = 100_000
    blob = b"y" * 30_000
    forged = [
        encode(
            Frame(
                AGENT_SESSION_LOG,
                seq,
                0,
                build_session_log(SID, seq, 1.0, [(0.1 * seq, "o", blob)]),
                uuid.uuid4(),
                1,
            )
        )
        for seq in range(50)
    ]
    rec = _recordings(state)

    async def go() -> None:
        await rec.prepare(_session(state), "Standard_Stream")
        for f in forged:
            rec.ingest(SID, f)
        await rec.flush()

    asyncio.run(go())
    stored = recordings.sizes(state.store)[SID][1]
    assert stored <= 100_000
    out = "".join(
        json.loads(x)[2] for x in list(recordings.cast_lines(state.store, _session(state)))[1:]
    )
    kept, marker = out.split("\r\n[hatchway: recording truncated: ")
    assert kept == "y" * 90_000  # three batches fit
    assert marker.startswith("this session's recording reached the 100000 B per-session limit")
    assert marker.endswith("nothing more of it is recorded]\r\n")
    assert rec.live[SID].truncated
