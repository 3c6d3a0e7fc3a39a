"""CloudTrail's ``LookupEvents`` over the broker's audit events (docs/audit.md).

``aws cloudtrail lookup-events --endpoint-url …`` reads what ``hatchway audit`` reads, through
the API: authorized as ``cloudtrail:LookupEvents`` (resource ``*``, as AWS's Service
Authorization Reference lists it), newest first, one lookup attribute at most, a time range,
``MaxResults`` (1–50, default 50) and an opaque ``NextToken`` bound to the query it came from.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.runtime import trail
from hatchway.server.store import schema as t

DEFAULT_RESULTS = 50
MAX_RESULTS = 50
_SCAN = 500  # audit rows read per query while filtering
SCAN_LIMIT = 20_000
"""Audit rows one LookupEvents call reads at most (then it answers with a NextToken)."""
_ATTRIBUTE_KEYS = (
    "EventId",
    "EventName",
    "ReadOnly",
    "Username",
    "ResourceType",
    "ResourceName",
    "EventSource",
    "AccessKeyId",
)


def _fingerprint(params: dict[str, Any]) -> str:
    """What a NextToken is bound to: the same lookup, only the page differs."""
    wanted = {
        "a": [[a.get("AttributeKey"), a.get("AttributeValue")] for a in params["_attrs"]],
        "s": params["_start"].isoformat() if params["_start"] else None,
        "e": params["_end"].isoformat() if params["_end"] else None,
        "c": params.get("EventCategory"),
    }
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def _token(seq: int, fingerprint: str) -> str:
    return base64.b64encode(json.dumps({"q": seq, "f": fingerprint}).encode()).decode()


def _cursor(token: str | None, fingerprint: str) -> int | None:
    if not token:
        return None
    try:
        data = json.loads(base64.b64decode(token, validate=True))
        seq, bound = int(data["q"]), str(data["f"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad_token() from exc
    if bound != fingerprint:
        raise _bad_token()
    return seq


def _bad_token() -> ServiceError:
    return ServiceError(
        "InvalidNextTokenException",
        "Invalid token or token that was previously used in a request with different parameters.",
    )


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


def _out(row: dict[str, Any]) -> dict[str, Any]:
    event = row["data"]
    values = trail.lookup_values(event)
    item: dict[str, Any] = {
        "EventId": row["event_id"],
        "EventName": row["event_name"],
        "ReadOnly": values["ReadOnly"][0],
        "EventTime": _aware(row["time"]),
        "EventSource": row["event_source"],
        "Username": values["Username"][0],
        "Resources": [
            {"ResourceType": r.get("resourceType", ""), "ResourceName": r.get("resourceName", "")}
            for r in event.get("resources") or []
        ],
        "CloudTrailEvent": json.dumps(event),
    }
    if values["AccessKeyId"][0]:
        item["AccessKeyId"] = values["AccessKeyId"][0]
    return item


@operation("cloudtrail", "LookupEvents")
async def lookup_events(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("cloudtrail:LookupEvents", "*")
    attrs = list(params.get("LookupAttributes") or [])
    if len(attrs) > 1:
        raise ServiceError(
            "InvalidLookupAttributesException", "You can specify only one lookup attribute."
        )
    for a in attrs:
        if a.get("AttributeKey") not in _ATTRIBUTE_KEYS:
            raise ServiceError(
                "InvalidLookupAttributesException",
                f"Invalid lookup attribute key: {a.get('AttributeKey')}.",
            )
    start, end = _aware(params.get("StartTime")), _aware(params.get("EndTime"))
    if start is not None and end is not None and start > end:
        raise ServiceError(
            "InvalidTimeRangeException", "Start time must be on or before the end time."
        )
    size = params.get("MaxResults")
    if size is None:
        size = DEFAULT_RESULTS
    if not 1 <= int(size) <= MAX_RESULTS:
        raise ServiceError(
            "InvalidMaxResultsException",
            f"Value {size} for MaxResults is invalid: it must be between 1 and {MAX_RESULTS}.",
        )
    fingerprint = _fingerprint({**params, "_attrs": attrs, "_start": start, "_end": end})
    cursor = _cursor(params.get("NextToken"), fingerprint)
    if params.get("EventCategory") == "insight":
        return {"Events": []}  # Hatchway has no CloudTrail Insights events
    c = t.audit.c
    conds: list[Any] = []
    if start is not None:
        conds.append(c.time >= start)
    if end is not None:
        conds.append(c.time <= end + timedelta(seconds=1))  # eventTime is whole seconds
    key = value = None
    if attrs:
        key, value = str(attrs[0]["AttributeKey"]), str(attrs[0].get("AttributeValue", ""))
        column = {"EventId": c.event_id, "EventName": c.event_name, "EventSource": c.event_source}
        if key in column:
            conds.append(column[key] == value)
        elif key != "ReadOnly":
            conds.append(c.data.contains(json.dumps(value)[1:-1], autoescape=True))
    found, resume = await asyncio.to_thread(
        scan, call.store, conds, cursor, key, value, end, int(size)
    )
    result: dict[str, Any] = {"Events": [_out(r) for r in found]}
    if resume is not None:
        result["NextToken"] = _token(resume, fingerprint)
    return result


def scan(
    store: Any,
    conds: list[Any],
    cursor: int | None,
    key: str | None,
    value: str | None,
    end: datetime | None,
    size: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``size`` matching rows, newest first, below ``cursor``; and where the next page
    starts (None: no more). At most :data:`SCAN_LIMIT` rows are read per call (in a worker
    thread): a rare attribute over a long history answers a short page and a NextToken
    rather than holding the broker, as CloudTrail may return fewer events than asked."""
    c = t.audit.c
    found: list[dict[str, Any]] = []
    scanned = 0
    while True:
        page_conds = [*conds, c.seq < cursor] if cursor is not None else conds
        rows = store.select(t.audit, *page_conds, order_by=[c.seq.desc()], limit=_SCAN)
        for row in rows:
            if not isinstance(row["data"], dict):
                cursor = row["seq"]
                continue
            if key is not None and value not in trail.lookup_values(row["data"]).get(key, []):
                cursor = row["seq"]
                continue
            when = _aware(row["time"])
            if end is not None and when is not None and when.replace(microsecond=0) > end:
                cursor = row["seq"]
                continue
            if len(found) == size:
                return found, found[-1]["seq"]
            found.append(row)
            cursor = row["seq"]
        scanned += len(rows)
        if len(rows) < _SCAN:
            return found, None
        if scanned >= SCAN_LIMIT:
            return found, cursor
