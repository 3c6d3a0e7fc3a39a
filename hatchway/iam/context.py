"""Request context: condition keys and their values.

Key names are case-insensitive in IAM (tag keys inside ``aws:PrincipalTag/<k>`` and friends
included), so a context is a plain dict whose keys are lower-cased once, when it is built. A
value is a string (single-valued key) or a tuple of strings (multivalued key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ContextValue = str | tuple[str, ...]
Context = dict[str, ContextValue]


def scalar(value: object) -> str:
    """A policy or context scalar as IAM compares it: JSON booleans become ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def make_context(values: Mapping[str, object] | None = None, /, **extra: object) -> Context:
    """Build a context from a mapping of key -> string, number, bool or list of them."""
    ctx: Context = {}
    for source in (values or {}), extra:
        for key, value in source.items():
            ctx[key.lower()] = _value(value)
    return ctx


def _value(value: object) -> ContextValue:
    if isinstance(value, (list, tuple, set, frozenset)):
        items: Iterable[object] = value
        return tuple(scalar(v) for v in items)
    return scalar(value)
