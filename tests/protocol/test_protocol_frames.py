"""Frames: the test vector of docs/reference/data-channel.md#frames, round trips, tolerant decoding,
strict encoding, fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.protocol import (
    HEADER_SIZE,
    Flag,
    Frame,
    FrameError,
    MessageType,
    PayloadType,
    decode,
    digest_ok,
    encode,
    peek_type,
)

VECTOR = bytes.fromhex(
    """
    00 00 00 74 69 6e 70 75 74 5f 73 74 72 65 61 6d
    5f 64 61 74 61 20 20 20 20 20 20 20 20 20 20 20
    20 20 20 20 00 00 00 01 00 00 01 8b cf e5 68 00
    00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 00
    08 09 0a 0b 0c 0d 0e 0f 00 01 02 03 04 05 06 07
    1d 88 7c e0 f8 67 2e 49 14 d9 00 0e 80 1c d7 4e
    cd 80 5d d9 36 6c 0b c4 2d c1 6a dc 01 97 dc 2f
    00 00 00 01 00 00 00 03 6c 73 0d
    """
)
VECTOR_FRAME = Frame(
    message_type=MessageType.INPUT_STREAM_DATA,
    sequence_number=5,
    payload_type=PayloadType.OUTPUT,
    payload=b"ls\r",
    message_id=uuid.UUID("00010203-0405-0607-0809-0a0b0c0d0e0f"),
    created_date=1_700_000_000_000,
)


def frame(**changes: object) -> Frame:
    fields = {
        "message_type": "output_stream_data",
        "sequence_number": 7,
        "payload_type": 1,
        "payload": b"hello",
        "message_id": uuid.UUID(int=0x1234),
        "created_date": 1_700_000_000_123,
    }
    fields.update(changes)
    return Frame(**fields)  # type: ignore[arg-type]


def test_vector_encodes_exactly() -> None:
    assert len(VECTOR) == 123
    assert encode(VECTOR_FRAME) == VECTOR


def test_vector_decodes_exactly() -> None:
    decoded = decode(VECTOR)
    assert decoded == VECTOR_FRAME
    assert decoded.message_type == "input_stream_data"
    assert decoded.digest == hashlib.sha256(b"ls\r").digest()
    assert digest_ok(decoded)
    assert peek_type(VECTOR) == "input_stream_data"


def test_uuid_is_in_java_long_pair_order() -> None:
    wire = encode(VECTOR_FRAME)[64:80]
    assert wire == bytes(range(8, 16)) + bytes(range(8))


def test_enums_match_the_spec() -> None:
    assert [p.value for p in PayloadType] == list(range(13))
    assert PayloadType.FLAG.value == 10 and PayloadType.EXIT_CODE.value == 12
    assert (Flag.DISCONNECT_TO_PORT, Flag.TERMINATE_SESSION, Flag.CONNECT_TO_PORT_ERROR) == (
        1,
        2,
        3,
    )
    assert len(MessageType) == 15
    assert MessageType.ACKNOWLEDGE.value == "acknowledge"


def test_round_trip_keeps_every_field() -> None:
    original = frame(flags=3, schema_version=2, sequence_number=-1, payload=b"")
    assert decode(encode(original)) == original


def _with_type(data: bytes, raw_type: bytes) -> bytes:
    assert len(raw_type) == 32
    return data[:4] + raw_type + data[36:]


@pytest.mark.parametrize(
    "raw_type",
    [
        b"\x00" * 15 + b"input_stream_data",  # ssm-session: NUL-padded on the left
        b"input_stream_data" + b"\x00" * 15,
        b" " * 15 + b"input_stream_data",
        b"\x00 input_stream_data ".ljust(32, b"\x00"),
    ],
)
def test_decode_strips_nul_and_space_padding(raw_type: bytes) -> None:
    data = _with_type(VECTOR, raw_type)
    assert decode(data).message_type == MessageType.INPUT_STREAM_DATA
    assert peek_type(data) == "input_stream_data"


def test_garbage_digest_is_kept_and_reported() -> None:
    garbage = b"0123456789abcdef0123456789abcdef"
    data = VECTOR[:80] + garbage + VECTOR[112:]
    decoded = decode(data)
    assert decoded.digest == garbage
    assert not digest_ok(decoded)
    assert decoded == VECTOR_FRAME  # the digest takes no part in equality
    assert encode(decoded) == VECTOR  # and encode recomputes it


def test_zero_digest_on_empty_payload_is_fine() -> None:
    data = encode(frame(payload=b""))
    zeroed = data[:80] + b"\x00" * 32 + data[112:]
    decoded = decode(zeroed)
    assert decoded.digest == b"\x00" * 32
    assert digest_ok(decoded)


def test_zero_digest_on_a_payload_is_bad() -> None:
    zeroed = VECTOR[:80] + b"\x00" * 32 + VECTOR[112:]
    assert not digest_ok(decode(zeroed))


def test_local_frames_have_no_digest_and_pass() -> None:
    assert digest_ok(frame())


@pytest.mark.parametrize("length", [0, 1, 3, 1000, 2**32 - 1])
def test_payload_length_field_is_not_trusted(length: int) -> None:
    data = VECTOR[:116] + struct.pack(">I", length) + VECTOR[120:]
    assert decode(data).payload == b"ls\r"


def test_longer_header_length_moves_the_payload() -> None:
    data = struct.pack(">I", 120) + VECTOR[4:120] + b"XXXX" + b"ls\r"
    assert decode(data).payload == b"ls\r"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (VECTOR[:119], "truncated"),
        (struct.pack(">I", 115) + VECTOR[4:], "header length"),
        (struct.pack(">I", 0) + VECTOR[4:], "header length"),
        (struct.pack(">I", 200) + VECTOR[4:], "runs past"),
        (_with_type(VECTOR, b"\x00" * 32), "message type"),
        (_with_type(VECTOR, b" " * 32), "message type"),
        (_with_type(VECTOR, b"input\xffstream" + b" " * 20), "message type"),
        (_with_type(VECTOR, b"input stream" + b" " * 20), "message type"),
    ],
)
def test_bad_input_raises_frame_error(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode(data)
    assert peek_type(data) is None


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


def test_peek_type_needs_a_whole_header() -> None:
    assert peek_type(VECTOR[:HEADER_SIZE]) == "input_stream_data"
    assert peek_type(VECTOR[: HEADER_SIZE - 1]) is None
    assert peek_type(memoryview(VECTOR)) == "input_stream_data"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"message_type": "x" * 33},
        {"message_type": ""},
        {"message_type": "input stream"},
        {"message_type": "données"},
        {"sequence_number": 2**63},
        {"created_date": -1},
        {"flags": 2**64},
        {"payload_type": 2**32},
        {"schema_version": -1},
    ],
)
def test_encode_is_strict(changes: dict[str, object]) -> None:
    with pytest.raises(FrameError):
        encode(frame(**changes))


def test_encode_writes_header_length_116_and_space_padding() -> None:
    data = encode(frame(message_type="acknowledge"))
    assert data[:4] == b"\x00\x00\x00\x74"
    assert data[4:36] == b"acknowledge" + b" " * 21
    assert struct.unpack(">I", data[116:120])[0] == 5


# --- property tests --------------------------------------------------------------------------

message_types = st.one_of(
    st.sampled_from(list(MessageType)),
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32
    ),
)
frames = st.builds(
    Frame,
    message_type=message_types,
    sequence_number=st.integers(-(2**63), 2**63 - 1),
    payload_type=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=300),
    message_id=st.uuids(),
    created_date=st.integers(0, 2**64 - 1),
    flags=st.integers(0, 2**64 - 1),
    schema_version=st.integers(0, 2**32 - 1),
)


@settings(max_examples=300, deadline=None)
@given(frames)
def test_decode_encode_is_identity(original: Frame) -> None:
    data = encode(original)
    decoded = decode(data)
    assert decoded == original
    assert digest_ok(decoded)
    assert encode(decoded) == data
    assert peek_type(data) == original.message_type


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_frame_error(data: bytes) -> None:
    try:
        decoded = decode(data)
    except FrameError:
        return
    assert peek_type(data) == decoded.message_type
    encode(decoded)  # whatever decodes can be re-encoded


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.data())
def test_corrupted_frames_raise_only_frame_error(original: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode(original))
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(FrameError):
        decode(bytes(raw[:cut]))


def test_forwardable_checks_header_and_digest_without_decoding() -> None:
    import uuid as _uuid

    from hatchway.protocol import Frame, encode
    from hatchway.protocol.frames import forwardable

    good = encode(Frame("output_stream_data", 3, 1, b"hello", _uuid.uuid4(), 1700000000000))
    assert forwardable(good) == 1
    tampered = bytearray(good)
    tampered[-1] ^= 0xFF
    assert forwardable(bytes(tampered)) is None
    assert forwardable(good[:100]) is None
    empty = encode(Frame("acknowledge", 0, 0, b"", _uuid.uuid4(), 1700000000000, flags=3))
    assert forwardable(empty) == 0
