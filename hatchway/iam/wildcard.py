"""IAM's two wildcard characters, compiled to regular expressions once.

``*`` matches any run of characters and ``?`` exactly one; everything else is literal
(regex metacharacters in a policy are escaped, unlike moto's matcher).
"""

from __future__ import annotations

import re
from functools import lru_cache

_SPLIT = re.compile(r"([*?])")


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def glob_source(pattern: str, star: str = ".*", one: str = ".") -> str:
    """Regex source for a glob; ``star``/``one`` say what ``*``/``?`` may match."""
    out: list[str] = []
    for piece in _SPLIT.split(pattern):
        if piece == "*":
            out.append(star)
        elif piece == "?":
            out.append(one)
        elif piece:
            out.append(re.escape(piece))
    return "".join(out)


@lru_cache(maxsize=8192)
def compile_source(source: str, flags: int = re.DOTALL) -> re.Pattern[str]:
    """Compile (and remember) a regex built at request time, e.g. after variable substitution."""
    return re.compile(source, flags)


def glob_regex(patterns: tuple[str, ...], ignore_case: bool = False) -> re.Pattern[str]:
    """One anchored regex matching any of ``patterns`` (used with ``fullmatch``)."""
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return compile_source("|".join(f"(?:{glob_source(p)})" for p in patterns), flags)
