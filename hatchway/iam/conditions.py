"""Condition operators, compiled once into predicates over the request context.

Semantics (docs/reference/iam-evaluation.md#conditions):

* operators in a block AND, keys under an operator AND, values for one key OR — and NOR for
  negated operators (the request value must match none of them);
* a missing key makes a positive operator false and a negated one true; ``...IfExists`` makes
  any operator true on a missing key; ``Null`` tests presence;
* ``ForAnyValue:`` is false and ``ForAllValues:`` vacuously true on a missing or empty key (an
  empty list, or an empty string); with a negated base operator the NOR applies per request value;
* a plain operator on a multivalued key does not match (AWS leaves it undocumented; we follow
  the reference implementations and never let it grant);
* variables are substituted in String, Arn and Bool operators only, as literal text.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from functools import lru_cache
from typing import Any

from hatchway.iam.arn import ArnCondition
from hatchway.iam.context import Context
from hatchway.iam.variables import Template, parse_template, resolve_segments
from hatchway.iam.wildcard import Glob, compile_pieces, has_wildcard

Pred = Callable[[str], bool]
Segments = tuple[tuple[str, bool], ...]  # resolved value: (text, is_literal) pieces


def _never(_: str) -> bool:
    return False


# --- value parsing -------------------------------------------------------------------------

_EPOCH = re.compile(r"-?\d+(?:\.\d+)?")


def parse_date(text: str) -> float | None:
    """W3C/ISO 8601 date-time or epoch seconds, as a UTC timestamp; None if neither."""
    s = text.strip()
    if _EPOCH.fullmatch(s):
        try:
            return float(s)
        except OverflowError:
            return None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.timestamp()
    except (OverflowError, ValueError):
        return None


def parse_number(text: str) -> Decimal | None:
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _decode_binary(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.encode("utf-8", "surrogatepass")


# --- positive predicates, one builder per operator family ----------------------------------


def _joined(values: Sequence[Segments]) -> list[str]:
    return ["".join(t for t, _ in v) for v in values]


def _string_equals(values: Sequence[Segments]) -> Pred:
    allowed = frozenset(_joined(values))
    return allowed.__contains__


def _string_equals_ic(values: Sequence[Segments]) -> Pred:
    allowed = frozenset(v.lower() for v in _joined(values))
    return lambda r: r.lower() in allowed


def _string_like(values: Sequence[Segments]) -> Pred:
    plain: set[str] = set()
    globs: list[Glob] = []
    for v in values:
        if not any(not lit and has_wildcard(t) for t, lit in v):
            plain.add("".join(t for t, _ in v))
        else:
            globs.append(compile_pieces(tuple(v)))
    frozen = frozenset(plain)
    if not globs:
        return frozen.__contains__
    return lambda r: r in frozen or any(g.match(r) for g in globs)


def _bool(values: Sequence[Segments]) -> Pred:
    allowed = frozenset(v.lower() for v in _joined(values))
    return lambda r: r.lower() in allowed


def _arn_like(values: Sequence[Segments]) -> Pred:
    patterns = [ArnCondition(list(v)) for v in values]
    if not patterns:
        return _never
    return lambda r: any(p.match(r) for p in patterns)


def _compare(parse: Callable[[str], Any], cmp: Callable[[Any, Any], bool]) -> Callable[..., Pred]:
    def build(values: Sequence[Segments]) -> Pred:
        parsed = [p for p in (parse(v) for v in _joined(values)) if p is not None]
        if not parsed:
            return _never

        def pred(r: str) -> bool:
            x = parse(r)
            return x is not None and any(cmp(x, p) for p in parsed)

        return pred

    return build


def _ip(values: Sequence[Segments]) -> Pred:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for v in _joined(values):
        try:
            nets.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            continue

    def pred(r: str) -> bool:
        try:
            addr = ipaddress.ip_address(r.strip())
        except ValueError:
            try:
                net = ipaddress.ip_network(r.strip(), strict=False)
            except ValueError:
                return False
            return any(
                net.version == n.version and net.subnet_of(n)  # type: ignore[arg-type]
                for n in nets
            )
        return any(addr.version == n.version and addr in n for n in nets)

    return pred


def _binary(values: Sequence[Segments]) -> Pred:
    allowed = frozenset(_decode_binary(v) for v in _joined(values))
    return lambda r: _decode_binary(r) in allowed


@dataclass(frozen=True, slots=True)
class BaseOperator:
    name: str
    build: Callable[[Sequence[Segments]], Pred]
    negated: bool = False
    variables: bool = False


def _table() -> dict[str, BaseOperator]:
    ops: list[BaseOperator] = [
        BaseOperator("StringEquals", _string_equals, variables=True),
        BaseOperator("StringNotEquals", _string_equals, True, True),
        BaseOperator("StringEqualsIgnoreCase", _string_equals_ic, variables=True),
        BaseOperator("StringNotEqualsIgnoreCase", _string_equals_ic, True, True),
        BaseOperator("StringLike", _string_like, variables=True),
        BaseOperator("StringNotLike", _string_like, True, True),
        BaseOperator("Bool", _bool, variables=True),
        BaseOperator("BinaryEquals", _binary),
        BaseOperator("IpAddress", _ip),
        BaseOperator("NotIpAddress", _ip, True),
        BaseOperator("ArnEquals", _arn_like, variables=True),
        BaseOperator("ArnLike", _arn_like, variables=True),
        BaseOperator("ArnNotEquals", _arn_like, True, True),
        BaseOperator("ArnNotLike", _arn_like, True, True),
    ]
    comparisons = {
        "Equals": operator.eq,
        "LessThan": operator.lt,
        "LessThanEquals": operator.le,
        "GreaterThan": operator.gt,
        "GreaterThanEquals": operator.ge,
    }
    for family, parse in (("Numeric", parse_number), ("Date", parse_date)):
        for suffix, cmp in comparisons.items():
            ops.append(BaseOperator(family + suffix, _compare(parse, cmp)))
        ops.append(BaseOperator(family + "NotEquals", _compare(parse, operator.eq), True))
    return {op.name.lower(): op for op in ops}


OPERATORS: dict[str, BaseOperator] = _table()


class SetMode(Enum):
    PLAIN = ""
    ANY = "ForAnyValue"
    ALL = "ForAllValues"


@dataclass(frozen=True, slots=True)
class ParsedOperator:
    mode: SetMode
    base: BaseOperator | None  # None for Null
    if_exists: bool


def parse_operator(name: str) -> ParsedOperator | None:
    """Split ``ForAnyValue:StringLikeIfExists`` into its parts; None if unknown."""
    mode = SetMode.PLAIN
    rest = name
    if ":" in name:
        prefix, rest = name.split(":", 1)
        lowered = prefix.lower()
        if lowered == "foranyvalue":
            mode = SetMode.ANY
        elif lowered == "forallvalues":
            mode = SetMode.ALL
        else:
            return None
    low = rest.lower()
    if low == "null":
        return ParsedOperator(mode, None, False)
    if_exists = low.endswith("ifexists")
    if if_exists:
        low = low[: -len("ifexists")]
    base = OPERATORS.get(low)
    if base is None:
        return None
    return ParsedOperator(mode, base, if_exists)


# --- clauses -------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _build_cached(
    build: Callable[[Sequence[Segments]], Pred], values: tuple[Segments, ...]
) -> Pred:
    return build(values)


class Clause:
    """One (operator, key, values) triple of a Condition block."""

    __slots__ = (
        "_pred",
        "_templates",
        "if_exists",
        "key",
        "mode",
        "negated",
        "op",
        "operator",
        "raw_key",
        "values",
    )

    def __init__(self, op_name: str, key: str, values: tuple[str, ...], variables: bool) -> None:
        parsed = parse_operator(op_name)
        if parsed is None:
            raise ValueError(op_name)
        self.operator = op_name
        self.raw_key = key
        self.key = key.lower()
        self.values = values
        self.mode = parsed.mode
        self.op = parsed.base
        self.if_exists = parsed.if_exists
        self.negated = parsed.base.negated if parsed.base else False
        self._templates: tuple[Template | None, ...] | None = None
        self._pred: Pred = _never
        if parsed.base is None:
            return
        templates = (
            tuple(parse_template(v) for v in values)
            if variables and parsed.base.variables
            else tuple(None for _ in values)
        )
        if any(t is not None for t in templates):
            self._templates = templates
        else:
            self._pred = parsed.base.build(tuple(((v, False),) for v in values))

    def _predicate(self, ctx: Context) -> Pred:
        if self._templates is None:
            return self._pred
        resolved: list[Segments] = []
        for raw, t in zip(self.values, self._templates, strict=True):
            if t is None:
                resolved.append(((raw, False),))
                continue
            segs = resolve_segments(t, ctx)
            if segs is not None:  # a value whose variable is missing matches nothing
                resolved.append(tuple(segs))
        assert self.op is not None
        return _build_cached(self.op.build, tuple(resolved))

    def test(self, ctx: Context) -> bool:
        """Does this clause hold for the request?"""
        value = ctx.get(self.key)
        if self.op is None:  # Null
            absent = value is None or value == ()
            return any(
                (v.lower() == "true") == absent
                for v in self.values
                if v.lower() in ("true", "false")
            )
        if self.mode is SetMode.PLAIN:
            if value is None or value == ():
                return self.if_exists or self.negated
            if not isinstance(value, str):
                return False  # plain operator on a multivalued key never matches
            return self._predicate(ctx)(value) != self.negated
        items = (value,) if isinstance(value, str) else (value or ())
        if not items or items == ("",):
            return self.if_exists or self.mode is SetMode.ALL
        pred = self._predicate(ctx)
        if self.mode is SetMode.ANY:
            return any(pred(v) != self.negated for v in items)
        return all(pred(v) != self.negated for v in items)

    def describe(self) -> dict[str, object]:
        return {"operator": self.operator, "key": self.raw_key, "values": list(self.values)}


class ConditionBlock:
    """All clauses of one statement's Condition element (AND)."""

    __slots__ = ("clauses",)

    def __init__(self, clauses: list[Clause]) -> None:
        self.clauses = tuple(clauses)

    def test(self, ctx: Context) -> bool:
        return all(c.test(ctx) for c in self.clauses)

    def first_failure(self, ctx: Context) -> Clause | None:
        for c in self.clauses:
            if not c.test(ctx):
                return c
        return None
