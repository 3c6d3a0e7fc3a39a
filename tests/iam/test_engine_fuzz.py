"""Property tests: the whole pipeline (parse → compile → evaluate → explain) never crashes.

Random documents are either accepted or refused with MalformedPolicyDocument / LimitExceeded;
accepted ones evaluate against random requests without raising, decisions are one of the
three outcomes, and a few algebraic properties of IAM hold.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.iam import (
    LimitExceeded,
    MalformedPolicyDocument,
    PolicyKind,
    PolicySet,
    make_request,
    parse_policy,
)
from hatchway.iam.conditions import OPERATORS

KEYS = [
    "aws:username",
    "aws:SourceIp",
    "aws:TagKeys",
    "ssm:resourceTag/env",
    "test:n",
    "aws:CurrentTime",
    "ssm:SessionDocumentAccessCheck",
]
OPS = [
    n
    for n in [
        "StringEquals",
        "StringNotEquals",
        "StringLike",
        "StringNotLike",
        "StringEqualsIgnoreCase",
        "NumericLessThan",
        "NumericNotEquals",
        "DateGreaterThan",
        "Bool",
        "IpAddress",
        "NotIpAddress",
        "ArnLike",
        "ArnNotLike",
        "BinaryEquals",
        "Null",
    ]
]
text = st.text(alphabet="ab*?:/$.{}-1 ", max_size=12)
value = st.one_of(
    text,
    st.sampled_from(
        [
            "true",
            "false",
            "10",
            "10.0.0.0/8",
            "2026-01-01",
            "arn:aws:iam::1:user/${aws:username}",
            "${*}",
        ]
    ),
)
actions = st.one_of(
    st.sampled_from(
        ["*", "ssm:*", "ssm:StartSession", "SSM:start*", "ec2:?un*", "iam:CreateUser", "s3:Get*"]
    ),
    text,
)
resources = st.one_of(
    st.sampled_from(
        [
            "*",
            "arn:aws:ec2:*:*:instance/*",
            "arn:aws:ssm:us-east-1::document/AWS-*",
            "arn:aws:s3:::b/${aws:username}/*",
            "arn:aws:sqs",
        ]
    ),
    text,
)
operator = st.builds(
    lambda prefix, op, ie: prefix + op + ("IfExists" if ie and op != "Null" else ""),
    st.sampled_from(["", "ForAnyValue:", "ForAllValues:"]),
    st.sampled_from(OPS),
    st.booleans(),
)
condition = st.dictionaries(
    operator,
    st.dictionaries(
        st.sampled_from(KEYS), st.one_of(value, st.lists(value, max_size=3)), max_size=2
    ),
    max_size=2,
)


def _stmt(effect: str, na: bool, a: Any, nr: bool, r: Any, c: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {
        "Effect": effect,
        ("NotAction" if na else "Action"): a,
        ("NotResource" if nr else "Resource"): r,
    }
    if c:
        s["Condition"] = c
    return s


statement = st.builds(
    _stmt,
    st.sampled_from(["Allow", "Deny"]),
    st.booleans(),
    st.one_of(actions, st.lists(actions, min_size=1, max_size=3)),
    st.booleans(),
    st.one_of(resources, st.lists(resources, min_size=1, max_size=3)),
    condition,
)
document = st.builds(
    lambda v, s: {**({"Version": v} if v else {}), "Statement": s},
    st.sampled_from(["2012-10-17", "2008-10-17", None]),
    st.lists(statement, min_size=1, max_size=4),
)
ctx_value = st.one_of(value, st.lists(value, max_size=3))
request = st.fixed_dictionaries(
    {
        "action": st.sampled_from(
            [
                "ssm:StartSession",
                "ec2:RunInstances",
                "iam:CreateUser",
                "s3:GetObject",
                "sts:GetCallerIdentity",
            ]
        ),
        "resource": st.sampled_from(
            [
                "*",
                "arn:aws:ec2:us-east-1:1:instance/i-1",
                "arn:aws:ssm:us-east-1::document/AWS-StartSSHSession",
                "arn:aws:s3:::b/alice/x",
                "not-an-arn",
            ]
        ),
        "principal": st.sampled_from(
            [
                "arn:aws:iam::1:user/alice",
                "arn:aws:iam::1:user/a*",
                "arn:aws:sts::1:assumed-role/R/s",
                "arn:aws:iam::1:root",
                None,
            ]
        ),
        "context": st.dictionaries(st.sampled_from(KEYS), ctx_value, max_size=4),
    }
)


def _parse(doc: Any, kind: PolicyKind = PolicyKind.IDENTITY) -> Any:
    try:
        return parse_policy(json.dumps(doc), kind)
    except (MalformedPolicyDocument, LimitExceeded):
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(document, min_size=1, max_size=3), st.lists(request, min_size=1, max_size=4))
def test_evaluate_never_raises(docs: list[dict[str, Any]], reqs: list[dict[str, Any]]) -> None:
    policies = [p for p in (_parse(d) for d in docs) if p is not None]
    ps = PolicySet(policies)
    for r in reqs:
        req = make_request(r["action"], r["resource"], r["principal"], r["context"])
        d = ps.evaluate(req, explain=True)
        assert d.decision in ("allowed", "explicitDeny", "implicitDeny")
        assert (d.message is None) == d.allowed
        json.dumps(d.to_dict(explain=True))


@settings(max_examples=200, deadline=None)
@given(st.lists(document, min_size=1, max_size=3), request)
def test_algebra(docs: list[dict[str, Any]], r: dict[str, Any]) -> None:
    policies = [p for p in (_parse(d) for d in docs) if p is not None]
    req = make_request(r["action"], r["resource"], r["principal"], r["context"])
    base = PolicySet(policies).evaluate(req)
    deny_all = parse_policy(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}],
            }
        )
    )
    allow_all = parse_policy(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        )
    )
    always = r["action"] == "sts:GetCallerIdentity"
    # A Deny of everything anywhere wins; an Allow of everything cannot undo an explicit deny.
    assert PolicySet([*policies, deny_all]).evaluate(req).decision == (
        "allowed" if always else "explicitDeny"
    )
    with_allow = PolicySet([*policies, allow_all]).evaluate(req)
    if base.decision == "explicitDeny":
        assert with_allow.decision == "explicitDeny"
    # A boundary can only take away.
    bounded = PolicySet(policies, boundary=[deny_all]).evaluate(req)
    if not base.allowed:
        assert not bounded.allowed
    # Policy order does not matter.
    assert PolicySet(list(reversed(policies))).evaluate(req).decision == base.decision


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "Version",
                        "Statement",
                        "Effect",
                        "Action",
                        "Resource",
                        "NotAction",
                        "Condition",
                        "Principal",
                        "Sid",
                        "x",
                    ]
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=20,
    ),
    st.sampled_from(list(PolicyKind)),
)
def test_parse_never_raises_anything_else(doc: Any, kind: PolicyKind) -> None:
    with contextlib.suppress(MalformedPolicyDocument, LimitExceeded):
        parse_policy(json.dumps(doc), kind)


def test_operator_table_is_complete() -> None:
    families = {"string": 6, "numeric": 6, "date": 6, "arn": 4}
    for family, count in families.items():
        assert sum(1 for n in OPERATORS if n.startswith(family)) == count
    assert {"bool", "binaryequals", "ipaddress", "notipaddress"} <= set(OPERATORS)
