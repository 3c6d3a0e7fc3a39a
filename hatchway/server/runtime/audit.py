"""The audit trail: one CloudTrail-style event per API call (and per refused channel), written
as a JSON line in the data dir before the answer leaves and stored in batches.

:func:`audit` builds and records an event; :class:`AuditLog` is where events go (one per
process, ``ServerState.audit_log``). Moved here from ``front/call.py`` so that the layers below
the front door (recordings, the node channels) audit without importing it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hatchway.iam import Decision
from hatchway.server.base import crypto, metrics
from hatchway.server.base.errors import ServiceError
from hatchway.server.base.ratelog import RateLimitedLog
from hatchway.server.runtime import trail
from hatchway.server.store import schema as t

if TYPE_CHECKING:
    from hatchway.server.runtime.state import ServerState

log = logging.getLogger("hatchway.server.audit")

_REDACT = {
    "SecretAccessKey",
    "TokenValue",
    "ActivationCode",
    "SessionToken",
    "Password",
    "PolicyDocument",
    "Content",
    "TokenCode",  # MFA codes: one-time, but a code is a credential while it is valid
    "AuthenticationCode1",
    "AuthenticationCode2",
}
_SOURCES = {
    "ssm": "ssm.amazonaws.com",
    "iam": "iam.amazonaws.com",
    "sts": "sts.amazonaws.com",
    "kms": "kms.amazonaws.com",
    "cloudtrail": "cloudtrail.amazonaws.com",
    "hatchway": "hatchway",  # not an AWS service: no amazonaws.com name
}


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if k in _REDACT else _redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return "<binary>"
    return value


def audit(
    state: ServerState,
    *,
    service: str,
    operation: str,
    principal: str,
    user_id: str,
    source_ip: str,
    params: Mapping[str, Any],
    decisions: list[Decision],
    error: ServiceError | None,
    request_id: str,
    access_key_id: str = "",
    user_agent: str = "",
) -> dict[str, Any]:
    """Record a call CloudTrail-style, in the store and as a JSON line in the data dir."""
    now = datetime.now(UTC)
    deciding = next((d for d in decisions if not d.allowed), decisions[-1] if decisions else None)
    if error is None:
        outcome = "allowed"
    elif error.code.startswith("AccessDenied"):
        outcome = "denied"
    else:
        outcome = "error"
    event: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventID": crypto.request_id(),
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": _SOURCES.get(service, service),
        "eventName": operation,
        "awsRegion": state.config.region,
        "sourceIPAddress": source_ip,
        "userIdentity": {
            "arn": principal,
            "principalId": user_id,
            "accountId": state.config.account_id,
        },
        "requestParameters": _redacted(dict(params)),
        "requestID": request_id,
        "decision": outcome,
        "authorizations": [
            {
                "action": d.request.action,
                "resource": d.request.resource,
                "decision": d.decision,
                "statements": d.matched_statements(),
            }
            for d in decisions
        ],
    }
    if deciding is not None and deciding.message:
        event["denialMessage"] = deciding.message
    if error is not None:
        event["errorCode"] = error.code
        event["errorMessage"] = error.message
    trail.enrich(event, params, access_key_id, user_agent)
    state.audit_log.record(
        event,
        {
            "event_id": event["eventID"],
            "time": now,
            "event_source": event["eventSource"],
            "event_name": operation,
            "principal": principal,
            "decision": outcome,
            "data": event,
        },
    )
    return event


class AuditUnavailable(Exception):
    """Neither the store nor audit.jsonl can take audit events: calls are refused."""


MAX_UNWRITTEN = 16 << 20
"""Bytes of audit lines kept in memory while audit.jsonl cannot be written (a full disk)."""


class AuditLog:
    """Audit events: a JSON line in the data dir at once, the store in batches.

    The line is written (one ``write`` on an ``O_APPEND`` descriptor) before the response
    leaves. Rows are inserted together at the end of the event loop iteration that recorded
    them (inside the store's group commit), so the work is spread evenly instead of arriving in
    bursts; events recorded outside a loop reach the store within ``interval`` seconds.
    Stopping the broker flushes what is pending.

    Either sink may fail (a full disk, a stopped database): a line that cannot be written is
    kept in memory (up to ``MAX_UNWRITTEN`` bytes) and written first at the next attempt, so
    nothing is lost to a passing fault; rows the store refuses are dropped, their lines being
    in audit.jsonl. When both fail, :meth:`available` says so, and the API refuses calls
    before running them (fail closed) until one of them works again.
    """

    def __init__(self, store: Any, path: Any, interval: float = 0.05, batch: int = 500) -> None:
        self.store = store
        self.interval = interval
        self.batch = batch
        self.pending: list[dict[str, Any]] = []
        self._scheduled = False
        self._path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.exporters: list[Any] = []  # hatchway.server.runtime.auditexport: webhook, syslog
        self.rotation: Any = None  # hatchway.server.runtime.retention.Rotation of audit.jsonl
        self._unwritten = bytearray()  # lines audit.jsonl did not take yet
        self.dropped = 0  # lines beyond MAX_UNWRITTEN, lost
        self.line_ok = True  # the last write to audit.jsonl succeeded
        self.store_ok = True  # the last insert into the store succeeded
        self.failures = RateLimitedLog(log)

    def available(self) -> bool:
        """Whether an event recorded now is kept somewhere: if audit.jsonl failed last, it is
        tried again here (lines kept in memory first)."""
        if self.line_ok or (self.store_ok and getattr(self.store, "commits_ok", True)):
            return True
        return self._write_lines()

    def record(self, event: dict[str, Any], row: dict[str, Any]) -> None:
        line = json.dumps(event)
        self._append(line)
        for exporter in self.exporters:
            exporter.offer(line)
        if row.get("data") is event:
            row = {**row, "data": line}  # the same text for the store's JSON column
        self.pending.append(row)
        if len(self.pending) >= self.batch:
            self._try_flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # run() picks it up
            self._scheduled = True
            loop.call_soon(self._flush_soon)

    def _append(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "surrogatepass")
        if len(self._unwritten) + len(data) > MAX_UNWRITTEN:
            self.dropped += 1
            log.error(
                "audit.jsonl cannot be written and %d bytes wait: an event was lost",
                len(self._unwritten),
            )
        else:
            self._unwritten += data
        self._write_lines()

    def _write_lines(self) -> bool:
        """Write what audit.jsonl has not taken yet; whether all of it was written."""
        while self._unwritten:
            if self._fd is None:
                return False
            try:
                n = os.write(self._fd, self._unwritten)
            except OSError as exc:
                self.line_ok = False
                self.failures.failure(
                    f"could not write audit.jsonl ({len(self._unwritten)} bytes wait in memory)",
                    exc,
                    where="audit.jsonl",
                )
                return False
            del self._unwritten[:n]
        self.line_ok = True
        return True

    def _flush_soon(self) -> None:
        self._scheduled = False
        if self.pending:
            self._try_flush()

    def _try_flush(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # a store hiccup must not stop auditing: keep the lines
            self.store_ok = False
            self.failures.failure(
                "could not store audit events; they are in audit.jsonl"
                if self.line_ok
                else "could not store audit events, nor write audit.jsonl (kept in memory)",
                exc,
                where="audit store",
            )
        else:
            self.store_ok = True

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        if rows:
            self.store.insert_many(t.audit, rows)

    async def run(self) -> None:
        """Flush every ``interval`` seconds until cancelled (and retry audit.jsonl)."""
        ticker = metrics.Ticker("audit_flush", self.interval)
        exporting = [asyncio.create_task(e.run()) for e in self.exporters]
        try:
            while True:
                await ticker.sleep()
                if self.pending:
                    self._try_flush()
                if self._unwritten:
                    self._write_lines()
                if self.rotation is not None:
                    self.check_rotation()
        finally:
            for task in exporting:
                task.cancel()
            for task in exporting:
                with contextlib.suppress(BaseException):
                    await task

    def check_rotation(self) -> None:
        """Rotate audit.jsonl when it is due, or reopen it when another process did."""
        try:
            if self._fd is None:
                return
            if self.rotation.moved(self._fd):
                self._reopen()
            elif self.rotation.due(self._fd):
                self.rotation.rotate(self._fd)
                self._reopen()
        except OSError as exc:
            self.failures.failure("could not rotate audit.jsonl", exc, where="rotation")

    def _reopen(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        self.rotation.reopened()

    def close(self) -> None:
        if self.pending:
            self._try_flush()
        self._write_lines()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
