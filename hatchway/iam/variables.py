"""Policy variables: ``${aws:username}``, ``${aws:PrincipalTag/team, 'default'}``, ``${*}``.

A string that may hold variables is parsed once into a template of parts. At request time the
template resolves against the context; substituted values are *literal* text (a user called
``a*`` does not become a wildcard), so resolution keeps track of which text came from the policy
(pattern text) and which from a value (literal text). A variable whose key is missing and has no
default makes the whole string unresolvable: the caller then treats it as matching nothing.
Variables are only recognised under ``"Version": "2012-10-17"``; the caller decides that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hatchway.iam.context import Context

_VAR = re.compile(r"\$\{([^{}]*)\}")
_KEY_DEFAULT = re.compile(r"^\s*([^\s,'{}$]+)\s*(?:,\s*'([^']*)'\s*)?$")
_SPECIAL = {"*": "*", "?": "?", "$": "$"}


@dataclass(frozen=True, slots=True)
class Var:
    """A variable reference; ``key`` is lower-cased (key names are case-insensitive)."""

    key: str
    default: str | None = None


@dataclass(frozen=True, slots=True)
class Lit:
    """Literal text that must not act as a wildcard (``${*}`` and friends)."""

    text: str


Part = str | Var | Lit
Template = tuple[Part, ...]


def parse_template(text: str) -> Template | None:
    """Parts of ``text``, or None when it holds no variable (the common, fast case)."""
    if "${" not in text:
        return None
    parts: list[Part] = []
    pos = 0
    found = False
    for m in _VAR.finditer(text):
        inner = m.group(1)
        if inner in _SPECIAL:
            part: Part = Lit(_SPECIAL[inner])
        else:
            kd = _KEY_DEFAULT.match(inner)
            if kd is None:
                continue  # not a variable: stays literal pattern text
            part = Var(kd.group(1).lower(), kd.group(2))
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(part)
        pos = m.end()
        found = True
    if not found:
        return None
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def lookup(var: Var, ctx: Context) -> str | None:
    """A variable's value: a single-valued key's string, else its default, else None."""
    value = ctx.get(var.key)
    if isinstance(value, str):
        return value
    return var.default


def resolve_segments(template: Template, ctx: Context) -> list[tuple[str, bool]] | None:
    """``(text, is_literal)`` pieces after substitution, or None if a variable has no value."""
    out: list[tuple[str, bool]] = []
    for part in template:
        if isinstance(part, str):
            out.append((part, False))
        elif isinstance(part, Lit):
            out.append((part.text, True))
        else:
            value = lookup(part, ctx)
            if value is None:
                return None
            out.append((value, True))
    return out
