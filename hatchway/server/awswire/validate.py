"""Input validation driven by botocore's models, with AWS's own error texts.

``validate_input`` checks a parsed request against its operation's input shape, recursively:
required members, Python types, length bounds (strings, blobs, lists, maps), value bounds
(numbers), enums and patterns. All failures are collected and reported in one
:class:`ServiceError`, worded as AWS words them::

    2 validation errors detected: Value null at 'target' failed to satisfy constraint:
    Member must not be null; Value 'x…' at 'reason' failed to satisfy constraint:
    Member must have length less than or equal to 256

Paths name members with their first letter lower-cased, joined by dots; an element of a
list of structures is ``name.N.member`` (1-based), e.g. ``tags.1.member.key``. Failing
scalar elements of a list, and failing keys or scalar values of a map, are reported once
at the collection's path, listing the element shape's constraints, as AWS does::

    Value '[i-1, x]' at 'instanceIds' failed to satisfy constraint: Member must satisfy
    constraint: [Member must have length less than or equal to 19, ...]
    Value '{k=v}' at 'parameters' failed to satisfy constraint: Map keys must satisfy
    constraint: [...]

Patterns in the models are Java regular expressions; they are translated to Python's
dialect (``\\p{L}``, ``\\uXXXX`` beyond the BMP, ``\\Q…\\E``, a literal ``-`` after a
class escape, ``(?<name>``) and matched against the whole value. A pattern that cannot be
translated is skipped (logged once), never fatal.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import sys
import threading
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from botocore.model import OperationModel

from hatchway.server.awswire.models import ShapeInfo, input_info
from hatchway.server.base.errors import ServiceError

__all__ = [
    "compile_pattern",
    "render_value",
    "translate_pattern",
    "validate_input",
    "validate_shape",
    "validation_message",
]

log = logging.getLogger(__name__)

SCALARS = frozenset(
    {"string", "integer", "long", "boolean", "float", "double", "timestamp", "blob"}
)


# --------------------------------------------------------------------------- Java patterns


class _Untranslatable(Exception):
    pass


_unicode_lock = threading.Lock()
_unicode_ranges: dict[str, list[tuple[int, int]]] | None = None

# Java's POSIX classes (US-ASCII only unless UNICODE_CHARACTER_CLASS, which AWS does not use).
_POSIX: dict[str, str] = {
    "Lower": "a-z",
    "Upper": "A-Z",
    "ASCII": "\\x00-\\x7F",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Alnum": "a-zA-Z0-9",
    "Punct": "!-/:-@\\[-`{-~",
    "Graph": "!-~",
    "Print": " -~",
    "Blank": " \\t",
    "Cntrl": "\\x00-\\x1F\\x7F",
    "XDigit": "0-9a-fA-F",
    "Space": " \\t\\n\\x0B\\f\\r",
}


def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """Code point ranges per Unicode general category (built once, ~0.2 s, on first use)."""
    global _unicode_ranges
    with _unicode_lock:
        if _unicode_ranges is None:
            ranges: dict[str, list[tuple[int, int]]] = {}
            category = unicodedata.category
            prev = category("\x00")
            start = 0
            for cp in range(1, sys.maxunicode + 1):
                cat = category(chr(cp))
                if cat != prev:
                    ranges.setdefault(prev, []).append((start, cp - 1))
                    prev, start = cat, cp
            ranges.setdefault(prev, []).append((start, sys.maxunicode))
            _unicode_ranges = ranges
        return _unicode_ranges


def _class_body_for(name: str) -> str:
    """The body of a character class (no brackets) for Java's ``\\p{name}``."""
    if name in _POSIX:
        return _POSIX[name]
    if name.startswith("Is") and len(name) in (3, 4):
        name = name[2:]
    if name.startswith("general_category="):
        name = name.split("=", 1)[1]
    if not (1 <= len(name) <= 2) or not name[0].isupper():
        raise _Untranslatable(f"\\p{{{name}}}")
    table = _category_ranges()
    cats = [c for c in table if c.startswith(name)] if len(name) == 1 else [name]
    if not cats or not all(c in table for c in cats):
        raise _Untranslatable(f"\\p{{{name}}}")
    spans = sorted(span for c in cats for span in table[c])
    return "".join(f"\\U{lo:08X}" if lo == hi else f"\\U{lo:08X}-\\U{hi:08X}" for lo, hi in spans)


