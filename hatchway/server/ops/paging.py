"""NextToken pagination: opaque tokens that carry an offset, refused when forged."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, TypeVar

from hatchway.server.base.errors import ServiceError

T = TypeVar("T")


def page(
    items: Sequence[T],
    params: dict[str, Any],
    default: int,
    *,
    code: str = "InvalidNextToken",
    message: str = "The specified token isn't valid.",
) -> tuple[list[T], str | None]:
    """The page of ``items`` that ``NextToken``/``MaxResults`` ask for, and the next token."""
    start = 0
    token = params.get("NextToken")
    if token:
        try:
            start = int(json.loads(base64.b64decode(token, validate=True))["o"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceError(code, message) from exc
        if not 0 <= start <= len(items):
            raise ServiceError(code, message)
    size = int(params.get("MaxResults") or default)
    chunk = list(items[start : start + size])
    nxt = start + size
    return chunk, (
        base64.b64encode(json.dumps({"o": nxt}).encode()).decode() if nxt < len(items) else None
    )
