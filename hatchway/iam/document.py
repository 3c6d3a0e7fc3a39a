"""Loading policy JSON the way IAM reads it.

IAM rejects duplicate keys inside one JSON object (Python's ``json`` silently keeps the last
one), and only accepts a small character set; both are syntax errors.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hatchway.iam.errors import MalformedPolicyDocument

SYNTAX_ERROR = "Syntax errors in policy."


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _allowed_char(c: str) -> bool:
    # Policy documents may contain only TAB, LF, CR and U+0020..U+00FF (IAM quotas page).
    o = ord(c)
    return o in (0x09, 0x0A, 0x0D) or 0x20 <= o <= 0xFF


def load_json(text: str | bytes) -> Any:
    """Parse a policy document's text; any JSON problem is ``Syntax errors in policy.``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPolicyDocument(SYNTAX_ERROR) from exc
    if not all(_allowed_char(c) for c in text):
        raise MalformedPolicyDocument(SYNTAX_ERROR)
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:
        raise MalformedPolicyDocument(SYNTAX_ERROR) from exc


def _finite_float(text: str) -> float:
    # 1e999 parses as infinity, which no JSON output can carry back (GetUserPolicy).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON.
    raise ValueError(name)


def policy_size(text: str) -> int:
    """Size as IAM counts it for quotas: characters that are not white space."""
    return sum(1 for c in text if not c.isspace())
