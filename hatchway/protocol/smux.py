"""smux protocol version 1, the stream multiplexer inside Port sessions
(docs/reference/data-channel.md#smux), sans I/O.

When both ends support it, a ``LocalPortForwarding`` session carries one smux session in the
Output payloads of the data channel: every local TCP connection of the client is one smux
stream, and the agent dials the destination for each. The payloads are a byte stream; frames
are split and coalesced across data-channel messages at will, so :class:`Decoder` reassembles
them from whatever pieces arrive.

Frame layout (the lengths and the stream id are **little-endian**)::

    0  u8   version, always 1
    1  u8   command: 0 SYN (open), 1 FIN (close), 2 PSH (data), 3 NOP (keepalive)
    2  u16  length of the data that follows (PSH only; the other commands carry none)
    4  u32  stream id
    8  …    data

:class:`SmuxSession` keeps the streams of one end. The client opens streams with odd ids
starting at 3; the agent (the server role) never opens any. As in xtaci/smux v1, FIN closes a
stream for good (there is no half-close), data for an unknown or closed stream is dropped,
and a SYN for a stream that is open is ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from hatchway.protocol.errors import ProtocolError

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME",
    "MAX_LENGTH",
    "VERSION",
    "Cmd",
    "Decoder",
    "Reply",
    "SmuxError",
    "SmuxFrame",
    "SmuxRole",
    "SmuxSession",
    "StreamClosed",
    "StreamData",
    "StreamOpened",
    "encode_data",
    "encode_frame",
]

VERSION = 1
HEADER_SIZE = 8
MAX_FRAME = 32768
MAX_STREAMS = 4096
"""Streams one server-role session tracks at once (open, or closed by one end only)."""
"""Largest data part we put in one PSH frame (smux's default ``MaxFrameSize``)."""
MAX_LENGTH = 0xFFFF
"""Largest data part the length field can announce; the decoder accepts up to this."""
FIRST_CLIENT_STREAM = 3
MAX_STREAM_ID = 0xFFFFFFFF

_HEADER = struct.Struct("<BBHI")
assert _HEADER.size == HEADER_SIZE


class SmuxError(ProtocolError):
    """Bytes that are not smux v1 (wrong version, unknown command), or a misuse of the session."""


class Cmd(IntEnum):
    """smux v1 commands."""

    SYN = 0
    FIN = 1
    PSH = 2
    NOP = 3


class SmuxRole(StrEnum):
    """Which end a :class:`SmuxSession` is: the client opens streams, the server accepts them."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class SmuxFrame:
    """One decoded frame (``data`` is empty except for PSH; a read-only view into the bytes
    given to :meth:`Decoder.feed` when those were ``bytes``)."""

    cmd: int
    stream_id: int
    data: bytes | memoryview = b""


def encode_frame(cmd: int, stream_id: int, data: bytes = b"") -> bytes:
    """One frame. Raises :class:`SmuxError` if ``data`` is too long or an argument is out of
    range."""
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise SmuxError(f"stream id {stream_id} is not a u32")
    if len(data) > MAX_LENGTH:
        raise SmuxError(f"frame data of {len(data)} bytes does not fit the length field")
    if cmd not in _COMMANDS:
        raise SmuxError(f"unknown smux command {cmd}")
    return _HEADER.pack(VERSION, cmd, len(data), stream_id) + data


def encode_data(
    stream_id: int, data: bytes | bytearray | memoryview, max_frame: int = MAX_FRAME
) -> bytes:
    """``data`` as PSH frames of at most ``max_frame`` data bytes each (nothing if empty)."""
    if not 1 <= max_frame <= MAX_LENGTH:
        raise SmuxError(f"max frame {max_frame} out of range")
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise SmuxError(f"stream id {stream_id} is not a u32")
    size = len(data)
    if size <= max_frame:
        return _HEADER.pack(VERSION, Cmd.PSH, size, stream_id) + data if size else b""
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, size, max_frame):
        piece = view[start : start + max_frame]
        parts.append(_HEADER.pack(VERSION, Cmd.PSH, len(piece), stream_id))
        parts.append(piece)
    return b"".join(parts)


_COMMANDS = frozenset(int(c) for c in Cmd)


class Decoder:
    """Reassembles frames from pieces of a byte stream of any size.

    :meth:`feed` returns the frames completed by the new bytes and keeps the rest. A frame
    with a version other than 1 or an unknown command raises :class:`SmuxError`, and so does
    every later call: after garbage the stream cannot be re-synchronized.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[SmuxFrame]:
        """Frames completed by ``data``, in order."""
        if self._error is not None:
            raise SmuxError(self._error)
        if self._buf:
            self._buf += data
            with memoryview(self._buf) as view:
                frames, used = self._parse(view, copy=True)  # _buf changes: copy data out
            del self._buf[:used]
        else:
            # Immutable input: frame data are views into it (no copy).
            view = memoryview(data)
            frames, used = self._parse(view, copy=not isinstance(data, bytes))
            if used < len(view):
                self._buf += view[used:]
        return frames

    def _parse(self, buf: memoryview, *, copy: bool) -> tuple[list[SmuxFrame], int]:
        frames: list[SmuxFrame] = []
        pos, end = 0, buf.nbytes
        unpack = _HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            version, cmd, length, sid = unpack(buf, pos)
            if version != VERSION:
                self._error = f"smux version {version} is not supported (expected {VERSION})"
                raise SmuxError(self._error)
            if cmd == Cmd.PSH:
                if end - pos - HEADER_SIZE < length:
                    break
                start = pos + HEADER_SIZE
                piece = buf[start : start + length]
                frames.append(SmuxFrame(Cmd.PSH, sid, bytes(piece) if copy else piece))
                pos = start + length
            elif cmd in _COMMANDS:
                # SYN, FIN and NOP carry no data whatever the length says (xtaci/smux reads
                # the next header right after them).
                frames.append(SmuxFrame(cmd, sid))
                pos += HEADER_SIZE
            else:
                self._error = f"unknown smux command {cmd}"
                raise SmuxError(self._error)
        return frames, pos


# --- the session ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened stream ``stream_id`` (server role)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData:
    """Data for an open stream."""

    stream_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The peer closed stream ``stream_id`` (FIN); answer with :meth:`SmuxSession.close`."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes the caller must send back (a FIN refusing a stream the client role was offered)."""

    data: bytes


SmuxEvent = StreamOpened | StreamData | StreamClosed | Reply


@dataclass(slots=True)
class _State:
    local_closed: bool = False
    remote_closed: bool = False


class SmuxSession:
    """The streams of one end of a smux v1 session.

    Methods that produce frames return the bytes to send; :meth:`receive` takes the peer's
    bytes (any split) and returns events. A stream lives until both ends sent FIN.
    """

    def __init__(
        self, role: SmuxRole, *, max_frame: int = MAX_FRAME, max_streams: int = MAX_STREAMS
    ) -> None:
        self.role = SmuxRole(role)
        self.max_frame = max_frame
        self.max_streams = max_streams
        """Server role: streams tracked at once; a SYN beyond it is answered with FIN at once
        (a peer that opens streams and never closes them cannot grow the table)."""
        self.decoder = Decoder()
        self._streams: dict[int, _State] = {}
        self._next_id = FIRST_CLIENT_STREAM - 2
        self.dropped = 0
        """Data bytes received for streams that are not open (discarded)."""

    @property
    def streams(self) -> frozenset[int]:
        """Ids of the streams not yet closed by both ends."""
        return frozenset(self._streams)

    def is_open(self, stream_id: int) -> bool:
        """True while data may still be sent on the stream (neither end closed it)."""
        state = self._streams.get(stream_id)
        return state is not None and not state.local_closed and not state.remote_closed

    def open_stream(self) -> tuple[int, bytes]:
        """Client role: a new stream id and its SYN frame."""
        if self.role is not SmuxRole.CLIENT:
            raise SmuxError("the server end of a Port session never opens streams")
        if self._next_id + 2 > MAX_STREAM_ID:
            raise SmuxError("smux stream ids exhausted")
        self._next_id += 2
        sid = self._next_id
        self._streams[sid] = _State()
        return sid, _HEADER.pack(VERSION, Cmd.SYN, 0, sid)

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> bytes:
        """PSH frames carrying ``data``; ``b""`` when the stream is closed (data is dropped,
        as smux drops writes after FIN)."""
        if not data or not self.is_open(stream_id):
            return b""
        return encode_data(stream_id, data, self.max_frame)

    def close(self, stream_id: int) -> bytes:
        """Our FIN for the stream (``b""`` if we sent it already or the stream is unknown)."""
        state = self._streams.get(stream_id)
        if state is None or state.local_closed:
            return b""
        state.local_closed = True
        if state.remote_closed:
            del self._streams[stream_id]
        return _HEADER.pack(VERSION, Cmd.FIN, 0, stream_id)

    def nop(self) -> bytes:
        """A keepalive frame (what smux sends every 10 s when keepalive is on)."""
        return _HEADER.pack(VERSION, Cmd.NOP, 0, 0)

    def receive(self, data: bytes | bytearray | memoryview) -> list[SmuxEvent]:
        """Events for the peer's bytes; raises :class:`SmuxError` on a broken stream."""
        events: list[SmuxEvent] = []
        for frame in self.decoder.feed(data):
            cmd, sid = frame.cmd, frame.stream_id
            if cmd == Cmd.PSH:
                state = self._streams.get(sid)
                if state is not None and not state.remote_closed and frame.data:
                    events.append(StreamData(sid, frame.data))
                else:
                    self.dropped += len(frame.data)
            elif cmd == Cmd.SYN:
                if sid in self._streams:
                    continue
                if self.role is SmuxRole.SERVER and len(self._streams) < self.max_streams:
                    self._streams[sid] = _State()
                    events.append(StreamOpened(sid))
                else:
                    events.append(Reply(_HEADER.pack(VERSION, Cmd.FIN, 0, sid)))
            elif cmd == Cmd.FIN:
                state = self._streams.get(sid)
                if state is None or state.remote_closed:
                    continue
                state.remote_closed = True
                if state.local_closed:
                    del self._streams[sid]
                events.append(StreamClosed(sid))
        return events
