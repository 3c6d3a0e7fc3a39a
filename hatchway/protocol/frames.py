"""The binary frame of the Session Manager data channel (``ClientMessage`` / ``AgentMessage``).

Layout (all integers big-endian), 120-byte header then the payload::

    0   u32   HeaderLength = 116 (offset of PayloadLength)
    4   32 B  MessageType, ASCII, space-padded on the right
    36  u32   SchemaVersion (1)
    40  u64   CreatedDate, epoch milliseconds
    48  i64   SequenceNumber
    56  u64   Flags
    64  16 B  MessageId, UUID in "Java long pair" order (bytes 8-15, then bytes 0-7)
    80  32 B  PayloadDigest, SHA-256 of the payload
    112 u32   PayloadType
    116 u32   PayloadLength
    120 n B   Payload

:func:`encode` is strict (what every client accepts); :func:`decode` is tolerant of what real
clients send and raises only :class:`FrameError`.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from hatchway.protocol.errors import FrameError

__all__ = [
    "DIGEST_SIZE",
    "ENCRYPTED_PAYLOAD_TYPES",
    "HEADER_LENGTH",
    "HEADER_SIZE",
    "MESSAGE_TYPE_SIZE",
    "Flag",
    "Frame",
    "FrameError",
    "MessageType",
    "PayloadType",
    "decode",
    "digest_ok",
    "encode",
    "peek_type",
]

HEADER_LENGTH = 116
"""Value of the HeaderLength field: the offset of PayloadLength."""
HEADER_SIZE = 120
"""Size of the whole header, PayloadLength included; the payload starts here."""
MESSAGE_TYPE_SIZE = 32
DIGEST_SIZE = 32

_HEADER = struct.Struct(">I32sIQqQ16s32sII")
assert _HEADER.size == HEADER_SIZE
_U32 = struct.Struct(">I")
_PAD = b"\x00\t\n\x0b\x0c\r "  # NUL and ASCII whitespace, trimmed on both sides when reading
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class MessageType(StrEnum):
    """Every MessageType of the data and control channels
    (docs/reference/data-channel.md#message-types)."""

    INPUT_STREAM_DATA = "input_stream_data"
    OUTPUT_STREAM_DATA = "output_stream_data"
    ACKNOWLEDGE = "acknowledge"
    CHANNEL_CLOSED = "channel_closed"
    START_PUBLICATION = "start_publication"
    PAUSE_PUBLICATION = "pause_publication"
    AGENT_SESSION_STATE = "agent_session_state"
    INTERACTIVE_SHELL = "interactive_shell"
    AGENT_JOB = "agent_job"
    AGENT_TASK_ACKNOWLEDGE = "agent_task_acknowledge"
    AGENT_JOB_REPLY_ACK = "agent_job_reply_ack"
    AGENT_TASK_COMPLETE = "agent_task_complete"
    AGENT_JOB_ACKNOWLEDGE = "agent_job_acknowledge"
    AGENT_JOB_REPLY = "agent_job_reply"
    AGENT_TELEMETRY = "agent_telemetry"


class PayloadType(IntEnum):
    """PayloadType of a frame (docs/reference/data-channel.md#payload-types)."""

    UNDEFINED = 0
    OUTPUT = 1
    ERROR = 2
    SIZE = 3
    PARAMETER = 4
    HANDSHAKE_REQUEST = 5
    HANDSHAKE_RESPONSE = 6
    HANDSHAKE_COMPLETE = 7
    ENC_CHALLENGE_REQUEST = 8
    ENC_CHALLENGE_RESPONSE = 9
    FLAG = 10
    STDERR = 11
    EXIT_CODE = 12


ENCRYPTED_PAYLOAD_TYPES = frozenset({PayloadType.OUTPUT, PayloadType.STDERR, PayloadType.EXIT_CODE})
"""What a KMS-encrypted session seals (docs/reference/data-channel.md#payload-types): the agent's
Output, StdErr and ExitCode; the client's Output (the only one of them it sends)."""


class Flag(IntEnum):
    """Values of a Flag payload (PayloadType 10)."""

    DISCONNECT_TO_PORT = 1
    TERMINATE_SESSION = 2
    CONNECT_TO_PORT_ERROR = 3


@dataclass(frozen=True, slots=True)
class Frame:
    """One data-channel message.

    ``digest`` is the PayloadDigest as read from the wire (``None`` for frames built locally);
    :func:`encode` always writes the correct SHA-256 and ignores it, and it takes no part in
    equality (it is derived data), so ``decode(encode(f)) == f``.
    """

    message_type: str
    sequence_number: int
    payload_type: int
    payload: bytes
    message_id: uuid.UUID
    created_date: int
    flags: int = 0
    schema_version: int = 1
    digest: bytes | None = field(default=None, compare=False)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise FrameError(f"{name} {value} out of range [{low}, {high}]")


def _type_bytes(message_type: str) -> bytes:
    try:
        raw = message_type.encode("ascii")
    except UnicodeEncodeError:
        raise FrameError(f"message type {message_type!r} is not ASCII") from None
    if not 1 <= len(raw) <= MESSAGE_TYPE_SIZE:
        raise FrameError(f"message type {message_type!r} must be 1 to 32 bytes")
    if not all(0x21 <= b <= 0x7E for b in raw):
        raise FrameError(f"message type {message_type!r} has non-printable characters")
    return raw.ljust(MESSAGE_TYPE_SIZE, b" ")


def encode(frame: Frame) -> bytes:
    """Serialize ``frame``: HeaderLength 116, space-padded type, fresh SHA-256 digest.

    Raises :class:`FrameError` if a field does not fit its wire size.
    """
    _check_range("sequence number", frame.sequence_number, _I64_MIN, _I64_MAX)
    _check_range("created date", frame.created_date, 0, _U64_MAX)
    _check_range("flags", frame.flags, 0, _U64_MAX)
    _check_range("schema version", frame.schema_version, 0, _U32_MAX)
    _check_range("payload type", frame.payload_type, 0, _U32_MAX)
    _check_range("payload length", len(frame.payload), 0, _U32_MAX)
    mid = frame.message_id.bytes
    header = _HEADER.pack(
        HEADER_LENGTH,
        _type_bytes(frame.message_type),
        frame.schema_version,
        frame.created_date,
        frame.sequence_number,
        frame.flags,
        mid[8:] + mid[:8],
        hashlib.sha256(frame.payload).digest(),
        frame.payload_type,
        len(frame.payload),
    )
    return header + frame.payload


def _message_type(raw: bytes) -> str | None:
    name = raw.strip(_PAD)
    if not name or not all(0x21 <= b <= 0x7E for b in name):
        return None
    return name.decode("ascii")


def decode(data: bytes) -> Frame:
    """Parse one frame, tolerantly.

    Accepted: MessageType padded with NULs or spaces on either side; any flags, schema version,
    payload type or created date; any digest (kept as-is in ``.digest``); a PayloadLength that
    does not match (the payload is everything after the header, as the Go readers do); a
    HeaderLength above 116 (the payload then starts at ``HeaderLength + 4``).

    Raises :class:`FrameError` for anything else: fewer than 120 bytes, HeaderLength below 116
    or past the end of ``data``, an empty or non-printable MessageType.
    """
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise FrameError(f"truncated frame: {len(data)} bytes, a header is {HEADER_SIZE}")
    (
        header_length,
        raw_type,
        schema_version,
        created_date,
        sequence_number,
        flags,
        raw_id,
        digest,
        payload_type,
        _payload_length,
    ) = _HEADER.unpack_from(data)
    if header_length < HEADER_LENGTH:
        raise FrameError(f"bad header length {header_length}, expected {HEADER_LENGTH}")
    if header_length + 4 > len(data):
        raise FrameError(f"header length {header_length} runs past the {len(data)}-byte frame")
    message_type = _message_type(raw_type)
    if message_type is None:
        raise FrameError(f"garbage message type {raw_type!r}")
    return Frame(
        message_type=message_type,
        sequence_number=sequence_number,
        payload_type=payload_type,
        payload=data[header_length + 4 :],
        message_id=uuid.UUID(bytes=raw_id[8:] + raw_id[:8]),
        created_date=created_date,
        flags=flags,
        schema_version=schema_version,
        digest=digest,
    )


def digest_ok(frame: Frame) -> bool:
    """Whether the frame's digest passes the official plugin's check.

    True when no digest was recorded (a locally built frame), when the payload is empty (the
    plugin does not check those; pyssm-client sends zeros) or when it is the payload's SHA-256.
    """
    if frame.digest is None or not frame.payload:
        return True
    return frame.digest == hashlib.sha256(frame.payload).digest()


def forwardable(data: bytes) -> int | None:
    """For a relay: the payload type of a frame whose header is sound and whose digest
    matches (empty payloads pass), without building a :class:`Frame`; else ``None``."""
    if len(data) < HEADER_SIZE:
        return None
    header_length = _U32.unpack_from(data)[0]
    if header_length < HEADER_LENGTH or header_length + 4 > len(data):
        return None
    view = memoryview(data)
    payload = view[header_length + 4 :]
    if payload.nbytes and hashlib.sha256(payload).digest() != view[80:112]:
        return None
    return int(_U32.unpack_from(data, 112)[0])


def peek_type(data: bytes) -> str | None:
    """The MessageType of a frame without decoding the rest; ``None`` if ``data`` is no frame.

    Only the length and the HeaderLength field are checked, so ``peek_type`` returning a name
    does not promise that :func:`decode` will succeed, but ``None`` promises it fails.
    """
    if len(data) < HEADER_SIZE:
        return None
    header_length = _U32.unpack_from(data)[0]
    if header_length < HEADER_LENGTH or header_length + 4 > len(data):
        return None
    return _message_type(bytes(data[4 : 4 + MESSAGE_TYPE_SIZE]))
