"""Session recordings: the agent's log stream, kept by the broker and delivered onwards.

The agent streams each session's events (``agent_session_log`` frames, see
:mod:`hatchway.protocol.sessionlog`) on its data channel while the session runs. The relay
hands them to :meth:`Recordings.ingest`, which checks them, drops batches it already has, and
queues them; every ``FLUSH_INTERVAL`` a worker thread appends what is queued to
``hw_session_log`` (one row per batch, as the agent sent it, plus the client address the broker
saw at that moment). So a recording grows while the session runs, and what reached the broker
stays there whatever happens to the node.

A recording is rendered from those rows when asked for: an asciicast v2 file
(:func:`cast_lines`, what ``hatchway sessions replay`` plays) or plain-text lines
(:func:`transcript_lines`, what goes to S3 and CloudWatch Logs). Port-connection records get
the session owner (``who``) and the client address (``from``) added.

At session start (the first client connection) :meth:`Recordings.prepare` runs AWS's
encryption checks when the preferences ask for them; at the end (:meth:`Recordings.finish`,
once the node's side of the data channel is gone) the transcript goes to S3 / CloudWatch Logs
in the background, and ``DescribeSessions`` shows where (``OutputUrl``).

Bounds (docs/session-logging.md, "Limits and retention"): a session's stored recording stops
at ``--recording-session-limit`` bytes and all recordings together at
``--recording-total-limit``; the batch that would cross a limit is replaced by a visible marker
(an output event), nothing of the session is stored after it, and a ``TruncateSessionLog``
audit event says why. The node's log frames are what is counted, so a compromised node that
sends log frames of its own is bounded the same way. Recordings whose last batch is older than
``--recording-retention-days`` are deleted by a background duty (:meth:`Recordings.expire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from hatchway.protocol import FrameError, PayloadError, decode
from hatchway.protocol.sessionlog import (
    LogBatch,
    LogEvent,
    OutputRef,
    build_session_log,
    parse_session_log,
)
from hatchway.server.base import metrics
from hatchway.server.base.errors import ServiceError
from hatchway.server.recordings import asciicast
from hatchway.server.recordings.logdelivery import (
    AwsError,
    Destinations,
    LogDelivery,
    flag,
    missing_group,
    split_lines,
    stream_event,
)
from hatchway.server.recordings.transcript import Transcript
from hatchway.server.runtime.audit import audit
from hatchway.server.store import Conflict, SessionData, SessionRow, Store
from hatchway.server.store import schema as t

if TYPE_CHECKING:
    from hatchway.server.runtime.state import ServerState

log = logging.getLogger("hatchway.server.recordings")

FLUSH_INTERVAL = 0.1  # seconds a received batch may wait before it is in the store
CAPTURE_LIMIT = 32 * 1024 * 1024  # bytes of relayed output a session may hold for its log
CAPTURE_TOTAL_LIMIT = (
    256 * 1024 * 1024
)  # …and all sessions together (oldest of the session dropped)
PENDING_LIMIT = 256 * 1024 * 1024
"""Bytes of log batches held while the store cannot be written (oldest dropped beyond)."""
_LOGGED_OUTPUT = frozenset({1, 11})  # Output and StdErr payloads
_SEQ = struct.Struct(">q")
_SEQ_OFFSET = 48
_U32 = struct.Struct(">I")
_PAGE = 200  # rows read at a time when rendering
_CLOSE_WAIT = 20.0  # seconds a stopping broker waits for deliveries under way
BROKER = "hatchway-broker"  # the principal of delivery audit events
DUTY_INTERVAL = 60.0
"""Seconds between runs of the background duty: the stored total is re-read (other brokers
on the same database add to it) and expired recordings are deleted."""
TRUNCATED = (
    "\r\n[hatchway: recording truncated: {what}; the session went on, but nothing more of it "
    "is recorded]\r\n"
)
SESSION_LIMIT_REACHED = "this session's recording reached the {limit} per-session limit"
TOTAL_LIMIT_REACHED = "the broker's recordings reached their {limit} total limit"


def human_size(n: int) -> str:
    """``n`` bytes as the flags write it: ``64 MiB``, ``4 GiB``, ``1000 B``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# -- reading ----------------------------------------------------------------------------------


