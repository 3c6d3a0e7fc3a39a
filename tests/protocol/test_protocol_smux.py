"""smux v1 (docs/reference/data-channel.md#smux): the frame codec, reassembly across any split, and
both session roles."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatchway.protocol.smux import (
    MAX_FRAME,
    Cmd,
    Decoder,
    Reply,
    SmuxError,
    SmuxFrame,
    SmuxRole,
    SmuxSession,
    StreamClosed,
    StreamData,
    StreamOpened,
    encode_data,
    encode_frame,
)

# What AWS's plugin put on the wire for the first local connection and an HTTP request
# (docs/reference/data-channel.md#smux, observed bytes).
OBSERVED_SYN = bytes.fromhex("01 00 0000 03000000")
OBSERVED_PSH = bytes.fromhex("01 02 1200 03000000") + b"GET / HTTP/1.0\r\n\r\n"


def test_observed_bytes_encode() -> None:
    assert encode_frame(Cmd.SYN, 3) == OBSERVED_SYN
    assert encode_frame(Cmd.PSH, 3, b"GET / HTTP/1.0\r\n\r\n") == OBSERVED_PSH
    assert encode_data(3, b"GET / HTTP/1.0\r\n\r\n") == OBSERVED_PSH


def test_observed_bytes_decode() -> None:
    frames = Decoder().feed(OBSERVED_SYN + OBSERVED_PSH)
    assert frames == [SmuxFrame(Cmd.SYN, 3), SmuxFrame(Cmd.PSH, 3, b"GET / HTTP/1.0\r\n\r\n")]


def test_client_opens_odd_streams_from_three() -> None:
    client = SmuxSession(SmuxRole.CLIENT)
    ids = []
    for _ in range(3):
        sid, syn = client.open_stream()
        assert syn == encode_frame(Cmd.SYN, sid)
        ids.append(sid)
    assert ids == [3, 5, 7]
    assert client.open_stream()[1] == OBSERVED_SYN.replace(b"\x03", b"\x09", 1)


def test_server_never_opens() -> None:
    with pytest.raises(SmuxError):
        SmuxSession(SmuxRole.SERVER).open_stream()


def test_little_endian_length_and_id() -> None:
    frame = encode_frame(Cmd.PSH, 0x01020304, b"x" * 0x0102)
    assert frame[:8] == bytes([1, 2, 0x02, 0x01, 0x04, 0x03, 0x02, 0x01])


def test_large_data_is_split_into_max_frames() -> None:
    data = bytes(range(256)) * 300  # 76 800 bytes
    wire = encode_data(5, data)
    frames = Decoder().feed(wire)
    assert [len(f.data) for f in frames] == [MAX_FRAME, MAX_FRAME, len(data) - 2 * MAX_FRAME]
    assert all(f.cmd == Cmd.PSH and f.stream_id == 5 for f in frames)
    assert b"".join(f.data for f in frames) == data
    assert encode_data(5, b"") == b""


def test_decoder_accepts_the_largest_length() -> None:
    frame = encode_frame(Cmd.PSH, 3, b"a" * 0xFFFF)
    assert Decoder().feed(frame) == [SmuxFrame(Cmd.PSH, 3, b"a" * 0xFFFF)]
    with pytest.raises(SmuxError):
        encode_frame(Cmd.PSH, 3, b"a" * 0x10000)


def test_decoder_byte_by_byte() -> None:
    wire = OBSERVED_SYN + OBSERVED_PSH + encode_frame(Cmd.FIN, 3)
    dec = Decoder()
    out: list[SmuxFrame] = []
    for i in range(len(wire)):
        out += dec.feed(wire[i : i + 1])
        if i < 7:
            assert out == [] and dec.buffered == i + 1
    assert out == [
        SmuxFrame(Cmd.SYN, 3),
        SmuxFrame(Cmd.PSH, 3, b"GET / HTTP/1.0\r\n\r\n"),
        SmuxFrame(Cmd.FIN, 3),
    ]
    assert dec.buffered == 0


def test_non_data_commands_carry_no_data() -> None:
    # xtaci/smux never reads data after SYN/FIN/NOP: the next header follows at once.
    odd = bytes.fromhex("01 03 0500 00000000") + OBSERVED_SYN
    assert Decoder().feed(odd) == [SmuxFrame(Cmd.NOP, 0), SmuxFrame(Cmd.SYN, 3)]


@pytest.mark.parametrize(
    "garbage",
    [
        bytes.fromhex("02 00 0000 03000000"),  # version 2
        bytes.fromhex("00 02 0100 03000000 41"),  # version 0
        bytes.fromhex("01 04 0800 03000000") + bytes(8),  # UPD is v2 only
        bytes.fromhex("01 ff 0000 03000000"),
    ],
)
def test_garbage_raises_and_stays_broken(garbage: bytes) -> None:
    dec = Decoder()
    assert dec.feed(OBSERVED_SYN) == [SmuxFrame(Cmd.SYN, 3)]
    with pytest.raises(SmuxError):
        dec.feed(garbage)
    with pytest.raises(SmuxError):
        dec.feed(OBSERVED_SYN)


# --- hypothesis --------------------------------------------------------------------------------

frames_strategy = st.lists(
    st.one_of(
        st.builds(
            SmuxFrame, st.sampled_from([Cmd.SYN, Cmd.FIN, Cmd.NOP]), st.integers(0, 2**32 - 1)
        ),
        st.builds(
            SmuxFrame,
            st.just(Cmd.PSH),
            st.integers(0, 2**32 - 1),
            st.binary(min_size=0, max_size=3000),
        ),
    ),
    max_size=20,
)


def _wire(frames: list[SmuxFrame]) -> bytes:
    return b"".join(encode_frame(f.cmd, f.stream_id, bytes(f.data)) for f in frames)


@given(frames_strategy, st.lists(st.integers(0, 5000), max_size=30))
def test_roundtrip_under_any_split(frames: list[SmuxFrame], cuts: list[int]) -> None:
    wire = _wire(frames)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    dec = Decoder()
    out: list[SmuxFrame] = []
    for a, b in itertools.pairwise(points):
        out += dec.feed(wire[a:b])
    assert out == frames
    assert dec.buffered == 0


@given(st.binary(max_size=200_000), st.integers(1, 0xFFFF))
def test_encode_data_roundtrip(data: bytes, max_frame: int) -> None:
    frames = Decoder().feed(encode_data(7, data, max_frame))
    assert all(len(f.data) <= max_frame and f.stream_id == 7 for f in frames)
    assert b"".join(f.data for f in frames) == data


@given(st.binary(max_size=400))
def test_decoder_never_crashes_otherwise(data: bytes) -> None:
    dec = Decoder()
    with contextlib.suppress(SmuxError):
        dec.feed(data)


@given(st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=10), st.data())
def test_client_server_exchange_under_any_split(chunks: list[bytes], draw: st.DataObject) -> None:
    client, server = SmuxSession(SmuxRole.CLIENT), SmuxSession(SmuxRole.SERVER)
    sid, syn = client.open_stream()
    wire = syn + b"".join(client.send(sid, c) for c in chunks) + client.close(sid)
    cut = draw.draw(st.integers(0, len(wire)))
    events = server.receive(wire[:cut]) + server.receive(wire[cut:])
    assert events[0] == StreamOpened(sid)
    assert events[-1] == StreamClosed(sid)
    data = b"".join(e.data for e in events if isinstance(e, StreamData))
    assert data == b"".join(chunks)


# --- session rules -----------------------------------------------------------------------------


def test_stream_lifecycle_both_fins() -> None:
    client, server = SmuxSession(SmuxRole.CLIENT), SmuxSession(SmuxRole.SERVER)
    sid, syn = client.open_stream()
    assert server.receive(syn) == [StreamOpened(3)]
    assert server.receive(client.send(sid, b"ping")) == [StreamData(3, b"ping")]
    assert client.receive(server.send(sid, b"pong")) == [StreamData(3, b"pong")]
    fin = server.close(sid)
    assert fin == encode_frame(Cmd.FIN, 3)
    assert server.close(sid) == b""  # only once
    assert server.send(sid, b"late") == b""  # closed: dropped
    assert client.receive(fin) == [StreamClosed(3)]
    assert not client.is_open(sid)
    assert client.send(sid, b"after fin") == b""  # no half-close in smux v1
    assert server.receive(client.close(sid)) == [StreamClosed(3)]
    assert client.streams == frozenset() and server.streams == frozenset()


def test_data_for_unknown_or_closed_streams_is_dropped() -> None:
    server = SmuxSession(SmuxRole.SERVER)
    assert server.receive(encode_frame(Cmd.PSH, 9, b"stray")) == []
    assert server.dropped == 5
    server.receive(encode_frame(Cmd.SYN, 3) + encode_frame(Cmd.FIN, 3))
    assert server.receive(encode_frame(Cmd.PSH, 3, b"xx")) == []
    assert server.dropped == 7
    assert server.receive(encode_frame(Cmd.FIN, 11)) == []


def test_duplicate_syn_is_ignored() -> None:
    server = SmuxSession(SmuxRole.SERVER)
    assert server.receive(OBSERVED_SYN + OBSERVED_SYN) == [StreamOpened(3)]


def test_client_refuses_streams_offered_by_the_agent() -> None:
    client = SmuxSession(SmuxRole.CLIENT)
    assert client.receive(encode_frame(Cmd.SYN, 2)) == [Reply(encode_frame(Cmd.FIN, 2))]
    assert client.streams == frozenset()


def test_nop_is_a_no_op() -> None:
    server = SmuxSession(SmuxRole.SERVER)
    assert server.nop() == bytes.fromhex("01 03 0000 00000000")
    assert server.receive(server.nop()) == []


def test_server_tracks_a_bounded_number_of_streams() -> None:
    """A peer that opens streams and never closes them cannot grow the table: past the limit
    a SYN is answered with FIN and opens nothing."""
    server = SmuxSession(SmuxRole.SERVER, max_streams=2)
    events = server.receive(encode_frame(Cmd.SYN, 3) + encode_frame(Cmd.SYN, 5))
    assert [e for e in events if isinstance(e, StreamOpened)] == [StreamOpened(3), StreamOpened(5)]
    events = server.receive(encode_frame(Cmd.SYN, 7) + encode_frame(Cmd.PSH, 7, b"data"))
    assert events == [Reply(encode_frame(Cmd.FIN, 7))]
    assert server.streams == frozenset({3, 5})
    # Once a stream is closed by both ends there is room again.
    server.close(3)
    server.receive(encode_frame(Cmd.FIN, 3))
    assert StreamOpened(9) in server.receive(encode_frame(Cmd.SYN, 9))
