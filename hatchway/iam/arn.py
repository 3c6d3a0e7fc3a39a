"""ARN matching for the ``Resource`` element and the ``Arn*`` condition operators.

An ARN has six colon-delimited parts: ``arn:partition:service:region:account:resource``; the
resource part may itself contain ``:`` and ``/``. In ``Resource``, wildcards in the first five
parts stay inside their part, and ``*`` in the resource part spans ``/`` and ``:``. Partition,
service, region and account compare case-insensitively; the resource part case-sensitively.
Policy ARNs with fewer parts (``arn:aws:sqs``) are padded with ``*``.
ARN condition operators match each of the six parts separately and case-sensitively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hatchway.iam.context import Context
from hatchway.iam.variables import Template, parse_template, resolve_segments
from hatchway.iam.wildcard import compile_source, glob_source

_SEG_STAR = "[^:]*"
_SEG_ONE = "[^:]"


def split_arn(text: str) -> list[str]:
    """The six parts of an ARN-like string, padding missing parts with ``*``."""
    parts = text.split(":", 5)
    while len(parts) < 6:
        parts.append("*")
    return parts


def _prefix_source(parts: list[str], ignore_case: bool) -> str:
    segs = [glob_source(p, _SEG_STAR, _SEG_ONE) for p in parts[:5]]
    head = ":".join(segs) + ":"
    return f"(?i:{head})" if ignore_case else head


def _segments_source(segments: list[tuple[str, bool]]) -> str:
    return "".join(re.escape(t) if lit else glob_source(t) for t, lit in segments)


@dataclass(frozen=True, slots=True)
class _Dynamic:
    prefix: str
    template: Template


class ResourceMatcher:
    """Matches a request resource against a statement's ``Resource``/``NotResource`` list."""

    __slots__ = ("_dynamic", "_static", "match_all", "patterns")

    def __init__(self, patterns: tuple[str, ...], variables: bool) -> None:
        self.patterns = patterns
        self.match_all = "*" in patterns
        static: list[str] = []
        dynamic: list[_Dynamic] = []
        for p in patterns:
            if p == "*":
                continue
            if not p.lower().startswith("arn:"):
                # Not an ARN (validators reject these for identity policies): whole-string glob.
                static.append(glob_source(p))
                continue
            parts = split_arn(p)
            template = parse_template(parts[5]) if variables else None
            if template is None:
                static.append(_prefix_source(parts, True) + glob_source(parts[5]))
            else:
                dynamic.append(_Dynamic(_prefix_source(parts, True), template))
        self._static = compile_source("|".join(f"(?:{s})" for s in static)) if static else None
        self._dynamic = tuple(dynamic)

    def matches(self, resource: str, ctx: Context) -> bool:
        if self.match_all:
            return True
        if self._static is not None and self._static.fullmatch(resource):
            return True
        for d in self._dynamic:
            segs = resolve_segments(d.template, ctx)
            if segs is None:
                continue  # a variable with no value: this pattern matches nothing
            if compile_source(d.prefix + _segments_source(segs)).fullmatch(resource):
                return True
        return False


def arn_condition_source(pattern_segments: list[tuple[str, bool]]) -> str:
    """Regex source for an ``ArnLike`` value (already variable-resolved), case-sensitive."""
    text_parts: list[list[tuple[str, bool]]] = [[]]
    # Split the resolved pieces into ARN parts on ':' (only the first five colons count).
    for text, lit in pattern_segments:
        chunks = text.split(":")
        for i, chunk in enumerate(chunks):
            if i > 0:
                if len(text_parts) < 6:
                    text_parts.append([])
                else:
                    text_parts[-1].append((":", True))
            if chunk:
                text_parts[-1].append((chunk, lit))
    while len(text_parts) < 6:
        text_parts.append([("*", False)])
    out: list[str] = []
    for i, segs in enumerate(text_parts):
        if i < 5:
            out.append(
                "".join(
                    re.escape(t) if lit else glob_source(t, _SEG_STAR, _SEG_ONE) for t, lit in segs
                )
            )
        else:
            out.append(_segments_source(segs))
    return ":".join(out)