def iter_batches(store: Store, session_id: str) -> Iterator[tuple[LogBatch, str]]:
    """The session's stored batches in order, each with the client address seen with it."""
    c = t.session_log.c
    last = -1
    while True:
        rows = store.select(
            t.session_log,
            c.session_id == session_id,
            c.seq > last,
            order_by=[c.seq],
            limit=_PAGE,
        )
        for row in rows:
            last = row["seq"]
            try:
                batch = parse_session_log(bytes(row["chunk"]))
            except PayloadError as exc:  # checked on the way in: only a damaged store gets here
                log.error("session %s: stored log batch %s unreadable: %s", session_id, last, exc)
                continue
            yield batch, row["source_ip"] or ""
        if len(rows) < _PAGE:
            return


def iter_events(store: Store, session_id: str, owner: str = "") -> Iterator[LogEvent]:
    """The session's events in order; connection records get ``who`` and ``from``."""
    for batch, source_ip in iter_batches(store, session_id):
        for ev in batch.events:
            if ev.kind == "conn" and isinstance(ev.data, dict):
                ev = LogEvent(ev.time, ev.kind, {**ev.data, "who": owner, "from": source_ip})
            yield ev


def started(store: Store, session_id: str) -> float | None:
    """When the recording starts (Unix seconds, the node's clock), or None if it is empty."""
    rows = store.select(
        t.session_log,
        t.session_log.c.session_id == session_id,
        order_by=[t.session_log.c.seq],
        limit=1,
    )
    if not rows:
        return None
    return parse_session_log(bytes(rows[0]["chunk"])).start


def cast_lines(store: Store, session: Mapping[str, Any]) -> Iterator[str]:
    """The session's asciicast v2 recording, line by line (empty if nothing was recorded)."""
    sid = session["session_id"]
    start = started(store, sid)
    if start is None:
        return
    yield from asciicast.render(
        iter_events(store, sid, session["owner"]),
        timestamp=start,
        title=f"{sid} on {session['target']}",
    )


def transcript_lines(store: Store, session_id: str) -> Iterator[tuple[float, str]]:
    """The output as plain-text lines, each with the time (Unix seconds) it was completed."""
    start = started(store, session_id)
    if start is None:
        return
    text = Transcript()
    last = 0.0
    for batch, _ip in iter_batches(store, session_id):
        for ev in batch.events:
            last = max(last, ev.time)
            if ev.kind == "o":
                for t_rel, line in text.feed(ev.data, last):
                    yield start + t_rel, line
    for t_rel, line in text.finish(last):
        yield start + t_rel, line


def sizes(store: Store) -> dict[str, tuple[int, int]]:
    """Per session with a recording: (batches, bytes)."""
    c = t.session_log.c
    q = select(c.session_id, func.count(), func.sum(c.size)).group_by(c.session_id)
    with store.engine.connect() as conn:
        return {str(r[0]): (int(r[1]), int(r[2] or 0)) for r in conn.execute(q)}


# -- the live side ------------------------------------------------------------------------------


@dataclass
class LiveLog:
    """A session whose data channel is open on this broker."""

    session_id: str
    target: str
    owner: str
    session_type: str
    dest: Destinations
    run_as: str | None = None
    client_ip: str = ""
    last_seq: int = -1
    stream: CloudWatchStream | None = None
    cw_off: bool = False  # the log group did not exist at the start check
    capture: bool = False  # keep relayed output until the log names it (OutputRef)
    captured: dict[int, memoryview] = field(default_factory=dict)
    captured_bytes: int = 0
    consumed: int = -1  # the last output frame a log batch named
    stored: int = 0  # bytes of this session's recording kept (stored or queued)
    truncated: bool = False  # a limit was reached: nothing more is kept


