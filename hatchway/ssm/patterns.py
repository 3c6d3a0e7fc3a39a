"""``allowedPattern``: one regular-expression engine, RE2, for the broker and the agent.

AWS checks a parameter value twice: with Java's regex library at the API and with Go's
``regexp`` (RE2) on the agent, and the value must pass both. Python's ``re`` is neither, and
differs where it matters: it backtracks (``(a+)+$`` on a long value takes exponential time),
its ``$`` also matches before a trailing newline (a port ``"22\\n"`` passed ``^[0-9]+$``), and
its ``\\d``/``\\w`` are Unicode (``"٢٢"`` passed ``^\\d+$``). Here every pattern is compiled by
RE2 (the ``google-re2`` bindings), as on AWS's agent:

* matching is linear in the value's length, whatever the pattern;
* ``$`` matches only at the very end, ``\\d``, ``\\w``, ``\\s`` and ``\\b`` are ASCII;
* a pattern RE2 cannot compile (backreferences, lookarounds, possessive quantifiers, atomic
  groups, ``\\Z``, repetitions over 1,000, …) is refused when the document is created or
  updated, since AWS's agent could never run it;
* the value is *searched* (Go's ``MatchString``): a pattern that is not anchored with ``^``
  and ``$`` constrains only part of the value, as on AWS;
* a value that is not valid Unicode text (a lone surrogate) matches nothing.

The broker's ``StartSession`` and the agent's re-check both call :func:`pattern_matches`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is the caller's answer, not a log line


class PatternError(ValueError):
    """A pattern RE2 cannot compile; ``reason`` is RE2's own text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern (remembered); raises :class:`PatternError`."""
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(str(reason)) from None
    except UnicodeError:
        raise PatternError("the pattern is not valid Unicode text") from None


def pattern_matches(pattern: str, value: str) -> bool:
    """Does ``value`` contain a match of ``pattern`` (RE2 semantics)?"""
    compiled = compile_pattern(pattern)
    try:
        return compiled.search(value) is not None
    except UnicodeError:
        return False