_CLASS_ESCAPES = frozenset("wWdDsS")
_HEX = frozenset("0123456789abcdefABCDEF")


def _read_property(pattern: str, i: int) -> tuple[str, int]:
    """Read the name after ``\\p`` at ``pattern[i]``; return it and the index after it."""
    if i < len(pattern) and pattern[i] == "{":
        end = pattern.find("}", i)
        if end < 0:
            raise _Untranslatable("unterminated \\p{")
        return pattern[i + 1 : end], end + 1
    if i < len(pattern):
        return pattern[i], i + 1
    raise _Untranslatable("dangling \\p")


def _unicode_escape(pattern: str, i: int) -> tuple[str, int]:
    """Translate ``\\u`` at ``pattern[i-2:i]``; 5 or 6 hex digits name a code point ≥ U+10000.

    Java reads exactly four digits, but the models' authors write ``\\u10000-\\u10FFFF``
    meaning the supplementary planes, so that is how such runs are read.
    """
    j = i
    while j < len(pattern) and j - i < 6 and pattern[j] in _HEX:
        j += 1
    digits = pattern[i:j]
    if len(digits) in (5, 6) and 0x10000 <= int(digits, 16) <= 0x10FFFF:
        return f"\\U{int(digits, 16):08X}", j
    if len(digits) < 4:
        raise _Untranslatable("short \\u escape")
    return f"\\u{digits[:4]}", i + 4


def translate_pattern(pattern: str) -> str:
    """Translate a Java regular expression from a botocore model into Python's dialect.

    Raises ``ValueError`` for constructs with no faithful translation (class intersections,
    nested classes, mid-pattern global flags, unknown ``\\p`` properties).
    """
    try:
        return _translate(pattern)
    except _Untranslatable as exc:
        raise ValueError(str(exc)) from None


