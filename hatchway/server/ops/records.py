"""Hatchway's own API for session records: recordings and port connections (docs/audit.md).

Service ``hatchway`` (JSON 1.1, ``X-Amz-Target: Hatchway_20261201.<Operation>``, SigV4
service name ``hatchway``; model in ``hatchway/server/data/models``), with its own IAM
actions, denied unless a policy allows them:

* ``hatchway:ListSessionRecordings`` on ``*`` — the sessions that have a recording;
* ``hatchway:GetSessionRecording`` on the session's ARN
  (``arn:aws:ssm:<region>:<account>:session/<session id>``) — its asciicast v2 lines;
* ``hatchway:ListPortConnections`` on the session's ARN — a port session's connections.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.paging import page
from hatchway.server.recordings import keeper as recordings
from hatchway.server.store import schema as t
from hatchway.ssm import session_arn

DEFAULT_LINES = 1000
DEFAULT_CONNECTIONS = 200


def _session(call: Call, session_id: str) -> dict[str, Any]:
    row = call.store.get(t.sessions, session_id=session_id)
    if row is None:
        raise ServiceError("DoesNotExistException", f"Session {session_id} does not exist.")
    return dict(row)


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = int(json.loads(base64.b64decode(token, validate=True))["o"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError("InvalidNextToken", "The specified token isn't valid.") from exc
    if offset < 0:
        raise ServiceError("InvalidNextToken", "The specified token isn't valid.")
    return offset


def _next(offset: int) -> str:
    return base64.b64encode(json.dumps({"o": offset}).encode()).decode()


@operation("hatchway", "ListSessionRecordings")
async def list_session_recordings(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("hatchway:ListSessionRecordings", "*")
    sizes = await asyncio.to_thread(recordings.sizes, call.store)
    conds: list[Any] = [t.sessions.c.session_id.in_(list(sizes))] if sizes else []
    if params.get("Target"):
        conds.append(t.sessions.c.target == params["Target"])
    if params.get("Owner"):
        conds.append(t.sessions.c.owner == params["Owner"])
    rows = (
        call.store.select(t.sessions, *conds, order_by=[t.sessions.c.start_date.desc()])
        if sizes
        else []
    )
    chunk, nxt = page(rows, params, 50)
    out = []
    for row in chunk:
        batches, size = sizes.get(row["session_id"], (0, 0))
        item: dict[str, Any] = {
            "SessionId": row["session_id"],
            "Target": row["target"],
            "Owner": row["owner"],
            "DocumentName": row["document_name"],
            "Status": row["status"],
            "StartDate": row["start_date"],
            "RecordingBytes": size,
            "RecordingBatches": batches,
        }
        if row["end_date"] is not None:
            item["EndDate"] = row["end_date"]
        out.append(item)
    return {"Recordings": out, "NextToken": nxt}


@operation("hatchway", "GetSessionRecording")
async def get_session_recording(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    sid = params["SessionId"]
    call.authorize("hatchway:GetSessionRecording", session_arn(sid, call.region, call.account))
    row = _session(call, sid)
    start = _offset(params.get("NextToken"))
    size = int(params.get("MaxLines") or DEFAULT_LINES)

    def render() -> list[str]:  # in a worker thread: a long recording must not hold the loop
        cast = recordings.cast_lines(call.store, row)
        return [line.rstrip("\n") for line in islice(cast, start, start + size + 1)]

    lines = await asyncio.to_thread(render)
    result: dict[str, Any] = {
        "SessionId": sid,
        "Target": row["target"],
        "Owner": row["owner"],
        "Status": row["status"],
        "Format": "asciicast-v2",
        "Lines": lines[:size],
    }
    if len(lines) > size:
        result["NextToken"] = _next(start + size)
    return result


@operation("hatchway", "ListPortConnections")
async def list_port_connections(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    sid = params["SessionId"]
    call.authorize("hatchway:ListPortConnections", session_arn(sid, call.region, call.account))
    row = _session(call, sid)
    records = await asyncio.to_thread(_connections, call.store, sid, row["owner"])
    chunk, nxt = page(records, params, DEFAULT_CONNECTIONS)
    return {"Connections": chunk, "NextToken": nxt}


def _connections(store: Any, sid: str, owner: str) -> list[dict[str, Any]]:
    origin = recordings.started(store, sid) or 0.0
    records = []
    for ev in recordings.iter_events(store, sid, owner):
        if ev.kind != "conn" or not isinstance(ev.data, dict):
            continue
        d = ev.data
        item: dict[str, Any] = {
            "Time": datetime.fromtimestamp(origin + ev.time, UTC),
            "Event": str(d.get("event", "")),
            "Stream": int(d.get("stream") or 0),
            "Host": str(d.get("host", "")),
            "Port": int(d.get("port") or 0),
            "BytesIn": int(d.get("bytes_in") or 0),
            "BytesOut": int(d.get("bytes_out") or 0),
            "Who": str(d.get("who", "")),
            "From": str(d.get("from", "")),
        }
        if d.get("error"):
            item["Error"] = str(d["error"])
        records.append(item)
    return records
