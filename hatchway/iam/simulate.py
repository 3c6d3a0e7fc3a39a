"""``SimulateCustomPolicy``: AWS's policy simulator request and response shapes, offline.

Shared by ``hatchway policy simulate`` and the broker's IAM API. Results come one per
(action, resource) pair with ``EvalDecision``, ``MatchedStatements`` (with the statement's start
and end position in the policy text, as AWS reports them) and ``MissingContextValues``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hatchway.iam.context import Context
from hatchway.iam.evaluate import PolicySet, Request
from hatchway.iam.kinds import PolicyKind
from hatchway.iam.policy import Policy, Statement, parse_policy
from hatchway.iam.principal import Principal

_LIST_TYPES = {"stringlist", "numericlist", "booleanlist", "iplist", "binarylist", "datelist"}


@dataclass
class ContextEntry:
    """``ContextKeyName`` / ``ContextKeyValues`` / ``ContextKeyType``."""

    name: str
    values: list[str]
    type: str = "string"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContextEntry:
        values = d.get("ContextKeyValues", [])
        if not isinstance(values, list):
            values = [values]
        return cls(
            str(d["ContextKeyName"]),
            [str(v) for v in values],
            str(d.get("ContextKeyType", "string")),
        )


@dataclass
class SimulationInput:
    policy_input_list: list[str]
    action_names: list[str]
    resource_arns: list[str] = field(default_factory=lambda: ["*"])
    permissions_boundary_policy_input_list: list[str] = field(default_factory=list)
    resource_policy: str | None = None
    resource_owner: str | None = None
    caller_arn: str | None = None
    context_entries: list[ContextEntry] = field(default_factory=list)
    #: The request named its resources (``ResourceArns``): each result then also carries
    #: ``ResourceSpecificResults``, the decision on its resource, as AWS's simulator answers.
    resource_specific: bool = False


def statement_positions(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of each Statement element in a policy's text, 1-based."""
    dec = json.JSONDecoder()
    n = len(text)

    def ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def pos(i: int) -> tuple[int, int]:
        line = text.count("\n", 0, i) + 1
        return line, i - (text.rfind("\n", 0, i) + 1) + 1

    i = ws(0)
    if i >= n or text[i] != "{":
        return []
    i = ws(i + 1)
    while i < n and text[i] != "}":
        key, i = dec.raw_decode(text, i)
        i = ws(i)
        i = ws(i + 1)  # past ':'
        start = i
        value, i = dec.raw_decode(text, i)
        if key == "Statement":
            if isinstance(value, dict):
                return [(pos(start), pos(i - 1))]
            out = []
            j = ws(start + 1)
            while j < i and text[j] != "]":
                s0 = j
                _, j = dec.raw_decode(text, j)
                out.append((pos(s0), pos(j - 1)))
                j = ws(j)
                if j < n and text[j] == ",":
                    j = ws(j + 1)
            return out
        i = ws(i)
        if i < n and text[i] == ",":
            i = ws(i + 1)
    return []


def _context(entries: Sequence[ContextEntry]) -> Context:
    ctx: Context = {}
    for e in entries:
        t = e.type.lower()
        ctx[e.name.lower()] = (
            tuple(e.values) if t in _LIST_TYPES else (e.values[0] if e.values else "")
        )
    return ctx


class _Source:
    def __init__(self, policy: Policy, source_id: str, source_type: str, text: str) -> None:
        self.policy = policy
        self.source_id = source_id
        self.source_type = source_type
        self.positions = statement_positions(text)


def simulate_custom_policy(inp: SimulationInput) -> dict[str, Any]:
    """Answer a SimulateCustomPolicy request; raises MalformedPolicyDocument for bad input."""
    sources: dict[int, _Source] = {}

    def load(text: str, kind: PolicyKind, source_id: str, source_type: str) -> Policy:
        p = parse_policy(text, kind, name=source_id)
        sources[id(p)] = _Source(p, source_id, source_type, text)
        return p

    identity = [
        load(t, PolicyKind.IDENTITY, f"PolicyInputList.{i}", "IAM Policy")
        for i, t in enumerate(inp.policy_input_list, 1)
    ]
    boundary = [
        load(t, PolicyKind.BOUNDARY, f"PermissionsBoundaryPolicyInputList.{i}", "IAM Policy")
        for i, t in enumerate(inp.permissions_boundary_policy_input_list, 1)
    ]
    resource = (
        load(inp.resource_policy, PolicyKind.RESOURCE, "ResourcePolicy", "Resource Policy")
        if inp.resource_policy
        else None
    )
    ps = PolicySet(identity, resource=resource, boundary=boundary or None)
    principal = Principal.from_arn(inp.caller_arn) if inp.caller_arn else None
    given = _context(inp.context_entries)
    base: Context = principal.context() if principal is not None else {}
    base.update(given)
    owner = Principal.from_arn(inp.resource_owner).account if inp.resource_owner else None

    results: list[dict[str, Any]] = []
    for action in inp.action_names:
        for resource_arn in inp.resource_arns or ["*"]:
            req = Request(action, resource_arn, principal, dict(base), owner)
            d = ps.evaluate(req)
            matched = [
                _matched(s, sources)
                for s in d.statements
                if s.policy.kind is not PolicyKind.BOUNDARY
            ]
            result: dict[str, Any] = {
                "EvalActionName": action,
                "EvalResourceName": resource_arn,
                "EvalDecision": d.decision,
                "MatchedStatements": matched,
                "MissingContextValues": _missing(ps, action.lower(), req.context),
            }
            if boundary:
                allowed_by_boundary = d.kind is not PolicyKind.BOUNDARY or d.allowed
                result["PermissionsBoundaryDecisionDetail"] = {
                    "AllowedByPermissionsBoundary": allowed_by_boundary
                }
            if inp.resource_specific:
                specific: dict[str, Any] = {
                    "EvalResourceName": resource_arn,
                    "EvalResourceDecision": d.decision,
                    "MatchedStatements": [dict(m) for m in matched],
                    "MissingContextValues": list(result["MissingContextValues"]),
                }
                if boundary:
                    specific["PermissionsBoundaryDecisionDetail"] = dict(
                        result["PermissionsBoundaryDecisionDetail"]
                    )
                result["ResourceSpecificResults"] = [specific]
            results.append(result)
    return {"EvaluationResults": results, "IsTruncated": False}


def _matched(s: Statement, sources: Mapping[int, _Source]) -> dict[str, Any]:
    src = sources[id(s.policy)]
    out: dict[str, Any] = {"SourcePolicyId": src.source_id, "SourcePolicyType": src.source_type}
    if s.index < len(src.positions):
        (l0, c0), (l1, c1) = src.positions[s.index]
        out["StartPosition"] = {"Line": l0, "Column": c0}
        out["EndPosition"] = {"Line": l1, "Column": c1}
    return out


def _missing(ps: PolicySet, action: str, ctx: Context) -> list[str]:
    """Condition keys the policies consult for this action that the request did not supply."""
    seen: dict[str, str] = {}
    groups = [ps.identity, ps.resource, ps.boundary]
    for g in groups:
        if g is None:
            continue
        denies, allows = g.index.candidates(action)
        for s in (*denies, *allows):
            if s.conditions is None:
                continue
            for c in s.conditions.clauses:
                if c.key not in ctx and c.key not in seen:
                    seen[c.key] = c.raw_key
    return list(seen.values())
