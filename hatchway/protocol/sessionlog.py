"""``agent_session_log``: the session transcript, streamed from the agent to the broker.

A Hatchway-internal data-channel message (AWS's agent uploads its logs itself instead). The
agent sends one frame per batch of recorded events on the data channel, outside the reliable
stream (sequence number 0, like ``agent_session_state``); the broker keeps it and never
forwards it to a client.

Payload: one line of JSON, a newline, then the raw bytes of the batch's output and input::

    {"SchemaVersion":1,"SessionId":"…","Seq":7,"Start":1764280000.25,
     "Events":[[0.512,"o",5],[0.6,"r",[132,40]],[0.7,"i",1],[9.1,"end",0]]}\\n<6 bytes>

* ``Seq`` counts batches from 0, so a receiver can drop a batch it already has (after an
  agent reconnect that re-sends).
* ``Start`` is the session's start on the agent (Unix seconds); event times are seconds since.
* ``"o"`` (output) and ``"i"`` (input) events carry the byte length of their slice of the body,
  in order; every other kind carries a JSON value: ``"r"`` ``[cols, rows]``, ``"conn"`` a
  port-connection record (object), ``"end"`` the exit code (or null).
* An ``"o"`` event may instead carry ``[first, last]``: its bytes are the payloads of the
  agent's own ``output_stream_data`` frames ``first`` to ``last`` (sequence numbers) on the same
  channel, which the receiver relayed just before (:class:`OutputRef`). So output the broker
  can read anyway crosses the wire once, not twice; output it cannot read (KMS-encrypted
  sessions) comes in the body.

The body is not base64: bulk shell output travels at the cost of one copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hatchway.protocol.errors import PayloadError

__all__ = [
    "AGENT_SESSION_LOG",
    "BODY_KINDS",
    "LogBatch",
    "LogEvent",
    "OutputRef",
    "build_session_log",
    "parse_session_log",
]

AGENT_SESSION_LOG = "agent_session_log"
"""The message type (Hatchway-internal; a relay must never forward it to a client)."""
BODY_KINDS = frozenset({"o", "i"})
"""Event kinds whose data are bytes in the body; the rest carry JSON values."""
_WHAT = "agent_session_log"


@dataclass(frozen=True, slots=True)
class OutputRef:
    """The data of an ``"o"`` event: output frames ``first``..``last`` of the sender's stream."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One recorded event: seconds since the session's start, kind, data (bytes for o/i, or
    an :class:`OutputRef` for o)."""

    time: float
    kind: str
    data: Any


@dataclass(frozen=True, slots=True)
class LogBatch:
    """A parsed ``agent_session_log`` payload."""

    session_id: str
    seq: int
    start: float
    events: tuple[LogEvent, ...]
    schema_version: int = 1


def build_session_log(
    session_id: str, seq: int, start: float, events: Sequence[tuple[float, str, Any]]
) -> bytes:
    """The payload of one batch; ``events`` are ``(seconds since start, kind, data)``, the
    data of ``"o"``/``"i"`` bytes (or a memoryview) or an :class:`OutputRef`."""
    heads: list[list[Any]] = []
    body: list[bytes | memoryview] = []
    for t, kind, value in events:
        if isinstance(value, OutputRef):
            heads.append([round(t, 6), kind, [value.first, value.last]])
        elif kind in BODY_KINDS:
            heads.append([round(t, 6), kind, len(value)])
            body.append(value)
        else:
            heads.append([round(t, 6), kind, value])
    header = json.dumps(
        {
            "SchemaVersion": 1,
            "SessionId": session_id,
            "Seq": seq,
            "Start": start,
            "Events": heads,
        },
        separators=(",", ":"),
    )
    # ensure_ascii (the default) keeps the header one line of ASCII: no raw newline inside.
    return b"".join([header.encode(), b"\n", *body])


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(f"{_WHAT}: {name} must be a finite number")
    return float(value)


def parse_session_log(payload: bytes) -> LogBatch:
    """Parse and check one batch; :class:`PayloadError` if anything does not add up."""
    end = payload.find(b"\n")
    if end < 0:
        raise PayloadError(f"{_WHAT}: no header line")
    try:
        header = json.loads(payload[:end])
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"{_WHAT}: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise PayloadError(f"{_WHAT}: header must be a JSON object")
    session_id = header.get("SessionId")
    if not isinstance(session_id, str):
        raise PayloadError(f"{_WHAT}: SessionId must be a string")
    seq = header.get("Seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise PayloadError(f"{_WHAT}: Seq must be a non-negative integer")
    start = _number(header.get("Start"), "Start")
    version = header.get("SchemaVersion", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise PayloadError(f"{_WHAT}: SchemaVersion must be an integer")
    raw = header.get("Events")
    if not isinstance(raw, list):
        raise PayloadError(f"{_WHAT}: Events must be a list")
    view = memoryview(payload)
    offset = end + 1
    events: list[LogEvent] = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            raise PayloadError(f"{_WHAT}: an event must be [time, kind, data]")
        t = _number(item[0], "an event time")
        kind = item[1]
        if not isinstance(kind, str) or not kind:
            raise PayloadError(f"{_WHAT}: an event kind must be a non-empty string")
        value = item[2]
        if kind == "o" and isinstance(value, list):
            if (
                len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or not 0 <= value[0] <= value[1]
            ):
                raise PayloadError(f"{_WHAT}: an output reference must be [first, last]")
            value = OutputRef(value[0], value[1])
        elif kind in BODY_KINDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PayloadError(f"{_WHAT}: an {kind!r} event needs a byte length")
            if offset + value > len(payload):
                raise PayloadError(f"{_WHAT}: the events run past the body")
            value = bytes(view[offset : offset + value])
            offset += len(value)
        events.append(LogEvent(t, kind, value))
    if offset != len(payload):
        raise PayloadError(f"{_WHAT}: {len(payload) - offset} body bytes belong to no event")
    return LogBatch(session_id, seq, start, tuple(events), version)
