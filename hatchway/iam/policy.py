"""Policy documents compiled to matchers: parse once, decide many times.

``parse_policy`` = load JSON → validate (AWS's messages) → compile. ``compile_policy`` trusts a
validated document; it never does pattern work per request: actions become a lower-cased set
plus compiled wildcard patterns (``hatchway.iam.wildcard``: linear time, no regex),
resources ARN patterns (or templates when they hold variables), conditions predicates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hatchway.iam.arn import ResourceMatcher
from hatchway.iam.conditions import Clause, ConditionBlock
from hatchway.iam.context import Context, scalar
from hatchway.iam.kinds import PolicyKind
from hatchway.iam.principal import Principal
from hatchway.iam.validate import validate_document, validate_policy_text
from hatchway.iam.wildcard import GlobSet

VERSION_2012 = "2012-10-17"

# How a resource-policy statement named the caller (strongest first): "direct" (the caller's
# own user / session ARN, or "*"), "role" (the role behind a session), "account" (delegation).
PrincipalMatch = str


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(scalar(v) for v in value)
    return (scalar(value),)


class PrincipalMatcher:
    """A ``Principal``/``NotPrincipal`` element."""

    __slots__ = ("everyone", "names")

    def __init__(self, block: Any) -> None:
        self.names: set[str] = set()
        self.everyone = False
        entries: list[str] = []
        if block == "*":
            self.everyone = True
        elif isinstance(block, Mapping):
            for kind, values in block.items():
                for v in _strings(values):
                    if v == "*" and kind == "AWS":
                        self.everyone = True
                    elif kind == "AWS" and re.fullmatch(r"\d{12}", v):
                        entries.append(f"arn:aws:iam::{v}:root")
                    else:
                        entries.append(v)
        self.names.update(entries)

    def match(self, p: Principal) -> PrincipalMatch | None:
        if self.everyone or p.arn in self.names:
            return "direct"
        if p.role_arn is not None and p.role_arn in self.names:
            return "role"
        if p.root_arn is not None and p.root_arn in self.names:
            return "account"
        return None

    def lists_whole_chain(self, p: Principal) -> bool:
        """NotPrincipal excludes a caller only if its account, role and own ARN are all listed."""
        if self.everyone:
            return True
        chain = p.identities()
        return bool(chain) and all(i in self.names for i in chain)


class Statement:
    """One compiled statement."""

    __slots__ = (
        "_action_set",
        "actions",
        "allow",
        "conditions",
        "index",
        "not_action",
        "not_principal",
        "not_resource",
        "policy",
        "principal",
        "raw",
        "resources",
        "sid",
    )

    def __init__(self, policy: Policy, index: int, raw: Mapping[str, Any], variables: bool) -> None:
        self.policy = policy
        self.index = index
        self.raw = raw
        sid = raw.get("Sid")
        self.sid: str | None = sid if isinstance(sid, str) else None
        self.allow = raw.get("Effect") == "Allow"
        self.not_action = "NotAction" in raw
        self.actions = tuple(
            a.lower() for a in _strings(raw.get("NotAction", raw.get("Action", [])))
        )
        self._action_set = GlobSet(self.actions)
        self.not_resource = "NotResource" in raw
        res = raw.get("NotResource", raw.get("Resource"))
        self.resources = ResourceMatcher(_strings(res), variables) if res is not None else None
        self.not_principal = "NotPrincipal" in raw
        pblock = raw.get("NotPrincipal", raw.get("Principal"))
        self.principal = PrincipalMatcher(pblock) if pblock is not None else None
        cond = raw.get("Condition")
        clauses: list[Clause] = []
        if isinstance(cond, Mapping):
            for op_name, keys in cond.items():
                if not isinstance(keys, Mapping):
                    continue
                for key, values in keys.items():
                    clauses.append(Clause(op_name, key, _strings(values), variables))
        self.conditions = ConditionBlock(clauses) if clauses else None

    # -- the four tests of "does this statement apply"
    # (docs/reference/iam-evaluation.md#when-a-statement-applies) --

    def names_action(self, action: str) -> bool:
        """Does Action (NotAction) list ``action`` (lower-cased)?"""
        return self._action_set.match(action)

    def matches_action(self, action: str) -> bool:
        return self.names_action(action) != self.not_action

    def matches_resource(self, resource: str, ctx: Context) -> bool:
        if self.resources is None:
            return True  # trust policies have no Resource element
        return self.resources.matches(resource, ctx) != self.not_resource

    def principal_match(self, p: Principal | None) -> PrincipalMatch | None:
        """How this statement's Principal names ``p`` (None: it does not apply)."""
        if self.principal is None:
            return "direct"
        if p is None:
            p = Principal.anonymous()
        if self.not_principal:
            return None if self.principal.lists_whole_chain(p) else "direct"
        return self.principal.match(p)

    def matches_conditions(self, ctx: Context) -> bool:
        return self.conditions is None or self.conditions.test(ctx)

    def ref(self) -> dict[str, object]:
        """A JSON-ready reference for explanations."""
        out: dict[str, object] = {
            "policyType": self.policy.kind.value,
            "policyId": self.policy.label,
            "statementIndex": self.index,
            "effect": "Allow" if self.allow else "Deny",
        }
        if self.sid:
            out["sid"] = self.sid
        return out

    def __repr__(self) -> str:
        return f"<Statement {self.policy.label}#{self.index} {self.sid or ''}>"


class Policy:
    """A compiled policy document."""

    __slots__ = ("arn", "document", "kind", "name", "statements", "version")

    def __init__(
        self,
        document: Mapping[str, Any],
        kind: PolicyKind = PolicyKind.IDENTITY,
        *,
        name: str | None = None,
        arn: str | None = None,
    ) -> None:
        self.document = document
        self.kind = kind
        self.name = name
        self.arn = arn
        version = document.get("Version")
        self.version = version if isinstance(version, str) else None
        variables = self.version == VERSION_2012
        stmts = document.get("Statement", [])
        if isinstance(stmts, Mapping):
            stmts = [stmts]
        self.statements = tuple(
            Statement(self, i, s, variables) for i, s in enumerate(stmts) if isinstance(s, Mapping)
        )

    @property
    def label(self) -> str:
        return self.arn or self.name or f"{self.kind.value}-policy"

    def __repr__(self) -> str:
        return f"<Policy {self.label} ({len(self.statements)} statements)>"


def compile_policy(
    document: Mapping[str, Any],
    kind: PolicyKind = PolicyKind.IDENTITY,
    *,
    name: str | None = None,
    arn: str | None = None,
) -> Policy:
    """Compile an already validated document."""
    return Policy(document, kind, name=name, arn=arn)


def parse_policy(
    text: str | Mapping[str, Any],
    kind: PolicyKind = PolicyKind.IDENTITY,
    *,
    name: str | None = None,
    arn: str | None = None,
    managed: bool = False,
    size_limit: int | None = None,
) -> Policy:
    """Load, validate and compile a policy; raises MalformedPolicyDocument / LimitExceeded."""
    if isinstance(text, str):
        doc: Mapping[str, Any] = validate_policy_text(
            text, kind, managed=managed, size_limit=size_limit
        )
    else:
        validate_document(text, kind, managed=managed)
        doc = text
    return compile_policy(doc, kind, name=name, arn=arn)
