"""ARN matching for the ``Resource`` element and the ``Arn*`` condition operators.

An ARN has six colon-delimited parts: ``arn:partition:service:region:account:resource``; the
resource part may itself contain ``:`` and ``/``. In ``Resource``, wildcards in the first five
parts stay inside their part, and ``*`` in the resource part spans ``/`` and ``:``. Partition,
service, region and account compare case-insensitively; the resource part case-sensitively.
Policy ARNs with fewer parts (``arn:aws:sqs``) are padded with ``*``.
ARN condition operators match each of the six parts separately and case-sensitively.
Each part is matched by :mod:`hatchway.iam.wildcard` (linear time, no regular expressions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hatchway.iam.context import Context
from hatchway.iam.variables import Template, parse_template, resolve_segments
from hatchway.iam.wildcard import Glob, compile_glob, compile_pieces, fold, has_wildcard

# One ARN part of a pattern: None matches any part, a string one exact part, a Glob the rest.
_Part = Glob | str | None


def split_arn(text: str) -> list[str]:
    """The six parts of an ARN-like string, padding missing parts with ``*``."""
    parts = text.split(":", 5)
    while len(parts) < 6:
        parts.append("*")
    return parts


@lru_cache(maxsize=4096)
def _request_arn(resource: str) -> tuple[tuple[str, ...], str] | None:
    """A request ARN's first five parts (lower-cased) and its resource part; None if it has
    fewer than six parts (then no ARN pattern matches it)."""
    parts = resource.split(":", 5)
    if len(parts) < 6:
        return None
    return tuple(fold(p) for p in parts[:5]), parts[5]


def _part(pattern: str, ignore_case: bool) -> _Part:
    if pattern == "*":
        return None
    if not has_wildcard(pattern):
        return fold(pattern) if ignore_case else pattern
    return compile_glob(pattern, ignore_case)


def _part_matches(part: _Part, text: str) -> bool:
    if part is None:
        return True
    if part.__class__ is str:
        return part == text
    return part.match(text)  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class _Pattern:
    """An ARN pattern of a Resource element: five case-insensitive parts, then the resource."""

    prefix: tuple[_Part, ...]
    resource: _Part
    template: Template | None  # the resource part, when it holds policy variables

    def prefix_matches(self, head: tuple[str, ...]) -> bool:
        return all(_part_matches(p, t) for p, t in zip(self.prefix, head, strict=True))


_MEMO = 16


class ResourceMatcher:
    """Matches a request resource against a statement's ``Resource``/``NotResource`` list.

    The first five parts of a request ARN take few values (partition, service, region,
    account), so which patterns they admit is remembered per matcher; a request then costs a
    dictionary look-up and one resource-part test per admitted pattern. Without policy
    variables the answer depends on the resource alone and is remembered too (a few entries
    per statement, forgotten all at once when full).
    """

    __slots__ = ("_arns", "_by_head", "_memo", "_plain", "_static", "match_all", "patterns")

    def __init__(self, patterns: tuple[str, ...], variables: bool) -> None:
        self.patterns = patterns
        self.match_all = "*" in patterns
        plain: list[_Part] = []
        arns: list[_Pattern] = []
        for p in patterns:
            if p == "*":
                continue
            if not p.lower().startswith("arn:"):
                # Not an ARN (validators reject these for identity policies): whole-string glob.
                plain.append(_part(p, False))
                continue
            parts = split_arn(p)
            prefix = tuple(_part(x, True) for x in parts[:5])
            template = parse_template(parts[5]) if variables else None
            arns.append(_Pattern(prefix, _part(parts[5], False), template))
        self._plain = tuple(plain)
        self._arns = tuple(arns)
        self._static = all(a.template is None for a in arns)
        self._by_head: dict[tuple[str, ...], tuple[_Pattern, ...]] = {}
        self._memo: dict[str, bool] = {}

    def _admitted(self, head: tuple[str, ...]) -> tuple[_Pattern, ...]:
        found = self._by_head.get(head)
        if found is None:
            found = tuple(a for a in self._arns if a.prefix_matches(head))
            if len(self._by_head) >= _MEMO:
                self._by_head.clear()
            self._by_head[head] = found
        return found

    def matches(self, resource: str, ctx: Context) -> bool:
        if self.match_all:
            return True
        if not self._static:
            return self._decide(resource, ctx)
        hit = self._memo.get(resource)
        if hit is None:
            hit = self._decide(resource, ctx)
            if len(self._memo) >= _MEMO:
                self._memo.clear()
            self._memo[resource] = hit
        return hit

    def _decide(self, resource: str, ctx: Context) -> bool:
        for p in self._plain:
            if _part_matches(p, resource):
                return True
        if not self._arns:
            return False
        split = _request_arn(resource)
        if split is None:
            return False
        rest = split[1]
        for a in self._admitted(split[0]):
            if a.template is None:
                if _part_matches(a.resource, rest):
                    return True
                continue
            segs = resolve_segments(a.template, ctx)
            if segs is None:
                continue  # a variable with no value: this pattern matches nothing
            if compile_pieces(tuple(segs)).match(rest):
                return True
        return False


class ArnCondition:
    """An ``Arn*`` condition value (already variable-resolved): six parts, case-sensitive,
    each matched on its own (wildcards never cross a ``:`` of the first five)."""

    __slots__ = ("parts",)

    def __init__(self, pattern_segments: list[tuple[str, bool]]) -> None:
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
        self.parts = tuple(compile_pieces(tuple(segs)) for segs in text_parts)

    def match(self, value: str) -> bool:
        parts = value.split(":", 5)
        if len(parts) < 6:
            return False
        return all(g.match(t) for g, t in zip(self.parts, parts, strict=True))
