"""The outbox of Port sessions: order kept, Output merged into frames of at most frame_size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatchway.protocol import PayloadType
from hatchway.protocol.outbox import Outbox


def drain(box: Outbox) -> list[tuple[int, bytes]]:
    out = []
    while box:
        out.append(box.take())
    return out


def test_output_is_merged_and_split_flags_stay_whole_and_in_order() -> None:
    box = Outbox(frame_size=4)
    box.add(PayloadType.OUTPUT, b"ab")
    box.add(PayloadType.OUTPUT, b"cdefg")
    box.add(PayloadType.FLAG, b"\x00\x00\x00\x03")
    box.add(PayloadType.OUTPUT, b"")  # nothing
    box.add(PayloadType.OUTPUT, b"h")
    assert box.size == 12
    assert drain(box) == [
        (PayloadType.OUTPUT, b"abcd"),
        (PayloadType.OUTPUT, b"efg"),
        (PayloadType.FLAG, b"\x00\x00\x00\x03"),
        (PayloadType.OUTPUT, b"h"),
    ]
    assert box.size == 0
    with pytest.raises(IndexError):
        box.take()


@given(
    st.lists(
        st.tuples(st.sampled_from([PayloadType.OUTPUT, PayloadType.FLAG]), st.binary(max_size=50))
    ),
    st.integers(1, 64),
)
def test_bytes_and_order_survive(items: list[tuple[int, bytes]], frame_size: int) -> None:
    box = Outbox(frame_size=frame_size)
    for payload_type, data in items:
        box.add(payload_type, data)
    out = drain(box)
    assert all(len(d) <= frame_size for t, d in out if t == PayloadType.OUTPUT)

    # The concatenation per run of equal types is what went in.
    def runs(seq: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        merged: list[tuple[int, bytes]] = []
        for t, d in seq:
            if not d:
                continue
            if merged and merged[-1][0] == t == PayloadType.OUTPUT:
                merged[-1] = (t, merged[-1][1] + d)
            else:
                merged.append((t, d))
        return merged

    assert runs(out) == runs(items)
