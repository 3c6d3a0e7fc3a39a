"""Every condition operator with present, missing, multivalued and empty keys.

Each row: operator, policy value(s), request value (MISSING for an absent key; a list for a
multivalued key), and whether the condition holds. Each row is decided through a whole policy
(Allow + Condition) so the operator is exercised the way requests see it.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness.policies import allow, decide, policy

from hatchway.iam.conditions import OPERATORS

MISSING = object()
K = "test:Key"

ROWS: list[tuple[str, Any, Any, bool]] = [
    # String
    ("StringEquals", "abc", "abc", True),
    ("StringEquals", "abc", "ABC", False),
    ("StringEquals", ["x", "abc"], "abc", True),
    ("StringEquals", "abc", MISSING, False),
    ("StringEquals", "abc", ["abc"], False),  # plain operator on a multivalued key: no match
    ("StringEquals", "", "", True),
    ("StringNotEquals", "abc", "abc", False),
    ("StringNotEquals", ["x", "y"], "abc", True),
    ("StringNotEquals", ["x", "abc"], "abc", False),
    ("StringNotEquals", "abc", MISSING, True),
    ("StringEqualsIgnoreCase", "AbC", "aBc", True),
    ("StringEqualsIgnoreCase", "abc", "abd", False),
    ("StringEqualsIgnoreCase", "abc", MISSING, False),
    ("StringNotEqualsIgnoreCase", "AbC", "abc", False),
    ("StringNotEqualsIgnoreCase", "abc", "xyz", True),
    ("StringNotEqualsIgnoreCase", "abc", MISSING, True),
    ("StringLike", "a*c", "abbbc", True),
    ("StringLike", "a?c", "abc", True),
    ("StringLike", "a?c", "abbc", False),
    ("StringLike", "a*", "A1", False),
    ("StringLike", "a.c", "abc", False),  # regex metacharacters are literal
    ("StringLike", "*", "", True),
    ("StringLike", "a*", "a\nb", True),  # * spans newlines
    ("StringLike", "a*", MISSING, False),
    ("StringNotLike", "a*", "abc", False),
    ("StringNotLike", ["x*", "y*"], "abc", True),
    ("StringNotLike", "a*", MISSING, True),
    # Numeric
    ("NumericEquals", "10", "10", True),
    ("NumericEquals", "10", "10.0", True),
    ("NumericEquals", 10, "11", False),
    ("NumericEquals", "10", "ten", False),
    ("NumericEquals", "10", MISSING, False),
    ("NumericNotEquals", "10", "11", True),
    ("NumericNotEquals", "10", "10", False),
    ("NumericNotEquals", "10", MISSING, True),
    ("NumericLessThan", "10", "9.5", True),
    ("NumericLessThan", "10", "10", False),
    ("NumericLessThanEquals", "10", "10", True),
    ("NumericLessThanEquals", "10", "11", False),
    ("NumericGreaterThan", "10", "11", True),
    ("NumericGreaterThan", "10", "10", False),
    ("NumericGreaterThanEquals", "10", "10", True),
    ("NumericGreaterThanEquals", "10", "-3", False),
    ("NumericGreaterThan", "10", MISSING, False),
    # Date (ISO 8601 and epoch seconds)
    ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", True),
    ("DateEquals", "2026-01-01T00:00:00Z", "1767225600", True),
    ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00", True),
    ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", False),
    ("DateEquals", "2026-01-01T00:00:00Z", "not a date", False),
    ("DateNotEquals", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", True),
    ("DateNotEquals", "2026-01-01T00:00:00Z", MISSING, True),
    ("DateLessThan", "2026-01-01T00:00:00Z", "2025-12-31T23:59:59Z", True),
    ("DateLessThan", "2026-01-01", "2026-01-01T00:00:00Z", False),
    ("DateLessThanEquals", "2026-01-01", "2026-01-01T00:00:00Z", True),
    ("DateGreaterThan", "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z", True),
    ("DateGreaterThan", "2026-01-01T00:00:00Z", MISSING, False),
    ("DateGreaterThanEquals", "1767225600", "2026-01-01T00:00:00Z", True),
    # Bool
    ("Bool", "true", "true", True),
    ("Bool", True, "true", True),
    ("Bool", "true", "false", False),
    ("Bool", "true", "TRUE", True),
    ("Bool", "true", MISSING, False),
    # Binary (base64, compared as bytes)
    ("BinaryEquals", "QmluYXJ5VmFsdWU=", "QmluYXJ5VmFsdWU=", True),
    ("BinaryEquals", "QmluYXJ5VmFsdWU=", "QmluYXJ5VmFsdWF=", False),
    ("BinaryEquals", "QmluYXJ5VmFsdWU=", MISSING, False),
    # IP
    ("IpAddress", "203.0.113.0/24", "203.0.113.9", True),
    ("IpAddress", "203.0.113.0/24", "203.0.114.9", False),
    ("IpAddress", "203.0.113.5", "203.0.113.5", True),  # bare address = /32
    ("IpAddress", "2001:db8::/32", "2001:db8::1", True),
    ("IpAddress", "2001:db8::/32", "203.0.113.9", False),
    ("IpAddress", "203.0.113.0/24", "not-an-ip", False),
    ("IpAddress", "203.0.113.0/24", MISSING, False),
    ("NotIpAddress", "203.0.113.0/24", "198.51.100.1", True),
    ("NotIpAddress", "203.0.113.0/24", "203.0.113.1", False),
    ("NotIpAddress", "203.0.113.0/24", MISSING, True),
    # ARN (six components matched separately)
    ("ArnEquals", "arn:aws:iam::123456789012:role/Ops", "arn:aws:iam::123456789012:role/Ops", True),
    ("ArnEquals", "arn:aws:iam::*:role/Ops", "arn:aws:iam::123456789012:role/Ops", True),
    ("ArnLike", "arn:aws:iam::123456789012:role/*", "arn:aws:iam::123456789012:role/a/b", True),
    ("ArnLike", "arn:aws:iam::123456789012:role/*", "arn:aws:iam::123456789012:user/a", False),
    ("ArnLike", "arn:aws:iam::123456789012:role/*", "arn:aws:IAM::123456789012:role/a", False),
    ("ArnLike", "arn:aws:*:*:*:*", "not-an-arn", False),
    ("ArnLike", "arn:aws:iam::1*:role/x", "arn:aws:iam::1:2:role/x", False),
    ("ArnLike", "arn:aws:iam::*", "arn:aws:iam::1:role/x", True),
    ("ArnLike", "arn:aws:iam::*:role/*", MISSING, False),
    ("ArnNotEquals", "arn:aws:iam::*:role/Ops", "arn:aws:iam::1:role/Dev", True),
    ("ArnNotLike", "arn:aws:iam::*:role/*", "arn:aws:iam::1:role/Dev", False),
    ("ArnNotLike", "arn:aws:iam::*:role/*", MISSING, True),
    # Null
    ("Null", "true", MISSING, True),
    ("Null", "true", "x", False),
    ("Null", "false", "x", True),
    ("Null", "false", MISSING, False),
    ("Null", "true", [], True),
    ("Null", "false", ["a"], True),
    # IfExists: a missing key makes any operator true; a present one is evaluated
    ("StringEqualsIfExists", "abc", MISSING, True),
    ("StringEqualsIfExists", "abc", "abd", False),
    ("StringNotEqualsIfExists", "abc", MISSING, True),
    ("StringNotEqualsIfExists", "abc", "abc", False),
    ("NumericLessThanIfExists", "5", MISSING, True),
    ("NumericLessThanIfExists", "5", "7", False),
    ("DateGreaterThanIfExists", "2026-01-01", MISSING, True),
    ("BoolIfExists", "true", MISSING, True),
    ("BoolIfExists", "true", "false", False),
    ("IpAddressIfExists", "10.0.0.0/8", MISSING, True),
    ("ArnLikeIfExists", "arn:aws:iam::*:role/*", MISSING, True),
    ("BinaryEqualsIfExists", "QQ==", MISSING, True),
    # ForAnyValue / ForAllValues
    ("ForAnyValue:StringEquals", ["a", "b"], ["c", "b"], True),
    ("ForAnyValue:StringEquals", ["a", "b"], ["c", "d"], False),
    ("ForAnyValue:StringEquals", ["a", "b"], MISSING, False),
    ("ForAnyValue:StringEquals", ["a", "b"], [], False),
    ("ForAnyValue:StringEquals", ["a", "b"], "", False),
    ("ForAnyValue:StringEquals", ["a", "b"], "a", True),  # single value = one-element set
    ("ForAnyValue:StringEqualsIfExists", ["a"], MISSING, True),
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "b"], True),
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "c"], False),
    ("ForAllValues:StringEquals", ["a", "b"], MISSING, True),
    ("ForAllValues:StringEquals", ["a", "b"], [], True),
    ("ForAllValues:StringLike", ["a*"], ["ab", "ac"], True),
    ("ForAllValues:StringNotEquals", ["a", "b"], ["c", "d"], True),  # none in the list
    ("ForAllValues:StringNotEquals", ["a", "b"], ["c", "a"], False),
    ("ForAnyValue:StringNotEquals", ["a", "b"], ["a", "c"], True),  # some outside the list
    ("ForAnyValue:StringNotEquals", ["a", "b"], ["a", "b"], False),
    ("ForAnyValue:NumericGreaterThan", "5", ["1", "9"], True),
    ("ForAllValues:NumericGreaterThan", "5", ["1", "9"], False),
    ("ForAnyValue:IpAddress", "10.0.0.0/8", ["192.0.2.1", "10.1.1.1"], True),
    ("ForAnyValue:ArnLike", "arn:aws:iam::*:role/*", ["arn:aws:iam::1:user/u"], False),
    ("ForAnyValue:Null", "true", MISSING, True),
    ("ForAllValues:Null", "false", ["a"], True),
]


@pytest.mark.parametrize(
    ("op", "values", "request_value", "expected"),
    ROWS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)],
)
def test_operator(op: str, values: Any, request_value: Any, expected: bool) -> None:
    p = policy(allow(Condition={op: {K: values}}))
    ctx = {} if request_value is MISSING else {K: request_value}
    assert decide([p], context=ctx).allowed is expected


def test_every_operator_has_rows() -> None:
    covered = {r[0].split(":")[-1].lower().removesuffix("ifexists") for r in ROWS}
    assert set(OPERATORS) | {"null"} <= covered


def test_deny_with_each_negated_operator_applies_on_missing_key() -> None:
    for op in (
        "StringNotEquals",
        "StringNotLike",
        "StringNotEqualsIgnoreCase",
        "NumericNotEquals",
        "DateNotEquals",
        "NotIpAddress",
        "ArnNotEquals",
        "ArnNotLike",
    ):
        p = policy(
            allow(), {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": {op: {K: "1"}}}
        )
        assert decide([p]).decision == "explicitDeny", op


def test_variables_in_condition_values_only_where_allowed() -> None:
    # String/Arn/Bool substitute; Numeric does not (the text stays literal and never parses).
    s = policy(allow(Condition={"StringEquals": {K: "${aws:username}"}}))
    assert decide([s], context={K: "alice"}).allowed
    n = policy(allow(Condition={"NumericEquals": {K: "${test:Number}"}}))
    assert not decide([n], context={K: "5", "test:Number": "5"}).allowed
    a = policy(allow(Condition={"ArnLike": {K: "arn:aws:iam::*:user/${aws:username}"}}))
    assert decide([a], context={K: "arn:aws:iam::1:user/alice"}).allowed
    missing = policy(allow(Condition={"StringNotEquals": {K: "${aws:PrincipalTag/none}"}}))
    assert decide([missing], context={K: "x"}).allowed  # no value: nothing to equal
    multi = policy(allow(Condition={"StringEquals": {K: "${test:List}"}}))
    assert not decide([multi], context={K: "a", "test:List": ["a"]}).allowed