def _translate(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    class_start = False  # just after '[' or '[^'
    after_class_escape = False  # inside a class, the previous item was \w, \p{..}, ...
    while i < n:
        ch = pattern[i]
        prev_class_escape, after_class_escape = after_class_escape, False
        if ch == "\\":
            if i + 1 >= n:
                raise _Untranslatable("trailing backslash")
            nxt = pattern[i + 1]
            i += 2
            if nxt in "pP":
                name, i = _read_property(pattern, i)
                body = _class_body_for(name)
                if in_class:
                    if nxt == "P":
                        raise _Untranslatable("\\P inside a class")
                    out.append(body)
                    after_class_escape = True
                else:
                    out.append(f"[{'^' if nxt == 'P' else ''}{body}]")
            elif nxt == "u":
                text, i = _unicode_escape(pattern, i)
                out.append(text)
            elif nxt == "x" and i < n and pattern[i] == "{":
                end = pattern.find("}", i)
                if end < 0:
                    raise _Untranslatable("unterminated \\x{")
                out.append(f"\\U{int(pattern[i + 1 : end], 16):08X}")
                i = end + 1
            elif nxt == "Q":
                end = pattern.find("\\E", i)
                literal = pattern[i:] if end < 0 else pattern[i:end]
                out.append(re.escape(literal))
                i = n if end < 0 else end + 2
            elif nxt == "z":
                out.append("\\Z")
            elif nxt == "Z":
                out.append("(?=\\n?\\Z)")
            elif nxt in "hHRXGkK" or nxt == "E":
                raise _Untranslatable(f"\\{nxt}")
            else:
                out.append("\\" + nxt)
                after_class_escape = in_class and nxt in _CLASS_ESCAPES
            class_start = False
            continue
        if in_class:
            if ch == "]" and not class_start:
                in_class = False
                out.append("]")
            elif ch == "[":
                raise _Untranslatable("nested character class")
            elif ch == "&" and pattern.startswith("&&", i):
                raise _Untranslatable("class intersection")
            elif ch == "-" and prev_class_escape and i + 1 < n and pattern[i + 1] != "]":
                out.append("\\-")
            elif ch in "&~|":
                out.append("\\" + ch)
            elif ch == "^" and class_start and out[-1] == "[":
                out.append("^")
                i += 1
                continue
            else:
                out.append(ch)
            class_start = False
            i += 1
            continue
        if ch == "[":
            in_class = True
            class_start = True
            out.append("[")
        elif (
            ch == "(" and pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!")
        ):
            out.append("(?P<")
            i += 3
            continue
        elif ch == "(" and pattern.startswith("(?", i) and i > 0:
            end = pattern.find(")", i)
            flags = pattern[i + 2 : end] if end > 0 else ""
            if flags and all(c in "imsxuU-" for c in flags):
                raise _Untranslatable("global flags not at the start")
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    if in_class:
        raise _Untranslatable("unterminated character class")
    return "".join(out)


_pattern_cache: dict[str, re.Pattern[str] | None] = {}
_pattern_lock = threading.Lock()


def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """Compile a model's Java pattern for Python (cached); ``None`` if it cannot be used.

    Java's ``\\w``, ``\\d``, ``\\s`` and case folding are ASCII-only, hence ``re.ASCII``.
    An unusable pattern is logged once and then skipped by the validator.
    """
    try:
        return _pattern_cache[pattern]
    except KeyError:
        pass
    with _pattern_lock:
        if pattern in _pattern_cache:
            return _pattern_cache[pattern]
        compiled: re.Pattern[str] | None
        try:
            compiled = re.compile(_translate(pattern), re.ASCII)
        except (_Untranslatable, re.error, ValueError, OverflowError) as exc:
            log.warning("skipping model pattern %r: %s", pattern, exc)
            compiled = None
        _pattern_cache[pattern] = compiled
        return compiled


# --------------------------------------------------------------------------- rendering


def _java_number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _render_inner(value: object) -> str:
    """Java's ``toString`` of a value, as AWS prints it inside ``Value '…'``."""
    renderer = _RENDERERS.get(type(value))
    if renderer is not None:
        return renderer(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{_render_inner(k)}={_render_inner(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render_inner(v) for v in value) + "]"
    if isinstance(value, bytes | bytearray | memoryview):
        size = len(bytes(value))
        return f"java.nio.HeapByteBuffer[pos=0 lim={size} cap={size}]"
    if isinstance(value, _dt.datetime):
        utc = value.astimezone(_dt.UTC) if value.tzinfo else value
        return utc.strftime("%a %b %d %H:%M:%S UTC %Y")
    return str(value)


_RENDERERS: dict[type, Callable[[Any], str]] = {
    str: lambda v: v,
    bool: lambda v: "true" if v else "false",
    int: str,
    float: _java_number,
    type(None): lambda _v: "null",
}


def render_value(value: object, *, sensitive: bool = False) -> str:
    """AWS's rendering of a value in a validation message: ``Value 'abc'``, ``Value null``.

    Values of sensitive members are not echoed (``Value at 'password' …``), as AWS does.
    """
    if sensitive:
        return "Value"
    if value is None:
        return "Value null"
    return f"Value '{_render_inner(value)}'"


def validation_message(errors: list[str]) -> str:
    """Join single-error texts into AWS's ``N validation error(s) detected: …`` message."""
    count = len(errors)
    noun = "error" if count == 1 else "errors"
    return f"{count} validation {noun} detected: " + "; ".join(errors)


# --------------------------------------------------------------------------- checks


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_TYPE_OK: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "character": lambda v: isinstance(v, str),
    "integer": _is_int,
    "long": _is_int,
    "byte": _is_int,
    "short": _is_int,
    "float": _is_number,
    "double": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "timestamp": lambda v: isinstance(v, _dt.datetime),
    "blob": lambda v: isinstance(v, bytes | bytearray | memoryview),
    "list": lambda v: isinstance(v, list | tuple),
    "map": lambda v: isinstance(v, Mapping),
    "structure": lambda v: isinstance(v, Mapping),
}

_LENGTH_TYPES = frozenset({"string", "blob", "list", "map"})
_VALUE_TYPES = frozenset({"integer", "long", "byte", "short", "float", "double"})


def _length(value: Any) -> int:
    return len(bytes(value)) if isinstance(value, memoryview) else len(value)


Check = Callable[[Any], bool]


def _max_length(bound: float) -> Check:
    return lambda v: _length(v) <= bound


def _min_length(bound: float) -> Check:
    return lambda v: _length(v) >= bound


def _max_value(bound: float) -> Check:
    return lambda v: bool(v <= bound)


def _min_value(bound: float) -> Check:
    return lambda v: bool(v >= bound)


def _matches(regex: re.Pattern[str]) -> Check:
    return lambda v: regex.fullmatch(v) is not None


def _one_of(allowed: frozenset[str]) -> Check:
    return lambda v: v in allowed


_NOT_NULL = "Member must not be null"


class _Checks:
    """Precomputed constraint checks for one shape: ``(test, text)`` pairs in AWS's order."""

    __slots__ = ("all_texts", "checks")

    def __init__(self, info: ShapeInfo) -> None:
        checks: list[tuple[Check, str]] = []
        lo, hi = info.min, info.max
        if info.type in _LENGTH_TYPES:
            if hi is not None:
                text = f"Member must have length less than or equal to {_java_number(hi)}"
                checks.append((_max_length(hi), text))
            if lo is not None and lo > 0:
                text = f"Member must have length greater than or equal to {_java_number(lo)}"
                checks.append((_min_length(lo), text))
        elif info.type in _VALUE_TYPES:
            if hi is not None:
                text = f"Member must have value less than or equal to {_java_number(hi)}"
                checks.append((_max_value(hi), text))
            if lo is not None:
                text = f"Member must have value greater than or equal to {_java_number(lo)}"
                checks.append((_min_value(lo), text))
        if info.type == "string" and info.pattern is not None:
            regex = compile_pattern(info.pattern)
            if regex is not None:
                text = f"Member must satisfy regular expression pattern: {info.pattern}"
                checks.append((_matches(regex), text))
        if info.type == "string" and info.enum:
            text = f"Member must satisfy enum value set: [{', '.join(info.enum)}]"
            checks.append((_one_of(frozenset(info.enum)), text))
        self.checks: tuple[tuple[Check, str], ...] = tuple(checks)
        self.all_texts: tuple[str, ...] = tuple(text for _, text in checks)


_checks_cache: dict[int, tuple[ShapeInfo, _Checks]] = {}
_checks_lock = threading.Lock()


def _checks_for(info: ShapeInfo) -> _Checks:
    hit = _checks_cache.get(id(info))
    if hit is not None:
        return hit[1]
    with _checks_lock:
        hit = _checks_cache.get(id(info))
        if hit is None:
            # the ShapeInfo is kept alive by the entry, so its id() cannot be reused
            hit = (info, _Checks(info))
            _checks_cache[id(info)] = hit
        return hit[1]


def _type_text(info: ShapeInfo) -> str:
    return f"Member must be of type {info.type}"


def _element_texts(info: ShapeInfo) -> list[str]:
    """All constraint texts of a list element / map key or value shape, for ``[…]`` lists."""
    texts = list(_checks_for(info).all_texts)
    inner = info.member if info.type == "list" else info.value if info.type == "map" else None
    if inner is not None and inner.type != "structure":
        nested = _element_texts(inner)
        if nested:
            texts.append(f"Member must satisfy constraint: [{', '.join(nested)}]")
    return texts


def _conforms(info: ShapeInfo, value: object) -> bool:
    """Whether a non-structure value satisfies its shape (used for collection elements)."""
    if value is None:
        return False
    type_ok = _TYPE_OK.get(info.type)
    if type_ok is not None and not type_ok(value):
        return False
    if not all(test(value) for test, _ in _checks_for(info).checks):
        return False
    if info.type == "list" and info.member is not None:
        assert isinstance(value, list | tuple)
        return all(_conforms(info.member, v) for v in value)
    if info.type == "map" and info.key is not None and info.value is not None:
        assert isinstance(value, Mapping)
        return all(_conforms(info.key, k) and _conforms(info.value, v) for k, v in value.items())
    return True


def _err(info: ShapeInfo, value: object, path: str, text: str, *, hide: bool = False) -> str:
    shown = render_value(value, sensitive=hide or info.sensitive)
    return f"{shown} at '{path}' failed to satisfy constraint: {text}"


def _check(info: ShapeInfo, value: object, path: str, errors: list[str]) -> None:
    type_ok = _TYPE_OK.get(info.type)
    if type_ok is not None and not type_ok(value):
        errors.append(_err(info, value, path, _type_text(info)))
        return
    for test, text in _checks_for(info).checks:
        if not test(value):
            errors.append(_err(info, value, path, text))
    walker = _WALKERS.get(info.type)
    if walker is not None:
        walker(info, value, path, errors)


def _walk_structure(info: ShapeInfo, value: Any, path: str, errors: list[str]) -> None:
    if info.document:
        return
    required = info.required
    prefix = f"{path}." if path else ""
    for member in info.members:
        child = value.get(member.name)
        if child is None:
            if member.name in required:
                where = prefix + member.path
                errors.append(f"Value null at '{where}' failed to satisfy constraint: {_NOT_NULL}")
            continue
        _check(member.info, child, prefix + member.path, errors)


def _walk_list(info: ShapeInfo, value: Any, path: str, errors: list[str]) -> None:
    element = info.member
    if element is None:
        return
    if element.type == "structure":
        for index, item in enumerate(value, 1):
            item_path = f"{path}.{index}.member"
            if item is None:
                errors.append(
                    f"Value null at '{item_path}' failed to satisfy constraint: {_NOT_NULL}"
                )
            else:
                _check(element, item, item_path, errors)
        return
    if not all(_conforms(element, item) for item in value):
        texts = _element_texts(element) or [_NOT_NULL]
        errors.append(
            _err(
                info,
                value,
                path,
                f"Member must satisfy constraint: [{', '.join(texts)}]",
                hide=element.sensitive,
            )
        )


def _walk_map(info: ShapeInfo, value: Any, path: str, errors: list[str]) -> None:
    key_info, value_info = info.key, info.value
    if key_info is None or value_info is None:
        return
    if not all(_conforms(key_info, k) for k in value):
        texts = _element_texts(key_info) or [_NOT_NULL]
        text = f"Map keys must satisfy constraint: [{', '.join(texts)}]"
        hide = key_info.sensitive or value_info.sensitive
        errors.append(_err(info, value, path, text, hide=hide))
    if value_info.type == "structure":
        for key, item in value.items():
            if item is not None:
                _check(value_info, item, f"{path}.{key}", errors)
        return
    if not all(_conforms(value_info, v) for v in value.values()):
        texts = _element_texts(value_info) or [_NOT_NULL]
        text = f"Map value must satisfy constraint: [{', '.join(texts)}]"
        hide = key_info.sensitive or value_info.sensitive
        errors.append(_err(info, value, path, text, hide=hide))


_WALKERS: dict[str, Callable[[ShapeInfo, Any, str, list[str]], None]] = {
    "structure": _walk_structure,
    "list": _walk_list,
    "map": _walk_map,
}


def validate_shape(info: ShapeInfo, value: object, path: str = "") -> list[str]:
    """Check ``value`` against ``info``; return AWS's single-error texts (empty when valid)."""
    errors: list[str] = []
    if value is not None:
        _check(info, value, path, errors)
    return errors


def validate_input(
    op: OperationModel, params: Mapping[str, object], *, code: str = "ValidationException"
) -> None:
    """Validate parsed input ``params`` of ``op`` against its model; raise on any violation.

    Raises :class:`ServiceError` with ``code`` (``"ValidationError"`` for IAM and STS) and
    AWS's message listing every violation. Unknown members are ignored, as AWS does.
    """
    info = input_info(op)
    if info is None:
        return
    errors = validate_shape(info, params)
    if errors:
        raise ServiceError(code, validation_message(errors))