@dataclass
class CloudWatchStream:
    """``cloudWatchStreamingEnabled``: transcript lines as JSON events while the session runs,
    one event per ``interval`` with the lines completed in it (AWS's agent's shape)."""

    recordings: Recordings
    live: LiveLog
    interval: float
    pending: list[tuple[float, bytes]] = field(default_factory=list)
    transcript: Transcript = field(default_factory=Transcript)
    enabled: bool = True
    sent: int = 0
    error: str | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def feed(self, t: float, data: bytes) -> None:
        if self.enabled:
            self.pending.append((t, data))

    async def _run(self) -> None:
        group = self.live.dest.cw_group
        assert group is not None
        delivery = self.recordings.delivery
        try:
            opened = await asyncio.to_thread(delivery.open_stream, group, self.live.session_id)
        except AwsError as exc:
            opened = False
            self.error = f"CloudWatch Logs stream {group}/{self.live.session_id}: {exc}"
        if not opened:
            self.enabled = False
            self.pending.clear()
            self.recordings.report(self.live, "cloudwatch", self.error or missing_group(group))
            return
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.interval)
            try:
                await self._push(final=self.stopping.is_set())
            except Exception as exc:  # a bug here must not end the session or the relay
                log.exception("session %s: CloudWatch streaming stopped", self.live.session_id)
                self.enabled = False
                self.error = f"CloudWatch Logs streaming stopped: {exc}"
                self.recordings.report(self.live, "cloudwatch", self.error)
                return
            if self.stopping.is_set():
                return

    def _lines(self, chunks: list[tuple[float, bytes]], final: bool) -> list[str]:
        lines: list[str] = []
        last = 0.0
        for t_rel, data in chunks:
            last = t_rel
            lines.extend(line for _t, line in self.transcript.feed(data, t_rel))
        if final:
            lines.extend(line for _t, line in self.transcript.finish(last))
        return lines

    async def _push(self, final: bool) -> None:
        chunks, self.pending = self.pending, []
        if not chunks and not final:
            return
        live = self.live
        lines = await asyncio.to_thread(self._lines, chunks, final)
        if not lines:
            return
        now = datetime.now(UTC)
        ms = int(now.timestamp() * 1000)
        events = [
            (
                ms,
                stream_event(
                    region=self.recordings.delivery.region,
                    target=live.target,
                    owner=live.owner,
                    run_as=live.run_as,
                    session_id=live.session_id,
                    lines=group,
                    when=now,
                ),
            )
            for group in split_lines(lines)
        ]
        assert live.dest.cw_group is not None
        try:
            self.sent += await asyncio.to_thread(
                self.recordings.delivery.put_events, live.dest.cw_group, live.session_id, events
            )
        except AwsError as exc:
            # The batch is lost (bounded retries happened in botocore); later ones may pass.
            if self.error is None:
                self.error = f"CloudWatch Logs streaming to {live.dest.cw_group}: {exc}"
                self.recordings.report(live, "cloudwatch", self.error)

    async def close(self) -> None:
        """Send the rest (the final, unterminated line included) and stop."""
        self.stopping.set()
        if self.task is not None:
            await self.task


