"""agent_session_log payloads: round trips, and every malformed payload is a PayloadError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatchway.protocol import PayloadError
from hatchway.protocol.sessionlog import (
    LogEvent,
    OutputRef,
    build_session_log,
    parse_session_log,
)

_time = st.floats(min_value=0, max_value=1e7, allow_nan=False)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_event = st.one_of(
    st.tuples(_time, st.sampled_from(["o", "i"]), st.binary(max_size=300)),
    st.tuples(_time, st.just("r"), st.tuples(st.integers(1, 999), st.integers(1, 999)).map(list)),
    st.tuples(_time, st.just("conn"), st.dictionaries(st.text(max_size=8), _json, max_size=5)),
    st.tuples(_time, st.just("end"), st.none() | st.integers(-255, 255)),
    st.tuples(
        _time,
        st.just("o"),
        st.tuples(st.integers(0, 2**40), st.integers(0, 64)).map(
            lambda a: OutputRef(a[0], a[0] + a[1])
        ),
    ),
)


@given(
    st.text(min_size=1, max_size=96),
    st.integers(0, 2**62),
    st.floats(0, 2e9, allow_nan=False),
    st.lists(_event, max_size=20),
)
def test_round_trip(sid: str, seq: int, start: float, events: list[tuple[float, str, Any]]) -> None:
    payload = build_session_log(sid, seq, start, events)
    assert payload.count(b"\n", 0, payload.index(b"\n") + 1) == 1  # one header line
    batch = parse_session_log(payload)
    assert (batch.session_id, batch.seq, batch.start) == (sid, seq, start)
    assert batch.events == tuple(LogEvent(round(t, 6), k, v) for t, k, v in events)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        parse_session_log(data)


@given(st.lists(_event, min_size=1, max_size=5), st.data())
def test_truncated_or_padded_bodies_are_refused(
    events: list[tuple[float, str, Any]], data: st.DataObject
) -> None:
    payload = build_session_log("s-1", 0, 1.0, events)
    body = len(payload) - payload.index(b"\n") - 1
    if body:
        cut = data.draw(st.integers(1, body))
        with pytest.raises(PayloadError):
            parse_session_log(payload[:-cut])
    with pytest.raises(PayloadError, match="belong to no event"):
        parse_session_log(payload + b"x")


def _header(**over: Any) -> bytes:
    head = {"SchemaVersion": 1, "SessionId": "s-1", "Seq": 0, "Start": 1.5, "Events": []}
    head.update(over)
    return json.dumps(head).encode() + b"\n"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"SessionId":"s"}', "no header line"),
        (b"{nope\n", "header is not JSON"),
        (b"[1]\n", "JSON object"),
        (_header(SessionId=7), "SessionId"),
        (_header(Seq=-1), "Seq"),
        (_header(Seq=True), "Seq"),
        (_header(Start="now"), "Start"),
        (b'{"SessionId":"s","Seq":0,"Start":NaN,"Events":[]}\n', "Start"),
        (_header(SchemaVersion="1"), "SchemaVersion"),
        (_header(Events={}), "Events"),
        (_header(Events=[[0.1, "o"]]), r"\[time, kind, data\]"),
        (_header(Events=[[0.1, "", 1]]), "kind"),
        (_header(Events=[["x", "o", 1]]), "event time"),
        (_header(Events=[[0.1, "o", -1]]), "byte length"),
        (_header(Events=[[0.1, "o", "ab"]]), "byte length"),
        (_header(Events=[[0.1, "o", 3]]) + b"ab", "past the body"),
        (_header(Events=[[0.1, "o", [5, 4]]]), "output reference"),
        (_header(Events=[[0.1, "o", [-1, 4]]]), "output reference"),
        (_header(Events=[[0.1, "o", [1, 2, 3]]]), "output reference"),
        (_header(Events=[[0.1, "o", [1, True]]]), "output reference"),
        (_header(Events=[[0.1, "i", [1, 2]]]), "byte length"),  # input is never a reference
    ],
)
def test_malformed_payloads_say_why(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_session_log(payload)
