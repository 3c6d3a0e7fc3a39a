"""Log lines: text (the default) or one JSON object a line, with the request they belong to.

The API pipeline sets :data:`REQUEST_ID`, :data:`PRINCIPAL`, :data:`OPERATION` (and the data
channel :data:`SESSION_ID`) as context variables while it serves a request, so every line any
logger writes meanwhile carries them (``--log-format json``: as keys; text: appended as
``[request_id=…]``). The access log (logger ``hatchway.access``) writes one line per HTTP
request. See docs/observability.md.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("hatchway_request_id", default=None)
PRINCIPAL: ContextVar[str | None] = ContextVar("hatchway_principal", default=None)
OPERATION: ContextVar[str | None] = ContextVar("hatchway_operation", default=None)
SESSION_ID: ContextVar[str | None] = ContextVar("hatchway_session_id", default=None)

_CONTEXT = (
    ("request_id", REQUEST_ID),
    ("principal", PRINCIPAL),
    ("operation", OPERATION),
    ("session_id", SESSION_ID),
)
ACCESS_FIELDS = ("method", "path", "status", "bytes", "duration_ms", "client")
"""What an access-log record carries beside the request id (as ``extra``)."""

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

access_log = logging.getLogger("hatchway.access")


def request_id() -> str:
    """The id of the request being served (set by the access middleware), else a new one."""
    current = REQUEST_ID.get()
    if current is None:
        from hatchway.server.base.crypto import request_id as new_id

        return new_id()
    return current


def _context(record: logging.LogRecord) -> dict[str, str]:
    """The request context of ``record``: its own ``extra`` first, else the context variables."""
    out: dict[str, str] = {}
    for key, var in _CONTEXT:
        value = getattr(record, key, None) or var.get()
        if value:
            out[key] = str(value)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601 with milliseconds), level, logger, message,
    then the request context where known, an access record's fields, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_context(record))
        for key in ACCESS_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Today's text lines, with ``[request_id=… principal=…]`` appended where known."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if not context:
            return line
        tail = " ".join(f"{k}={v}" for k, v in context.items())
        head, sep, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{tail}]{sep}{rest}"


def configure(level: str = "INFO", fmt: str = "text", text_format: str = TEXT_FORMAT) -> None:
    """Send every logger's lines to standard error in ``fmt`` (``text`` or ``json``)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(text_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def set_access_log(enabled: bool) -> None:
    """``--no-access-log`` silences ``hatchway.access`` (it logs at INFO otherwise)."""
    access_log.disabled = not enabled
