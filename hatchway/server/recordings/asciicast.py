"""asciicast v2: the recording format of session logs (what ``hatchway sessions replay`` plays).

A recording is newline-delimited JSON: a header object, then one ``[time, code, data]`` array
per event, ``time`` in seconds since the header's ``timestamp``, ``code`` one of ``"o"``
(output text), ``"i"`` (input text), ``"r"`` (resize, ``"COLSxROWS"``) or ``"m"`` (marker).
Hatchway writes port connections and the session's end as markers whose data is a JSON object.

:func:`render` turns recorded events (:class:`~hatchway.protocol.sessionlog.LogEvent`, times
relative to the session's start) into the lines of a ``.cast`` file; :func:`read` parses one
back (for replay). Both are pure.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hatchway.protocol.sessionlog import LogEvent

__all__ = ["Cast", "CastError", "CastEvent", "read", "render"]

DEFAULT_SIZE = (80, 24)  # the agent's PTY size until the client sends its own


class CastError(ValueError):
    """Not an asciicast v2 recording."""


@dataclass(frozen=True, slots=True)
class CastEvent:
    time: float
    code: str
    data: str


@dataclass
class Cast:
    header: dict[str, Any]
    events: list[CastEvent] = field(default_factory=list)


def _line(t: float, code: str, data: str) -> str:
    return json.dumps([round(t, 6), code, data], ensure_ascii=False)


def _marker(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def render(
    events: Iterable[LogEvent],
    *,
    timestamp: float,
    title: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """The lines (without newlines) of the recording of ``events``.

    Resizes before the first output set the header's width and height; output and input bytes
    are decoded as UTF-8 across event boundaries (invalid bytes become U+FFFD); ``"conn"``
    events become ``"m"`` markers holding the connection record, ``"end"`` a marker
    ``{"event":"exit","code":…}``. Times never go backwards (a clock step on the node).
    """
    it = iter(events)
    size = DEFAULT_SIZE
    first: LogEvent | None = None
    for ev in it:
        wh = _size(ev.data) if ev.kind == "r" else None
        if wh is None:
            first = ev
            break
        size = wh
    header: dict[str, Any] = {
        "version": 2,
        "width": size[0],
        "height": size[1],
        "timestamp": int(timestamp),
        "env": env or {"TERM": "xterm-256color"},
    }
    if title:
        header["title"] = title
    yield json.dumps(header, ensure_ascii=False)
    decoders = {
        "o": codecs.getincrementaldecoder("utf-8")("replace"),
        "i": codecs.getincrementaldecoder("utf-8")("replace"),
    }
    last = 0.0
    rest: Iterable[LogEvent] = it if first is None else _chain(first, it)
    for ev in rest:
        t = last = max(last, ev.time)
        if ev.kind in decoders:
            text = decoders[ev.kind].decode(ev.data)
            if text:
                yield _line(t, ev.kind, text)
        elif ev.kind == "r":
            wh = _size(ev.data)
            if wh is not None:
                yield _line(t, "r", f"{wh[0]}x{wh[1]}")
        elif ev.kind == "conn" and isinstance(ev.data, dict):
            yield _line(t, "m", _marker(ev.data))
        elif ev.kind == "end":
            yield _line(t, "m", _marker({"event": "exit", "code": ev.data}))
    for code, dec in decoders.items():
        tail = dec.decode(b"", final=True)
        if tail:
            yield _line(last, code, tail)


def _chain(first: LogEvent, rest: Iterator[LogEvent]) -> Iterator[LogEvent]:
    yield first
    yield from rest


def _size(value: Any) -> tuple[int, int] | None:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


def read(lines: Iterable[str]) -> Cast:
    """Parse a recording; :class:`CastError` if the header or an event is malformed."""
    it = (line for line in lines if line.strip())
    try:
        header = json.loads(next(it))
    except StopIteration:
        raise CastError("empty recording") from None
    except ValueError as exc:
        raise CastError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise CastError("not an asciicast v2 header")
    cast = Cast(header)
    for n, line in enumerate(it, start=2):
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise CastError(f"line {n} is not JSON: {exc}") from None
        if (
            not isinstance(item, list)
            or len(item) != 3
            or isinstance(item[0], bool)
            or not isinstance(item[0], int | float)
            or not isinstance(item[1], str)
            or not isinstance(item[2], str)
        ):
            raise CastError(f"line {n} is not a [time, code, data] event")
        cast.events.append(CastEvent(float(item[0]), item[1], item[2]))
    return cast
