"""The reliable stream of the data channel as a sans-I/O state machine
(docs/reference/data-channel.md#the-reliable-stream).

One :class:`Stream` is one endpoint: the client sends ``input_stream_data`` and receives
``output_stream_data``, the agent the reverse. Bytes go in through :meth:`Stream.receive`,
frames to write come out of :meth:`Stream.send`, :meth:`Stream.due` and
:class:`SendBytes` events. Time is always passed in as ``now`` (seconds, float); nothing here
reads a clock, sleeps or does I/O. Pass ``time.time()`` (or a monotonic clock together with
``epoch_offset``) so that the CreatedDate of outgoing frames is meaningful.

Typical loop::

    stream = Stream(Role.AGENT)
    ws.send(stream.send(PayloadType.OUTPUT, b"hello", now))
    for event in stream.receive(frame_bytes, now):
        match event:
            case SendBytes(data): ws.send(data)          # acks
            case Deliver(ptype, payload, _): handle(ptype, payload)
    for frame in stream.due(now):                       # call every ~100 ms (RESEND_INTERVAL)
        ws.send(frame)
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum

from hatchway.protocol.errors import BufferFull, GaveUp, PayloadError
from hatchway.protocol.frames import Frame, MessageType, decode, encode
from hatchway.protocol.payloads import ack_frame, parse_ack, parse_channel_closed

__all__ = [
    "CLOCK_GRANULARITY",
    "DEFAULT_CHUNK_SIZE",
    "INITIAL_RTO",
    "INITIAL_RTT",
    "MAX_RTO",
    "RESEND_INTERVAL",
    "Acked",
    "ChannelClosed",
    "Deliver",
    "DuplicatePolicy",
    "Event",
    "Other",
    "Publication",
    "Role",
    "SendBytes",
    "Stream",
    "chunks",
]

INITIAL_RTT = 0.1
"""Initial smoothed round-trip time, seconds."""
INITIAL_RTO = 0.2
"""Initial retransmission timeout, seconds."""
MAX_RTO = 1.0
"""Upper bound of the retransmission timeout, seconds."""
CLOCK_GRANULARITY = 0.01
"""Lower bound of the variance term of the RTO, seconds."""
RESEND_INTERVAL = 0.1
"""How often AWS's peers run the resend scheduler; call :meth:`Stream.due` about this often."""
DEFAULT_CHUNK_SIZE = 1024
"""AWS's stream payload size. Peers accept larger payloads; Hatchway may use e.g. 32 KiB."""