class Recordings:
    """Ingest, store and deliver session logs (one per broker, ``state.recordings``)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        cfg = state.config
        self.delivery = LogDelivery(cfg.region, cfg.s3_endpoint_url, cfg.logs_endpoint_url)
        self.live: dict[str, LiveLog] = {}
        self.pending: list[dict[str, Any]] = []
        self.captured_total = 0
        """Bytes of relayed output held for log batches, over all sessions."""
        self.stored_total: int | None = None
        """Bytes of all stored recordings (read from the store by the duty; None: not yet)."""
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        """Now, for retention (tests inject one)."""
        self._flushing = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- start ------------------------------------------------------------------------------

    def start_request(self) -> dict[str, Any]:
        """What ``start_session`` tells the node to stream (the broker decides, not the node)."""
        return {"input": self.state.config.record_input}

    async def prepare(self, session: SessionRow, session_type: str) -> str | None:
        """Get ready for a session's log; AWS's encryption checks when its preferences ask.
        Returns the message to fail the session with, or None."""
        data = session["data"]
        inputs = data.get("inputs") or {}
        live = LiveLog(
            session["session_id"],
            session["target"],
            session["owner"],
            session_type,
            Destinations.from_inputs(inputs if isinstance(inputs, dict) else {}, session_type),
            run_as=_run_as(data, inputs if isinstance(inputs, dict) else {}),
        )
        kms = inputs.get("kmsKeyId") if isinstance(inputs, dict) else None
        # Output the broker can read is not sent twice: the log names the frames (OutputRef).
        live.capture = session_type != "Port" and not (isinstance(kms, str) and kms.strip())
        if live.dest.check_first:
            failure, warning = await asyncio.to_thread(self.delivery.check, live.dest)
            if failure is not None:
                self.report(live, "check", failure)
                return failure
            if warning is not None:
                live.cw_off = True
                self.report(live, "cloudwatch", warning)
        live.stored = await asyncio.to_thread(self._stored_bytes, live.session_id)
        if self.stored_total is None:
            self.stored_total = await asyncio.to_thread(self._total_bytes)
        self.live[live.session_id] = live
        if live.dest.cw_streaming and live.dest.cw_group and not live.cw_off:
            live.stream = CloudWatchStream(self, live, self.state.config.log_stream_interval)
            live.stream.start()
        return None

    def client_seen(self, session_id: str, address: str) -> None:
        """The client's address, recorded with the batches that arrive while it is connected."""
        live = self.live.get(session_id)
        if live is not None:
            live.client_ip = address

    # -- while it runs ------------------------------------------------------------------------

    def capture(self, session_id: str, data: bytes, payload_type: int) -> None:
        """An output frame the node sent (already checked by the relay): kept until a log
        batch names it. Re-sent frames are ignored; memory is bounded (oldest dropped)."""
        live = self.live.get(session_id)
        if live is None or not live.capture or payload_type not in _LOGGED_OUTPUT:
            return
        seq = _SEQ.unpack_from(data, _SEQ_OFFSET)[0]
        if seq <= live.consumed or seq in live.captured:
            return
        payload = memoryview(data)[_U32.unpack_from(data)[0] + 4 :]  # no copy yet
        live.captured[seq] = payload
        live.captured_bytes += len(payload)
        self.captured_total += len(payload)
        while live.captured and (
            live.captured_bytes > CAPTURE_LIMIT or self.captured_total > CAPTURE_TOTAL_LIMIT
        ):
            oldest = next(iter(live.captured))
            dropped = len(live.captured.pop(oldest))
            live.captured_bytes -= dropped
            self.captured_total -= dropped

    def _resolve(self, live: LiveLog, ref: OutputRef) -> bytes | memoryview:
        """The bytes of the output frames ``ref`` names; frames before it were not recorded
        (a failure message, say) and are dropped."""
        found: list[tuple[int, memoryview]] = []
        for seq in list(live.captured):
            if seq <= ref.last:
                payload = live.captured.pop(seq)
                live.captured_bytes -= len(payload)
                self.captured_total -= len(payload)
                if seq >= ref.first:
                    found.append((seq, payload))
        live.consumed = max(live.consumed, ref.last)
        if len(found) != ref.last - ref.first + 1:
            log.warning(
                "session %s: output frames %s-%s were not all seen; the recording has a gap",
                live.session_id,
                ref.first,
                ref.last,
            )
        if len(found) == 1:
            return found[0][1]  # the usual case: copied once, into the stored batch
        found.sort(key=lambda item: item[0])
        return b"".join(p for _s, p in found)

    def ingest(self, session_id: str, data: bytes) -> None:
        """An ``agent_session_log`` frame from the node's side of ``session_id``."""
        live = self.live.get(session_id)
        if live is None:
            log.warning("session %s: a log batch for no live session was dropped", session_id)
            return
        try:
            # No digest check (the channel is TCP/TLS; the agent wrote it): the batch must
            # still parse, and its lengths add up, or it is not kept.
            frame = decode(data)
            batch = parse_session_log(frame.payload)
        except (FrameError, PayloadError) as exc:
            log.warning("session %s: dropped a bad log batch: %s", session_id, exc)
            return
        if batch.session_id != session_id:
            log.warning("session %s: dropped a log batch of %s", session_id, batch.session_id)
            return
        if batch.seq <= live.last_seq:
            return  # a re-sent batch we already have
        live.last_seq = batch.seq
        if live.truncated:
            self._drop_captured(live, batch)
            return
        payload = frame.payload
        if any(isinstance(ev.data, OutputRef) for ev in batch.events):
            events = [
                LogEvent(ev.time, ev.kind, self._resolve(live, ev.data))
                if isinstance(ev.data, OutputRef)
                else ev
                for ev in batch.events
            ]
            batch = LogBatch(batch.session_id, batch.seq, batch.start, tuple(events))
            payload = build_session_log(
                session_id, batch.seq, batch.start, [(e.time, e.kind, e.data) for e in events]
            )  # what is stored is self-contained
        if not self._within_limits(live, batch, len(payload)):
            return
        self.pending.append(
            {
                "session_id": session_id,
                "seq": batch.seq,
                "received": datetime.now(UTC),
                "source_ip": live.client_ip,
                "size": len(payload),
                "chunk": payload,
            }
        )
        if live.stream is not None and live.stream.enabled:
            for ev in batch.events:
                if ev.kind == "o":
                    live.stream.feed(ev.time, ev.data)

    def _within_limits(self, live: LiveLog, batch: LogBatch, size: int) -> bool:
        """Count ``size`` bytes against the session's and the total limit; at a limit, store the
        truncation marker in the batch's place, audit it, and say no."""
        cfg = self.state.config
        total = self.stored_total or 0
        if live.stored + size > cfg.recording_session_limit:
            what = SESSION_LIMIT_REACHED.format(limit=human_size(cfg.recording_session_limit))
        elif total + size > cfg.recording_total_limit:
            what = TOTAL_LIMIT_REACHED.format(limit=human_size(cfg.recording_total_limit))
        else:
            live.stored += size
            self.stored_total = total + size
            return True
        live.truncated = True
        self._drop_captured(live, batch)
        live.capture = False
        when = batch.events[0].time if batch.events else 0.0
        marker = TRUNCATED.format(what=what).encode()
        payload = build_session_log(live.session_id, batch.seq, batch.start, [(when, "o", marker)])
        self.pending.append(
            {
                "session_id": live.session_id,
                "seq": batch.seq,
                "received": datetime.now(UTC),
                "source_ip": live.client_ip,
                "size": len(payload),
                "chunk": payload,
            }
        )
        live.stored += len(payload)
        self.stored_total = total + len(payload)
        if live.stream is not None and live.stream.enabled:
            live.stream.feed(when, marker)
        log.warning("session %s: recording truncated: %s", live.session_id, what)
        self._audit(
            live.session_id,
            "TruncateSessionLog",
            {"SessionId": live.session_id, "StoredBytes": live.stored},
            ServiceError("SessionLogTruncated", f"Recording truncated: {what}."),
        )
        return False

    def _drop_captured(self, live: LiveLog, batch: LogBatch) -> None:
        """Free the relayed output a batch that is not kept names (all of it once truncated)."""
        if live.truncated:
            self.captured_total -= live.captured_bytes
            live.captured.clear()
            live.captured_bytes = 0
            refs = [ev.data.last for ev in batch.events if isinstance(ev.data, OutputRef)]
            live.consumed = max([live.consumed, *refs])

    def _stored_bytes(self, session_id: str) -> int:
        c = t.session_log.c
        q = select(func.sum(c.size)).where(c.session_id == session_id)
        with self.state.store.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def _total_bytes(self) -> int:
        q = select(func.sum(t.session_log.c.size))
        with self.state.store.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def expire(self, now: datetime | None = None) -> list[str]:
        """Delete the recordings whose last batch is older than ``--recording-retention-days``
        (none when it is 0); returns the session ids whose recording went."""
        days = self.state.config.recording_retention_days
        if days <= 0:
            return []
        cutoff = (now or self.clock()) - timedelta(days=days)
        c = t.session_log.c
        old = (
            select(c.session_id)
            .group_by(c.session_id)
            .having(func.max(c.received) < cutoff)
            .limit(1000)
        )
        expired: list[str] = []
        with self.state.store.transaction() as conn:
            for sid in [str(r[0]) for r in conn.execute(old)]:
                if sid in self.live:
                    continue  # still running: its new batches are not old
                conn.execute(delete(t.session_log).where(c.session_id == sid))
                expired.append(sid)
        if expired:
            log.info("deleted %d recordings older than %s days", len(expired), days)
            self.stored_total = self._total_bytes()
        return expired

    def duty(self) -> None:
        """Once per :data:`DUTY_INTERVAL`: expire old recordings, re-read the stored total."""
        self.expire()
        self.stored_total = self._total_bytes()

    async def flush(self) -> None:
        """Write what is queued (in a worker thread: the relay keeps running)."""
        async with self._flushing:
            rows, self.pending = self.pending, []
            if not rows:
                return
            try:
                await asyncio.to_thread(self._write, rows)
            except Exception:
                # Kept for the next flush (a locked or restarting database must not leave a
                # gap in the recording); bounded, so a long outage cannot exhaust memory.
                self.pending[:0] = rows
                excess = sum(len(r["chunk"]) for r in self.pending) - PENDING_LIMIT
                while excess > 0 and self.pending:
                    dropped = self.pending.pop(0)
                    excess -= len(dropped["chunk"])
                    log.error(
                        "session %s: dropped log batch %s: the store is not writable",
                        dropped["session_id"],
                        dropped["seq"],
                    )
                raise

    def _write(self, rows: list[dict[str, Any]]) -> None:
        store = self.state.store
        try:
            store.insert_many(t.session_log, rows)
        except Conflict:
            # Some batch is there already (a broker restarted mid-session): one at a time.
            for row in rows:
                with contextlib.suppress(Conflict):
                    store.insert(t.session_log, row)

    async def run(self) -> None:
        """Flush every ``FLUSH_INTERVAL`` and run the :meth:`duty` every ``DUTY_INTERVAL``
        until cancelled."""
        loop = asyncio.get_running_loop()
        next_duty = loop.time()
        ticker = metrics.Ticker("recordings", FLUSH_INTERVAL)
        while True:
            await ticker.sleep()
            try:
                await self.flush()
            except Exception:
                log.exception("could not store session log batches; retrying")
            if loop.time() >= next_duty and self.state.leader():  # once across brokers
                next_duty = loop.time() + DUTY_INTERVAL
                try:
                    await asyncio.to_thread(self.duty)
                except Exception:
                    log.exception("the recordings duty failed; trying again later")

    # -- end ----------------------------------------------------------------------------------

    async def finish(self, session_id: str) -> None:
        """The node's side is gone: store the rest, then deliver in the background."""
        live = self.live.pop(session_id, None)
        if live is not None:
            self.captured_total -= live.captured_bytes
            live.captured.clear()
            live.captured_bytes = 0
        try:
            await self.flush()
        except Exception:
            log.exception("session %s: could not store the last log batches", session_id)
        if live is None:
            return
        task = asyncio.create_task(self._deliver(live))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, live: LiveLog) -> None:
        try:
            await self._deliver_all(live)
        except Exception as exc:  # AWS errors are handled inside; this is anything else
            log.exception("session %s: log delivery failed", live.session_id)
            self.report(live, "all", f"log delivery failed: {exc}")

    async def _deliver_all(self, live: LiveLog) -> None:
        urls: dict[str, str] = {}
        if live.stream is not None:
            await live.stream.close()
            if live.stream.enabled and live.dest.cw_group:
                urls["CloudWatchOutputUrl"] = self.delivery.console_url(
                    live.dest.cw_group, live.session_id
                )
                self.report(live, "cloudwatch", live.stream.error, sent=live.stream.sent)
        dest = live.dest
        if dest.s3_bucket is not None:
            try:
                url = await asyncio.to_thread(self._to_s3, live)
                urls["S3OutputUrl"] = url
                self.report(live, "s3", None, url=url)
            except AwsError as exc:
                self.report(live, "s3", f"S3 upload to {dest.s3_bucket}: {exc}")
        if dest.cw_group is not None and not dest.cw_streaming and not live.cw_off:
            try:
                sent = await asyncio.to_thread(self._to_cloudwatch, live)
            except AwsError as exc:
                self.report(live, "cloudwatch", f"CloudWatch Logs {dest.cw_group}: {exc}")
            else:
                if sent is None:
                    self.report(live, "cloudwatch", missing_group(dest.cw_group))
                else:
                    urls["CloudWatchOutputUrl"] = self.delivery.console_url(
                        dest.cw_group, live.session_id
                    )
                    self.report(live, "cloudwatch", None, sent=sent)
        if urls:
            self._set_output_url(live.session_id, urls)

    def _to_s3(self, live: LiveLog) -> str:
        assert live.dest.s3_bucket is not None
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as body:
            for _t, line in transcript_lines(self.state.store, live.session_id):
                body.write(line.encode() + b"\n")
            body.seek(0)
            return self.delivery.upload(
                live.dest.s3_bucket,
                live.dest.s3_key(live.session_id),
                body,
            )

    def _to_cloudwatch(self, live: LiveLog) -> int | None:
        group = live.dest.cw_group
        assert group is not None
        if not self.delivery.open_stream(group, live.session_id):
            return None
        events = (
            (int(when * 1000), line)
            for when, line in transcript_lines(self.state.store, live.session_id)
        )
        return self.delivery.put_events(group, live.session_id, events)

    def _set_output_url(self, session_id: str, urls: dict[str, str]) -> None:
        store = self.state.store
        row = store.session(session_id)
        if row is not None:
            data = row["data"].copy()
            data["output_url"] = urls
            store.update(t.sessions, {"session_id": session_id}, {"data": data})

    def report(self, live: LiveLog, what: str, error: str | None, **extra: Any) -> None:
        """Log and audit a check or delivery (``DeliverSessionLog`` events)."""
        if error is not None:
            log.warning("session %s: %s", live.session_id, error)
        self._audit(
            live.session_id,
            "DeliverSessionLog",
            {"SessionId": live.session_id, "Destination": what, **extra},
            ServiceError("SessionLogDeliveryFailed", error) if error else None,
        )

    def _audit(
        self,
        session_id: str,
        operation: str,
        params: dict[str, Any],
        error: ServiceError | None,
    ) -> None:
        try:
            audit(
                self.state,
                service="ssm",
                operation=operation,
                principal=BROKER,
                user_id=BROKER,
                source_ip="",
                params=params,
                decisions=[],
                error=error,
                request_id=str(uuid.uuid4()),
            )
        except Exception:
            log.exception("session %s: could not audit %s", session_id, operation)

    async def close(self) -> None:
        """Broker stopping: store what is queued, give deliveries under way a moment."""
        streams = [live.stream for live in self.live.values() if live.stream is not None]
        for stream in streams:
            stream.stopping.set()
        try:
            await self.flush()
        except Exception:
            log.exception("could not store the last session log batches")
        pending = list(self._tasks) + [s.task for s in streams if s.task is not None]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=_CLOSE_WAIT)
            for task in late:
                task.cancel()


def _run_as(data: SessionData, inputs: dict[str, Any]) -> str | None:
    """The OS user as the broker knows it (None when the node decides)."""
    tagged = data.get("run_as_user")
    if isinstance(tagged, str) and tagged:
        return tagged
    default = inputs.get("runAsDefaultUser")
    if flag(inputs.get("runAsEnabled")) and isinstance(default, str) and default:
        return default
    return None
