"""Differential test: the engine against a naive reference model of identity-policy evaluation.

The model below is written straight from docs/reference/iam-evaluation.md (its sections on common
mistakes, when a statement applies, the decision order, matching actions and resources, and
conditions) and deliberately shares no code with ``hatchway.iam``: plain recursive globbing, no
regex, no caching. Scope: identity policies plus an optional permissions boundary, for an IAM user
or a role session without a session policy. Areas AWS leaves open (plain operators on multivalued
keys, unparsable numbers, ``""`` as a null data set, wildcards in the service prefix) are not
generated.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.iam import PolicyKind, PolicySet, make_request, parse_policy

ACCOUNT = "123456789012"
USERS = {
    f"arn:aws:iam::{ACCOUNT}:user/alice": "alice",
    f"arn:aws:iam::{ACCOUNT}:user/bob": "bob",
    f"arn:aws:sts::{ACCOUNT}:assumed-role/Ops/alice-session": None,  # no aws:username
}

# ------------------------------------------------------------------------------------------------
# Reference model
# ------------------------------------------------------------------------------------------------

STAR = object()  # wildcard tokens; every other token is one literal character
QMARK = object()
Token = Any
Context = dict[str, Any]  # lower-cased key -> str | list[str]


def glob(pattern: list[Token], text: str) -> bool:
    """``*`` = any run of characters, ``?`` = one character; everything else literal."""
    if not pattern:
        return not text
    head = pattern[0]
    if head is STAR:
        return glob(pattern[1:], text) or (text != "" and glob(pattern, text[1:]))
    if not text:
        return False
    if head is QMARK or head == text[0]:
        return glob(pattern[1:], text[1:])
    return False


def wild(text: str) -> list[Token]:
    """A pattern without variables: ``*`` and ``?`` are wildcards."""
    return [STAR if c == "*" else QMARK if c == "?" else c for c in text]


def resolve(text: str, ctx: Context, version: str | None) -> list[Token] | None:
    """Tokens of ``text`` with policy variables substituted as literals
    (docs/reference/iam-evaluation.md#policy-variables).

    Variables only work under Version 2012-10-17; otherwise ``${...}`` is literal text.
    ``None`` means a referenced key has no value (and no default)."""
    if version != "2012-10-17":
        return wild(text)
    out: list[Token] = []
    i = 0
    while i < len(text):
        if text.startswith("${", i) and "}" in text[i:]:
            end = text.index("}", i)
            inner = text[i + 2 : end]
            if inner in ("*", "?", "$"):
                value: str | None = inner
            else:
                key, default = inner, None
                if ", '" in inner:
                    key, _, rest = inner.partition(", '")
                    default = rest[:-1] if rest.endswith("'") else rest
                found = ctx.get(key.strip().lower())
                value = found if isinstance(found, str) else default
            if value is None:
                return None
            out.extend(value)  # literal characters: never wildcards
            i = end + 1
        else:
            out.append(STAR if text[i] == "*" else QMARK if text[i] == "?" else text[i])
            i += 1
    return out


def literal(tokens: list[Token]) -> str:
    """A resolved value for an exact-match operator: wildcard characters are plain text."""
    return "".join("*" if t is STAR else "?" if t is QMARK else t for t in tokens)


def action_matches(pattern: str, action: str) -> bool:
    if pattern == "*":
        return True
    p_svc, _, p_name = pattern.lower().partition(":")
    a_svc, _, a_name = action.lower().partition(":")
    return p_svc == a_svc and glob(wild(p_name), a_name)


def resource_matches(pattern: str, resource: str, ctx: Context, version: str | None) -> bool:
    if pattern == "*":
        return True
    p_parts = pattern.split(":", 5)
    r_parts = resource.split(":", 5)
    if len(p_parts) != 6 or len(r_parts) != 6:
        return False
    for p, r in zip(p_parts[:5], r_parts[:5], strict=True):
        if not glob(wild(p), r):
            return False
    tokens = resolve(p_parts[5], ctx, version)
    return tokens is not None and glob(tokens, r_parts[5])


NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "NumericNotEquals": "NumericEquals",
}


def positive_match(
    op: str, policy_value: str, request_value: str, ctx: Context, version: Any
) -> bool:
    if op.startswith("Numeric"):
        a, b = Decimal(request_value), Decimal(policy_value)
        return {
            "NumericEquals": a == b,
            "NumericLessThan": a < b,
            "NumericLessThanEquals": a <= b,
            "NumericGreaterThan": a > b,
            "NumericGreaterThanEquals": a >= b,
        }[op]
    if op == "Bool":
        return policy_value.lower() == request_value.lower()
    tokens = resolve(policy_value, ctx, version)
    if tokens is None:  # a variable with no value matches nothing
        return False
    if op == "StringEquals":
        return literal(tokens) == request_value
    if op == "StringEqualsIgnoreCase":
        return literal(tokens).lower() == request_value.lower()
    if op == "StringLike":
        return glob(tokens, request_value)
    raise AssertionError(op)


def base_matches(
    op: str, values: list[str], request_value: str, ctx: Context, version: Any
) -> bool:
    """One request value against the policy values: OR, or NOR for a negated operator."""
    if op in NEGATED:
        return not any(positive_match(NEGATED[op], v, request_value, ctx, version) for v in values)
    return any(positive_match(op, v, request_value, ctx, version) for v in values)


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def condition_holds(op: str, key: str, raw: Any, ctx: Context, version: Any) -> bool:
    values = [as_text(v) for v in (raw if isinstance(raw, list) else [raw])]
    request = ctx.get(key.lower())
    absent = request is None or request == []
    if op == "Null":
        return any((v == "true") == absent for v in values)
    qualifier, _, base = op.rpartition(":")
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base[: -len("IfExists")]
    if absent and if_exists:
        return True
    if qualifier:
        request_values = [] if absent else request if isinstance(request, list) else [request]
        checks = [base_matches(base, values, str(rv), ctx, version) for rv in request_values]
        return all(checks) if qualifier == "ForAllValues" else any(checks)
    if absent:
        return base in NEGATED
    assert isinstance(request, str)
    return base_matches(base, values, request, ctx, version)


def applies(stmt: dict[str, Any], action: str, resource: str, ctx: Context, version: Any) -> bool:
    def listed(name: str) -> list[str]:
        v = stmt[name]
        return v if isinstance(v, list) else [v]

    if "Action" in stmt:
        ok = any(action_matches(p, action) for p in listed("Action"))
    else:
        ok = not any(action_matches(p, action) for p in listed("NotAction"))
    if not ok:
        return False
    if "Resource" in stmt:
        ok = any(resource_matches(p, resource, ctx, version) for p in listed("Resource"))
    else:
        ok = not any(resource_matches(p, resource, ctx, version) for p in listed("NotResource"))
    if not ok:
        return False
    for op, block in stmt.get("Condition", {}).items():
        for key, raw in block.items():
            if not condition_holds(op, key, raw, ctx, version):
                return False
    return True


def verdict(policies: list[dict[str, Any]], action: str, resource: str, ctx: Context) -> str:
    """``Deny`` / ``Allow`` / ``NotApplicable`` for one set of policies
    (docs/reference/iam-evaluation.md#when-a-statement-applies)."""
    effects = {
        s["Effect"]
        for p in policies
        for s in p["Statement"]
        if applies(s, action, resource, ctx, p.get("Version"))
    }
    return "Deny" if "Deny" in effects else "Allow" if "Allow" in effects else "NotApplicable"


def reference_decision(case: dict[str, Any]) -> str:
    principal = case["principal"]
    ctx: Context = {k.lower(): v for k, v in case["context"].items()}
    username = USERS[principal]
    # aws:username exists for IAM users only (docs/reference/iam-evaluation.md#request-context)
    if username is not None:
        ctx.setdefault("aws:username", username)
    identity = verdict(case["identity"], case["action"], case["resource"], ctx)
    boundary = (
        verdict(case["boundary"], case["action"], case["resource"], ctx)
        if case["boundary"] is not None
        else None
    )
    if "Deny" in (identity, boundary):
        return "explicitDeny"
    if identity == "Allow" and boundary in (None, "Allow"):
        return "allowed"
    return "implicitDeny"


# ------------------------------------------------------------------------------------------------
# Engine under test
# ------------------------------------------------------------------------------------------------


def engine_decision(case: dict[str, Any]) -> str:
    def load(doc: dict[str, Any], kind: PolicyKind) -> Any:
        return parse_policy(json.dumps(doc), kind)

    ps = PolicySet(
        [load(d, PolicyKind.IDENTITY) for d in case["identity"]],
        boundary=(
            [load(d, PolicyKind.BOUNDARY) for d in case["boundary"]]
            if case["boundary"] is not None
            else None
        ),
    )
    req = make_request(case["action"], case["resource"], case["principal"], case["context"])
    return ps.evaluate(req).decision


# ------------------------------------------------------------------------------------------------
# Generators
# ------------------------------------------------------------------------------------------------

ACTIONS = ["ssm:StartSession", "ssm:TerminateSession", "ssm:DescribeSessions", "s3:GetObject"]
ACTION_PATTERNS = [
    "*",
    "ssm:*",
    "ssm:StartSession",
    "SSM:startsession",
    "ssm:Start*",
    "ssm:?tartSession",
    "ssm:*Session*",
    "ssm:*Sessions",
    "ssm:Terminate?ession",
    "s3:Get*",
    "S3:GETOBJECT",
    "s3:*Object",
    "ssm:StartSession?",
]
RESOURCES = [
    f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/alice",
    f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/Alice",
    f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc",
    f"arn:aws:ssm:eu-west-1:{ACCOUNT}:session/alice-1234",
    f"arn:aws:ssm:eu-west-1:{ACCOUNT}:session/bob-1",
    "arn:aws:s3:::bucket/alice/report.txt",
    "arn:aws:s3:::bucket/ops/a:b/c",
    "arn:aws:s3:::bucket/a*/x",
]
RESOURCE_PATTERNS = [
    "*",
    "arn:aws:ssm:*:*:document/*",
    f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/${{aws:username}}",
    "arn:aws:ssm:*:*:document/a*",
    "arn:aws:ssm:*:*:document/?lice",
    "arn:aws:ssm:us-east-?:*:*",
    f"arn:aws:ec2:*:{ACCOUNT}:instance/i-*",
    "arn:aws:ssm:*:*:session/${aws:username}-*",
    "arn:aws:ssm:*:*:session/*",
    "arn:aws:s3:::bucket/${aws:username}/*",
    "arn:aws:s3:::bucket/${aws:PrincipalTag/team}/*",
    "arn:aws:s3:::bucket/${aws:PrincipalTag/team, 'ops'}/*",
    "arn:aws:s3:::bucket/a${*}/x",
    "arn:aws:s3:::bucket/*",
    "arn:aws:s3:::bucket/ops/a:*",
    "arn:aws:*:*:*:*",
    "arn:aws:s3:::*/alice/*",
]
STRING_OPS = [
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
]
NUMERIC_OPS = [
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
]
STRING_KEYS = ["aws:PrincipalTag/team", "aws:ResourceTag/env", "aws:username", "ssm:Owner"]
STRING_VALUES = [
    "ops",
    "Ops",
    "dev",
    "alice",
    "o*",
    "*",
    "d?v",
    "a*b",
    "${aws:username}",
    "${aws:username}-x",
    "${aws:PrincipalTag/team}",
    "${aws:PrincipalTag/team, 'dev'}",
    "${*}",
]
REQUEST_STRINGS = ["ops", "Ops", "OPS", "dev", "alice", "alice-x", "o*", "*", "a*", "a*b", "aXb"]
NUMERIC_VALUES = ["0", "10", "3600", "1.5", "-1", 10, 1.5]
REQUEST_NUMBERS = ["0", "10", "10.0", "3600", "1.5", "-2", "7"]


def listish(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(values), st.lists(st.sampled_from(values), min_size=1, max_size=3)
    )


def cased(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper()])


@st.composite
def condition_entry(draw: st.DrawFn) -> tuple[str, str, Any]:
    family = draw(st.sampled_from(["string", "numeric", "bool", "null", "set"]))
    if family == "null":
        key = draw(st.sampled_from([*STRING_KEYS, "aws:TagKeys", "aws:MultiFactorAuthAge"]))
        return "Null", draw(cased(key)), draw(st.sampled_from(["true", "false", True, False]))
    if family == "set":
        op = draw(st.sampled_from(["ForAnyValue:", "ForAllValues:"])) + draw(
            st.sampled_from(STRING_OPS)
        )
        key = draw(st.sampled_from(["aws:TagKeys", "aws:TagKeys", "aws:PrincipalTag/team"]))
        value = draw(listish(STRING_VALUES))
    elif family == "string":
        op, key = draw(st.sampled_from(STRING_OPS)), draw(st.sampled_from(STRING_KEYS))
        value = draw(listish(STRING_VALUES))
    elif family == "numeric":
        op, key = draw(st.sampled_from(NUMERIC_OPS)), "aws:MultiFactorAuthAge"
        value = draw(listish(NUMERIC_VALUES))
    else:
        op = "Bool"
        key = draw(st.sampled_from(["aws:SecureTransport", "aws:MultiFactorAuthPresent"]))
        value = draw(st.sampled_from(["true", "false", True, False, ["true", "false"]]))
    if draw(st.integers(0, 3)) == 0:
        op = op + "IfExists"
    return op, draw(cased(key)), value


@st.composite
def statement(draw: st.DrawFn) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Allow", "Deny"]))}
    action_el = draw(st.sampled_from(["Action", "Action", "Action", "NotAction"]))
    stmt[action_el] = draw(listish(ACTION_PATTERNS))
    resource_el = draw(st.sampled_from(["Resource", "Resource", "Resource", "NotResource"]))
    stmt[resource_el] = draw(listish(RESOURCE_PATTERNS))
    entries = draw(st.lists(condition_entry(), max_size=3))
    if entries:
        block: dict[str, dict[str, Any]] = {}
        for op, key, value in entries:
            block.setdefault(op, {})[key] = value
        stmt["Condition"] = block
    return stmt


@st.composite
def policy(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"Statement": draw(st.lists(statement(), min_size=1, max_size=3))}
    version = draw(st.sampled_from(["2012-10-17"] * 6 + ["2008-10-17", None]))
    if version is not None:
        doc["Version"] = version
    return doc


@st.composite
def context(draw: st.DrawFn) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for key in ["aws:PrincipalTag/team", "aws:ResourceTag/env", "ssm:Owner"]:
        if draw(st.booleans()):
            ctx[draw(cased(key))] = draw(st.sampled_from(REQUEST_STRINGS))
    if draw(st.booleans()):
        ctx["aws:TagKeys"] = draw(st.lists(st.sampled_from(REQUEST_STRINGS), max_size=3))
    if draw(st.booleans()):
        ctx["aws:MultiFactorAuthAge"] = draw(st.sampled_from(REQUEST_NUMBERS))
    for key in ["aws:SecureTransport", "aws:MultiFactorAuthPresent"]:
        if draw(st.booleans()):
            ctx[key] = draw(st.sampled_from(["true", "false"]))
    return ctx


@st.composite
def case(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "principal": draw(st.sampled_from(sorted(USERS))),
        "action": draw(st.sampled_from(ACTIONS)),
        "resource": draw(st.sampled_from(RESOURCES)),
        "context": draw(context()),
        "identity": draw(st.lists(policy(), min_size=1, max_size=3)),
        "boundary": draw(st.one_of(st.none(), st.lists(policy(), min_size=1, max_size=1))),
    }


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_reference_model_sanity() -> None:
    """The model itself reproduces AWS's headline rules (so a shared mistake is unlikely)."""
    assert glob(wild("a*b?"), "a/x:yb1") and not glob(wild("a*b?"), "ab")
    assert glob(resolve("a${*}", {}, "2012-10-17") or [], "a*")
    assert not glob(resolve("a${*}", {}, "2012-10-17") or [], "ab")
    assert resolve("${aws:username}", {}, "2012-10-17") is None
    assert literal(resolve("${aws:username}", {}, None) or []) == "${aws:username}"
    assert action_matches("SSM:start*", "ssm:StartSession")
    assert not resource_matches(
        "arn:aws:ssm:*:*:document/*", "arn:aws:ssm:a:b:c:document/x", {}, None
    )
    assert condition_holds("StringNotEquals", "k", "x", {}, None)  # negated, key missing
    assert condition_holds("StringNotEqualsIfExists", "k", "x", {}, None)
    assert condition_holds("ForAllValues:StringEquals", "k", "x", {"k": []}, None)
    assert not condition_holds("ForAnyValue:StringEquals", "k", "x", {}, None)
    assert condition_holds("StringNotEquals", "k", ["a", "b"], {"k": "c"}, None)
    assert not condition_holds("StringNotEquals", "k", ["a", "b"], {"k": "b"}, None)
    assert condition_holds("Null", "K", "true", {}, None)


def fuzz(examples: int) -> settings:
    """Deterministic (derandomized, no example database) and without per-example deadline."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def check(c: dict[str, Any]) -> None:
    expected = reference_decision(c)
    assert engine_decision(c) == expected, json.dumps(c, indent=1)


@fuzz(400)
@given(case())
def test_engine_matches_reference_model(c: dict[str, Any]) -> None:
    """Whole identity-policy sets (plus an optional boundary)."""
    check(c)


@st.composite
def condition_case(draw: st.DrawFn) -> dict[str, Any]:
    """One statement whose applicability is decided by its Condition block alone."""
    entries = draw(st.lists(condition_entry(), min_size=1, max_size=2))
    block: dict[str, dict[str, Any]] = {}
    for op, key, value in entries:
        block.setdefault(op, {})[key] = value
    effect = draw(st.sampled_from(["Allow", "Deny"]))
    stmts = [{"Effect": effect, "Action": "*", "Resource": "*", "Condition": block}]
    if effect == "Deny":
        stmts.append({"Effect": "Allow", "Action": "*", "Resource": "*"})
    version = draw(st.sampled_from(["2012-10-17"] * 4 + ["2008-10-17", None]))
    doc: dict[str, Any] = {"Statement": stmts}
    if version is not None:
        doc["Version"] = version
    return {
        "principal": draw(st.sampled_from(sorted(USERS))),
        "action": draw(st.sampled_from(ACTIONS)),
        "resource": draw(st.sampled_from(RESOURCES)),
        "context": draw(context()),
        "identity": [doc],
        "boundary": None,
    }


@fuzz(400)
@given(condition_case())
def test_condition_blocks_match_reference_model(c: dict[str, Any]) -> None:
    check(c)


@st.composite
def resource_case(draw: st.DrawFn) -> dict[str, Any]:
    """One Allow statement decided by Action/NotAction and Resource/NotResource alone."""
    stmt: dict[str, Any] = {"Effect": "Allow"}
    stmt[draw(st.sampled_from(["Action", "NotAction"]))] = draw(listish(ACTION_PATTERNS))
    stmt[draw(st.sampled_from(["Resource", "NotResource"]))] = draw(listish(RESOURCE_PATTERNS))
    version = draw(st.sampled_from(["2012-10-17"] * 4 + ["2008-10-17", None]))
    doc: dict[str, Any] = {"Statement": [stmt]}
    if version is not None:
        doc["Version"] = version
    ctx: dict[str, Any] = {}
    if draw(st.booleans()):
        ctx["aws:PrincipalTag/team"] = draw(st.sampled_from(["ops", "alice", "a*", "o*", "*"]))
    return {
        "principal": draw(st.sampled_from(sorted(USERS))),
        "action": draw(st.sampled_from(ACTIONS)),
        "resource": draw(st.sampled_from(RESOURCES)),
        "context": ctx,
        "identity": [doc],
        "boundary": None,
    }


@fuzz(300)
@given(resource_case())
def test_actions_and_resources_match_reference_model(c: dict[str, Any]) -> None:
    check(c)


def test_every_action_pattern_against_every_action() -> None:
    """Exhaustive over the small pattern tables (hypothesis samples them too sparsely)."""
    for pattern in ACTION_PATTERNS:
        for element in ("Action", "NotAction"):
            doc: dict[str, Any] = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", element: pattern}],
            }
            doc["Statement"][0]["Resource"] = "*"
            for action in ACTIONS:
                check(case_of(doc, action=action))


def test_every_resource_pattern_against_every_resource() -> None:
    for pattern in RESOURCE_PATTERNS:
        for element in ("Resource", "NotResource"):
            for version in ("2012-10-17", "2008-10-17", None):
                doc: dict[str, Any] = {
                    "Statement": [{"Effect": "Allow", "Action": "*", element: pattern}]
                }
                if version is not None:
                    doc["Version"] = version
                for team in (None, "ops", "a*", "o*"):
                    ctx = {} if team is None else {"aws:PrincipalTag/team": team}
                    for principal in sorted(USERS):
                        for resource in RESOURCES:
                            check(case_of(doc, resource=resource, principal=principal, ctx=ctx))


def test_every_numeric_operator_on_every_value() -> None:
    for op in NUMERIC_OPS:
        for value in NUMERIC_VALUES:
            doc = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "*",
                        "Resource": "*",
                        "Condition": {op: {"aws:MultiFactorAuthAge": value}},
                    }
                ],
            }
            for number in [*REQUEST_NUMBERS, None]:
                ctx = {} if number is None else {"aws:MultiFactorAuthAge": number}
                check(case_of(doc, ctx=ctx))


def case_of(
    doc: dict[str, Any],
    action: str = "ssm:StartSession",
    resource: str = RESOURCES[0],
    principal: str = f"arn:aws:iam::{ACCOUNT}:user/alice",
    ctx: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "principal": principal,
        "action": action,
        "resource": resource,
        "context": ctx or {},
        "identity": [doc],
        "boundary": None,
    }