def chunks(data: bytes, size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Split ``data`` into pieces of at most ``size`` bytes (nothing for empty ``data``)."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


class Role(StrEnum):
    """Which end of the stream a :class:`Stream` is."""

    CLIENT = "client"
    AGENT = "agent"


class DuplicatePolicy(StrEnum):
    """What to do with a stream message older than the expected one."""

    REACK = "reack"
    """Acknowledge it again (the agent's behaviour)."""
    IGNORE = "ignore"
    """Drop it without an ack (the official plugin's behaviour)."""


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """A stream payload delivered in order, exactly once."""

    payload_type: int
    payload: bytes
    sequence_number: int


@dataclass(frozen=True, slots=True)
class SendBytes:
    """A frame (an acknowledge) the caller must write to the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Acked:
    """The peer acknowledged our stream message ``sequence_number``."""

    sequence_number: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The service closed the channel; ``output`` is its reason text ("" for a normal end)."""

    output: str
    session_id: str
    exit_code: int | None = None
    """The command's exit code when Hatchway's broker reports one (``ExitCode``)."""


@dataclass(frozen=True, slots=True)
class Publication:
    """``pause_publication`` (``paused=True``) or ``start_publication`` (``paused=False``)."""

    paused: bool


@dataclass(frozen=True, slots=True)
class Other:
    """Any other frame (``agent_session_state``, control-channel types, stray stream data…)."""

    frame: Frame


Event = Deliver | SendBytes | Acked | ChannelClosed | Publication | Other


@dataclass(slots=True)
class _Pending:
    sequence_number: int
    data: bytes
    last_sent: float
    size: int = 0
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class _RoleDefaults:
    send_type: MessageType
    receive_type: MessageType
    duplicates: DuplicatePolicy
    max_unacked: int
    max_out_of_order: int
    max_attempts: int | None


_ROLES = {
    Role.CLIENT: _RoleDefaults(
        MessageType.INPUT_STREAM_DATA,
        MessageType.OUTPUT_STREAM_DATA,
        DuplicatePolicy.IGNORE,
        max_unacked=10_000,
        max_out_of_order=10_000,
        max_attempts=3_000,
    ),
    Role.AGENT: _RoleDefaults(
        MessageType.OUTPUT_STREAM_DATA,
        MessageType.INPUT_STREAM_DATA,
        DuplicatePolicy.REACK,
        max_unacked=100_000,
        max_out_of_order=100_000,
        max_attempts=None,
    ),
}


class _Default(Enum):
    ROLE = "role"


class Stream:
    """One endpoint of the reliable stream.

    ``role`` picks the message types and the defaults of AWS's peer for that end (client:
    like the official plugin — duplicates ignored, 10 000-message buffers, gives up after
    3 000 resends; agent: like amazon-ssm-agent — duplicates re-acked, 100 000-message
    buffers, never gives up). Every keyword overrides one default:

    * ``duplicates`` — :class:`DuplicatePolicy` for messages older than the expected one.
    * ``ready`` — called with each in-order frame before delivery; returning False leaves it
      undelivered and unacked (the agent's "handler not ready"). Such a frame, and any frame
      arriving after it while it waits, is kept unacknowledged, so a sender stops at its window;
      :meth:`pump` delivers and acks them once ``ready`` says yes (a retransmission does too).
      Frames already acked and buffered wait for :meth:`pump`. Can be reassigned any time.
    * ``max_unacked`` — :meth:`send` raises :class:`BufferFull` at this many unacked frames.
    * ``max_unacked_bytes`` — …or when this many payload bytes are unacked (None: no limit).
    * ``max_out_of_order`` — frames ahead of the expected one beyond this are neither
      buffered nor acked (the peer retransmits them).
    * ``max_buffered_bytes`` — …nor beyond this many payload bytes buffered (held for
      ``ready`` or ahead of a gap); None: no limit. Bounds what a peer that ignores its
      window can make this end keep.
    * ``max_attempts`` — retransmissions of one frame before :meth:`due` raises
      :class:`GaveUp`; ``None`` for never.
    * ``epoch_offset`` — added to ``now`` for CreatedDate (epoch ms) of outgoing frames.
    * ``new_id`` — MessageId factory (default :func:`uuid.uuid4`).
    """

    def __init__(
        self,
        role: Role,
        *,
        duplicates: DuplicatePolicy | None = None,
        ready: Callable[[Frame], bool] | None = None,
        max_unacked: int | None = None,
        max_unacked_bytes: int | None = None,
        max_out_of_order: int | None = None,
        max_buffered_bytes: int | None = None,
        max_attempts: int | _Default | None = _Default.ROLE,
        epoch_offset: float = 0.0,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        defaults = _ROLES[Role(role)]
        self.role = Role(role)
        self.send_type: str = defaults.send_type
        self.receive_type: str = defaults.receive_type
        self.duplicates = duplicates or defaults.duplicates
        self.ready = ready
        self.max_unacked = defaults.max_unacked if max_unacked is None else max_unacked
        self.max_unacked_bytes = max_unacked_bytes
        self.max_out_of_order = (
            defaults.max_out_of_order if max_out_of_order is None else max_out_of_order
        )
        self.max_attempts = (
            defaults.max_attempts if isinstance(max_attempts, _Default) else max_attempts
        )
        self.max_buffered_bytes = max_buffered_bytes
        self.epoch_offset = epoch_offset
        self._new_id = new_id
        self._next_seq = 0
        self._expected = 0
        self._unacked: OrderedDict[int, _Pending] = OrderedDict()
        self._unacked_bytes = 0
        self._ahead: dict[int, Frame] = {}
        self._ahead_bytes = 0
        self._held: set[int] = set()  # in _ahead but not acked (``ready`` said no)
        self._srtt = INITIAL_RTT
        self._rttvar = 0.0
        self._rto = INITIAL_RTO
        self._paused = False
        self._dispatch: dict[str, Callable[[Frame, float], list[Event]]] = {
            self.receive_type: self._on_stream_data,
            MessageType.ACKNOWLEDGE: self._on_ack,
            MessageType.CHANNEL_CLOSED: self._on_channel_closed,
            MessageType.START_PUBLICATION: self._on_start_publication,
            MessageType.PAUSE_PUBLICATION: self._on_pause_publication,
        }

    # --- state ---------------------------------------------------------------------------

    @property
    def next_sequence_number(self) -> int:
        """Sequence number the next :meth:`send` will use."""
        return self._next_seq

    @property
    def expected_sequence_number(self) -> int:
        """Sequence number of the next incoming stream message to deliver."""
        return self._expected

    @property
    def srtt(self) -> float:
        """Smoothed round-trip time, seconds."""
        return self._srtt

    @property
    def rttvar(self) -> float:
        """Round-trip time variation, seconds."""
        return self._rttvar

    @property
    def rto(self) -> float:
        """Current retransmission timeout, seconds."""
        return self._rto

    @property
    def paused(self) -> bool:
        """True after ``pause_publication`` until ``start_publication``: no resends."""
        return self._paused

    @property
    def unacked_count(self) -> int:
        """Number of sent stream messages not acknowledged yet."""
        return len(self._unacked)

    @property
    def unacked_sequence_numbers(self) -> list[int]:
        """Sequence numbers of the unacked messages, oldest first."""
        return list(self._unacked)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes of the received messages :attr:`buffered_count` counts."""
        return self._ahead_bytes

    @property
    def buffered_count(self) -> int:
        """Number of received messages waiting for a gap to fill (or for :meth:`pump`)."""
        return len(self._ahead)

    @property
    def writable(self) -> bool:
        """False when :meth:`send` would raise :class:`BufferFull`."""
        return len(self._unacked) < self.max_unacked and (
            self.max_unacked_bytes is None or self._unacked_bytes < self.max_unacked_bytes
        )

    def _created(self, now: float) -> int:
        return max(1, int((now + self.epoch_offset) * 1000))

    # --- sending -------------------------------------------------------------------------

    def send(self, payload_type: int, payload: bytes, now: float) -> bytes:
        """Frame ``payload`` as the next stream message; keep it until acked; return it.

        Raises :class:`BufferFull` when :attr:`writable` is False.
        """
        if not self.writable:
            raise BufferFull(
                f"{len(self._unacked)} stream messages ({self._unacked_bytes} bytes) unacknowledged"
            )
        seq = self._next_seq
        data = encode(
            Frame(
                message_type=self.send_type,
                sequence_number=seq,
                payload_type=payload_type,
                payload=payload,
                message_id=self._new_id(),
                created_date=self._created(now),
                flags=1 if seq == 0 and self.send_type == MessageType.OUTPUT_STREAM_DATA else 0,
            )
        )
        self._next_seq += 1
        self._unacked[seq] = _Pending(seq, data, now, len(payload))
        self._unacked_bytes += len(payload)
        return data

    def send_all(
        self, payload_type: int, data: bytes, now: float, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> list[bytes]:
        """:meth:`send` each :func:`chunks` piece of ``data``; return the frames."""
        return [self.send(payload_type, piece, now) for piece in chunks(data, chunk_size)]

    def due(self, now: float) -> list[bytes]:
        """Frames to retransmit now: the oldest unacked one if ``now - last_sent > rto``.

        Nothing while paused. Raises :class:`GaveUp` when that frame has already been resent
        ``max_attempts`` times (and again on every later call).
        """
        if self._paused or not self._unacked:
            return []
        oldest = next(iter(self._unacked.values()))
        if now - oldest.last_sent <= self._rto:
            return []
        if self.max_attempts is not None and oldest.attempts >= self.max_attempts:
            raise GaveUp(oldest.sequence_number, oldest.attempts)
        oldest.attempts += 1
        oldest.last_sent = now
        return [oldest.data]

    def next_due(self) -> float | None:
        """The time after which :meth:`due` will return a frame (None if nothing is unacked).

        Useful to sleep exactly; the answer is stale once an ack arrives or RTO changes.
        """
        if self._paused or not self._unacked:
            return None
        return next(iter(self._unacked.values())).last_sent + self._rto

    def resend_all(self, now: float) -> list[bytes]:
        """Every unacked frame, oldest first (after a reconnect); counts as sent at ``now``."""
        for pending in self._unacked.values():
            pending.last_sent = now
        return [pending.data for pending in self._unacked.values()]

    # --- receiving -----------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Process one binary WebSocket message; raises :class:`FrameError` if it is no frame."""
        return self.receive_frame(decode(data), now)

    def receive_frame(self, frame: Frame, now: float) -> list[Event]:
        """Process one decoded frame (see :meth:`receive`)."""
        handler = self._dispatch.get(frame.message_type, self._on_other)
        return handler(frame, now)

    def pump(self, now: float) -> list[Event]:
        """Deliver (and ack, if not yet) buffered in-order frames held back by ``ready``
        (call when it turns True)."""
        return list(self._drain(now))

    def _ack(self, frame: Frame, now: float) -> SendBytes:
        return SendBytes(encode(ack_frame(frame, self._new_id(), self._created(now))))

    def _is_ready(self, frame: Frame) -> bool:
        return self.ready is None or self.ready(frame)

    def _drain(self, now: float) -> Iterator[Event]:
        while (frame := self._ahead.get(self._expected)) is not None:
            if not self._is_ready(frame):
                return
            self._take(self._expected)
            if self._expected in self._held:
                self._held.discard(self._expected)
                yield self._ack(frame, now)
            self._expected += 1
            yield Deliver(frame.payload_type, frame.payload, frame.sequence_number)

    def _on_stream_data(self, frame: Frame, now: float) -> list[Event]:
        seq = frame.sequence_number
        if seq == self._expected:
            if not self._is_ready(frame):
                if seq not in self._ahead:
                    self._hold(frame)
                return []
            self._take(seq)
            self._held.discard(seq)
            self._expected += 1
            events: list[Event] = [
                self._ack(frame, now),
                Deliver(frame.payload_type, frame.payload, seq),
            ]
            events.extend(self._drain(now))
            return events
        if seq > self._expected:
            if seq not in self._ahead and not self._room(frame):
                return []
            if self._expected in self._ahead:
                # Delivery waits for ``ready``: new frames stay unacked, so the sender stops
                # at its window, until pump() (or this arrival, if ready now agrees).
                events = (
                    [] if seq in self._held or seq not in self._ahead else [self._ack(frame, now)]
                )
                if seq not in self._ahead:
                    self._hold(frame)
                events.extend(self._drain(now))
                return events
            self._held.discard(seq)
            self._put(frame)
            return [self._ack(frame, now)]
        if self.duplicates is DuplicatePolicy.REACK:
            return [self._ack(frame, now)]
        return []

    def _hold(self, frame: Frame) -> None:
        if frame.sequence_number in self._ahead or self._room(frame):
            self._put(frame)
            self._held.add(frame.sequence_number)

    def _room(self, frame: Frame) -> bool:
        """Whether ``frame`` may be buffered (it is not yet)."""
        return len(self._ahead) < self.max_out_of_order and (
            self.max_buffered_bytes is None
            or self._ahead_bytes + len(frame.payload) <= self.max_buffered_bytes
        )

    def _put(self, frame: Frame) -> None:
        old = self._ahead.get(frame.sequence_number)
        if old is not None:
            self._ahead_bytes -= len(old.payload)
        self._ahead[frame.sequence_number] = frame
        self._ahead_bytes += len(frame.payload)

    def _take(self, seq: int) -> None:
        old = self._ahead.pop(seq, None)
        if old is not None:
            self._ahead_bytes -= len(old.payload)

    def _on_ack(self, frame: Frame, now: float) -> list[Event]:
        try:
            seq = parse_ack(frame.payload).sequence_number
        except PayloadError:
            return [Other(frame)]
        pending = self._unacked.pop(seq, None)
        if pending is None:
            return []
        self._unacked_bytes -= pending.size
        self._update_rto(now - pending.last_sent)
        return [Acked(seq)]

    def _update_rto(self, sample: float) -> None:
        sample = max(0.0, sample)
        self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - sample)
        self._srtt = 0.875 * self._srtt + 0.125 * sample
        self._rto = min(MAX_RTO, self._srtt + max(CLOCK_GRANULARITY, 4 * self._rttvar))

    def _on_channel_closed(self, frame: Frame, now: float) -> list[Event]:
        closed = parse_channel_closed(frame.payload)
        return [ChannelClosed(closed.output, closed.session_id, closed.exit_code)]

    def _on_start_publication(self, frame: Frame, now: float) -> list[Event]:
        self._paused = False
        return [Publication(paused=False)]

    def _on_pause_publication(self, frame: Frame, now: float) -> list[Event]:
        self._paused = True
        return [Publication(paused=True)]

    def _on_other(self, frame: Frame, now: float) -> list[Event]:
        return [Other(frame)]
