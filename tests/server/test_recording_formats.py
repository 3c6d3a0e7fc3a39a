"""The recording formats, pure: asciicast v2 rendering and reading, plain-text transcripts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatchway.protocol.sessionlog import LogEvent
from hatchway.server.recordings import asciicast
from hatchway.server.recordings.transcript import MAX_LINE, Transcript

E = LogEvent


def _cast(
    events: list[LogEvent], title: str | None = None
) -> tuple[dict[str, object], list[list[object]]]:
    lines = list(asciicast.render(events, timestamp=1700000000.7, title=title))
    for line in lines:
        assert "\n" not in line
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]


def test_header_takes_the_size_set_before_the_first_output() -> None:
    header, events = _cast(
        [
            E(0.01, "r", [80, 24]),
            E(0.02, "r", [132, 43]),
            E(0.5, "o", b"$ "),
            E(1.0, "r", [90, 20]),
        ],
        title="alice-1 on i-1",
    )
    assert header == {
        "version": 2,
        "width": 132,
        "height": 43,
        "timestamp": 1700000000,
        "env": {"TERM": "xterm-256color"},
        "title": "alice-1 on i-1",
    }
    assert events == [[0.5, "o", "$ "], [1.0, "r", "90x20"]]


def test_without_a_resize_the_agent_default_size_is_used() -> None:
    header, events = _cast([E(0.1, "o", b"hi")])
    assert (header["width"], header["height"]) == (80, 24)
    assert events == [[0.1, "o", "hi"]]
    header, events = _cast([])
    assert events == [] and header["version"] == 2


def test_utf8_split_across_events_is_decoded_whole_and_bad_bytes_replaced() -> None:
    e_acute = "é".encode()
    _h, events = _cast(
        [
            E(0.1, "o", b"caf" + e_acute[:1]),
            E(0.2, "o", e_acute[1:] + b"!"),
            E(0.3, "i", b"\xff"),
            E(0.4, "o", b"\xe2\x82"),  # unfinished at the end
        ]
    )
    assert events == [
        [0.1, "o", "caf"],
        [0.2, "o", "é!"],
        [0.3, "i", "\ufffd"],
        [0.4, "o", "\ufffd"],
    ]


def test_connections_and_the_end_are_markers_and_time_never_goes_back() -> None:
    conn = {"event": "open", "host": "db", "port": 5432, "who": "arn:x", "from": "10.0.0.9"}
    _h, events = _cast(
        [E(1.0, "o", b"a"), E(0.5, "conn", conn), E(2.0, "end", 7), E(3.0, "weird", 1)]
    )
    assert events[0] == [1.0, "o", "a"]
    assert events[1][0] == 1.0 and events[1][1] == "m" and json.loads(str(events[1][2])) == conn
    assert events[2] == [2.0, "m", '{"code":7,"event":"exit"}']
    assert len(events) == 3


def test_read_round_trips_and_refuses_what_is_not_a_recording() -> None:
    lines = list(asciicast.render([E(0.25, "o", b"x\r\n"), E(1.0, "end", 0)], timestamp=5))
    cast = asciicast.read(lines)
    assert cast.header["timestamp"] == 5
    assert cast.events == [
        asciicast.CastEvent(0.25, "o", "x\r\n"),
        asciicast.CastEvent(1.0, "m", '{"code":0,"event":"exit"}'),
    ]
    for bad, why in [
        ([], "empty"),
        (["{"], "header is not JSON"),
        (['{"version": 1}'], "v2 header"),
        (['{"version": 2}', "[1, "], "line 2 is not JSON"),
        (['{"version": 2}', '[1, "o"]'], "line 2 is not"),
        (['{"version": 2}', '[true, "o", "x"]'], "line 2 is not"),
    ]:
        with pytest.raises(asciicast.CastError, match=why):
            asciicast.read(bad)


@given(st.lists(st.tuples(st.floats(0, 1e5), st.binary(max_size=50)), max_size=30))
def test_any_output_renders_to_a_readable_recording(chunks: list[tuple[float, bytes]]) -> None:
    events = [E(t, "o", data) for t, data in chunks]
    cast = asciicast.read(asciicast.render(events, timestamp=0))
    times = [ev.time for ev in cast.events]
    assert times == sorted(times)
    text = "".join(ev.data for ev in cast.events)
    assert text == b"".join(d for _t, d in chunks).decode("utf-8", "replace")


# -- transcript --------------------------------------------------------------------------------

BASH = b"\x1b[?2004h\x1b]0;ssm-user@vm: ~\x07\x1b[01;32mssm-user@vm\x1b[00m:\x1b[01;34m~\x1b[00m$ "


def _text(*chunks: bytes) -> list[str]:
    tr = Transcript()
    out = []
    for i, chunk in enumerate(chunks):
        out += [line for _t, line in tr.feed(chunk, float(i))]
    return out + [line for _t, line in tr.finish(float(len(chunks)))]


def test_a_bash_prompt_and_command_become_plain_lines() -> None:
    assert _text(
        BASH,
        b"echo hi\r\n\x1b[?2004l\r",
        b"hi\r\n",
        BASH + b"exit\r\n\x1b[?2004l\rlogout\r\n",
    ) == ["ssm-user@vm:~$ echo hi", "hi", "ssm-user@vm:~$ exit", "logout"]


def test_escape_sequences_split_across_chunks_are_still_removed() -> None:
    seq = b"\x1b[01;32mgreen\x1b[0m done\r\n"
    for cut in range(1, len(seq)):
        assert _text(seq[:cut], seq[cut:]) == ["green done"], cut
    osc = b"\x1b]0;a title\x07text\n"
    for cut in range(1, len(osc)):
        assert _text(osc[:cut], osc[cut:]) == ["text"], cut


def test_backspaces_erase_and_other_controls_go() -> None:
    assert _text(b"ab\bc\x07\r\n", b"x\b\b\by\tz\x00\n") == ["ac", "y\tz"]
    assert _text(b"readline: abc\b\x1b[K\b\x1b[Kd\r\n") == ["readline: ad"]


def test_line_times_and_the_unterminated_last_line() -> None:
    tr = Transcript()
    assert tr.feed(b"one\r\ntw", 1.5) == [(1.5, "one")]
    assert tr.feed(b"o\r\nthr", 2.5) == [(2.5, "two")]
    assert tr.finish(3.0) == [(3.0, "thr")]
    assert tr.finish(4.0) == []


def test_very_long_lines_are_cut() -> None:
    lines = _text(b"x" * (MAX_LINE * 2 + 5) + b"\n")
    assert [len(x) for x in lines] == [MAX_LINE, MAX_LINE, 5]


def test_a_stray_escape_does_not_swallow_the_rest() -> None:
    # ESC ESC b: the first ESC starts nothing (dropped), ESC b is a sequence (removed).
    assert _text(b"a\x1b", b"\x1bb\n" + b"y" * 5000 + b"\n") == ["a", "y" * 5000]
    # An escape that never ends is given up on after a while, and the text after it kept.
    assert _text(b"b\x1b]0;", b"t" * 5000 + b"\n") == ["b]0;" + "t" * 5000]
