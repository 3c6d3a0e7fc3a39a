"""Property tests: the validator is total (it only ever raises AWS's two policy errors), it accepts
every document built from the grammar, and its verdict survives a JSON round trip."""

from __future__ import annotations

import datetime as dt
import json
import string
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hatchway.iam.errors import LimitExceeded, MalformedPolicyDocument
from hatchway.iam.kinds import PolicyKind
from hatchway.iam.validate import validate_document, validate_policy_text

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

kinds = st.sampled_from(list(PolicyKind))


def verdict(doc: object, kind: PolicyKind, managed: bool = False) -> str | None:
    """None when accepted, else the message; anything but AWS's policy errors fails the test."""
    try:
        validate_document(doc, kind, managed=managed)
    except MalformedPolicyDocument as exc:
        assert exc.message, "every rejection carries a message"
        return exc.message
    return None


def text_verdict(
    text: str, kind: PolicyKind, managed: bool = False, limit: int | None = None
) -> str | None:
    try:
        parsed = validate_policy_text(text, kind, managed=managed, size_limit=limit)
    except (MalformedPolicyDocument, LimitExceeded) as exc:
        assert exc.message
        return exc.message
    assert isinstance(parsed, dict)
    return None


# --- Arbitrary JSON values -----------------------------------------------------------------------

odd_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            " ",
            "*",
            ":",
            "::",
            "arn:",
            "arn:aws",
            "Allow",
            "allow",
            "2012-10-17",
            "\x00",
            "T",
            "-",
            "+",
            "9" * 30,
            "${aws:username}",
            "ForAnyValue:",
            "IfExists",
            "Statement",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(odd_text, inner, max_size=4),
    ),
    max_leaves=25,
)


@FUZZ
@given(value=json_values, kind=kinds, managed=st.booleans())
def test_any_json_value_is_accepted_or_malformed(
    value: object, kind: PolicyKind, managed: bool
) -> None:
    verdict(value, kind, managed)


@QUICK
@given(
    top=st.dictionaries(
        st.sampled_from(["Version", "Id", "Statement", "Extra"]), json_values, max_size=4
    ),
    kind=kinds,
)
def test_any_top_level_fields(top: dict[str, object], kind: PolicyKind) -> None:
    verdict(top, kind)


# --- Documents built from the grammar ------------------------------------------------------------

name_chars = string.ascii_letters + string.digits + "*?-_/. "
vendors = st.one_of(
    st.sampled_from(["s3", "ssm", "ec2", "iam", "sts", "kms", "*", "my-svc", "a.b"]),
    st.text(alphabet=string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=8),
)
actions = st.one_of(
    st.just("*"),
    st.builds(lambda v, n: f"{v}:{n}", vendors, st.text(alphabet=name_chars, max_size=12)),
)
partitions = st.sampled_from(["aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "*"])
regions = st.sampled_from(["", "us-east-1", "eu-west-1", "*", "us-west-?"])
accounts = st.sampled_from(["", "111122223333", "*", "aws"])
relative = st.text(alphabet=name_chars + ":", min_size=1, max_size=16)
iam_relative = st.builds(
    lambda p, r: p + r,
    st.sampled_from(["user/", "role/", "group/", "policy/", "instance-profile/", "mfa/"]),
    st.text(alphabet=name_chars, max_size=10),
)
resources = st.one_of(
    st.just("*"),
    st.builds(
        lambda p, s, r, a, rel: f"arn:{p}:{s}:{r}:{a}:{rel}",
        partitions,
        st.sampled_from(["ec2", "ssm", "kms", "dynamodb", "unknown-svc", "*"]),
        regions,
        accounts,
        relative,
    ),
    st.builds(lambda p, a, rel: f"arn:{p}:iam::{a}:{rel}", partitions, accounts, iam_relative),
    st.builds(lambda p, rel: f"arn:{p}:s3:::{rel}", partitions, relative),
    st.builds(
        lambda r, a, rel: f"arn:aws:s3:{r}:{a}:accesspoint/{rel}",
        regions,
        accounts,
        st.text(alphabet=name_chars, max_size=8),
    ),
)
operators = st.sampled_from(
    [
        "StringEquals",
        "StringNotLike",
        "StringEqualsIgnoreCase",
        "NumericLessThan",
        "Bool",
        "BinaryEquals",
        "IpAddress",
        "NotIpAddress",
        "ArnLike",
        "ArnNotEquals",
        "Null",
    ]
)
date_operators = st.sampled_from(
    [
        "DateEquals",
        "DateNotEquals",
        "DateLessThan",
        "DateLessThanEquals",
        "DateGreaterThan",
        "DateGreaterThanEquals",
    ]
)
prefixes = st.sampled_from(["", "ForAnyValue:", "ForAllValues:"])
suffixes = st.sampled_from(["", "IfExists"])
plain_values = st.one_of(
    st.text(max_size=10),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
dates = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=0, max_value=2**63 - 1).map(str),
    st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-8))])).map(
        lambda d: d.isoformat()
    ),
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
)


def _one_or_list(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(values, st.lists(values, max_size=3))


condition_blocks = st.dictionaries(
    st.one_of(
        st.builds(lambda p, o, s: p + o + s, prefixes, operators, suffixes),
        st.builds(lambda p, o, s: p + o + s, prefixes, date_operators, suffixes),
    ),
    st.just(None),  # filled in below: the values depend on the operator
    max_size=3,
)


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    block: dict[str, dict[str, Any]] = {}
    for operator in draw(condition_blocks):
        value_strategy = dates if "Date" in operator else plain_values
        block[operator] = draw(
            st.dictionaries(st.text(max_size=12), _one_or_list(value_strategy), max_size=3)
        )
    return block


principals = st.one_of(
    st.just("*"),
    st.dictionaries(
        st.sampled_from(["AWS", "Service", "Federated", "CanonicalUser"]),
        _one_or_list(st.text(max_size=20)).filter(lambda v: v != []),
        min_size=1,
        max_size=3,
    ),
)


@st.composite
def statements(draw: st.DrawFn, kind: PolicyKind, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"]))}
    action_field = draw(st.sampled_from(["Action", "NotAction"]))
    out[action_field] = draw(st.one_of(actions, st.lists(actions, min_size=1, max_size=4)))
    if kind != PolicyKind.TRUST:
        resource_field = draw(st.sampled_from(["Resource", "NotResource"]))
        out[resource_field] = draw(
            st.one_of(resources, st.lists(resources, min_size=1, max_size=4))
        )
    if kind in (PolicyKind.RESOURCE, PolicyKind.RCP, PolicyKind.TRUST):
        out["Principal"] = draw(principals)
    if draw(st.booleans()):
        out["Sid"] = draw(st.sampled_from(["", f"Stmt{index}", f"S{index}x"]))
    if draw(st.booleans()):
        out["Condition"] = draw(conditions())
    return out


@st.composite
def valid_documents(draw: st.DrawFn, kind: PolicyKind) -> dict[str, Any]:
    count = draw(st.integers(min_value=1, max_value=3))
    body = [draw(statements(kind, i)) for i in range(count)]
    doc: dict[str, Any] = {"Version": "2012-10-17"}
    if draw(st.booleans()):
        doc["Id"] = draw(st.text(max_size=10))
    doc["Statement"] = body[0] if count == 1 and draw(st.booleans()) else body
    return doc


@st.composite
def kind_and_document(draw: st.DrawFn) -> tuple[PolicyKind, dict[str, Any]]:
    kind = draw(kinds)
    return kind, draw(valid_documents(kind))


@FUZZ
@given(case=kind_and_document())
def test_grammatical_documents_are_accepted(case: tuple[PolicyKind, dict[str, Any]]) -> None:
    kind, doc = case
    assert verdict(doc, kind) is None
    assert verdict(doc, kind, managed=True) is None
    text = json.dumps(doc)
    assert text_verdict(text, kind) is None
    assert validate_policy_text(text, kind) == doc


# --- Mutations of grammatical documents ----------------------------------------------------------

statement_fields = st.sampled_from(
    [
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
        "Extra",
        "effect",
    ]
)
top_fields = st.sampled_from(["Version", "Id", "Statement", "Extra"])
odd_strings = st.one_of(
    odd_text,
    resources,
    actions,
    st.sampled_from(
        [
            "Deny",
            "deny",
            "arn:aws:s3::b",
            "arn:aws::x",
            "arn:nope:s3:::b",
            "arn:aws:iam:::x",
            "arn:aws:s3:eu-west-1::b",
            "s3:a:b",
            "a b:c",
            "2024-02-30",
            "T10:00",
        ]
    ),
)
field_values = st.one_of(json_values, odd_strings, st.lists(odd_strings, max_size=3))


@st.composite
def mutated(draw: st.DrawFn) -> tuple[PolicyKind, dict[str, Any]]:
    kind, doc = draw(kind_and_document())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        body = doc.get("Statement")
        if not isinstance(body, (dict, list)) or not body:
            break  # an earlier mutation replaced the statements themselves
        body = body if isinstance(body, list) else [body]
        statement = body[draw(st.integers(min_value=0, max_value=len(body) - 1))]
        target = draw(st.sampled_from(["top", "statement", "condition", "list"]))
        if target == "top":
            field = draw(top_fields)
            if draw(st.booleans()):
                doc.pop(field, None)
            else:
                doc[field] = draw(field_values)
        elif target == "statement" and isinstance(statement, dict):
            field = draw(statement_fields)
            if draw(st.booleans()):
                statement.pop(field, None)
            else:
                statement[field] = draw(field_values)
        elif target == "condition" and isinstance(statement, dict):
            block = statement.setdefault("Condition", {})
            if isinstance(block, dict):
                operator = draw(st.one_of(st.text(max_size=30), operators, date_operators))
                block[operator] = draw(
                    st.one_of(json_values, st.dictionaries(odd_text, field_values, max_size=2))
                )
        elif isinstance(doc.get("Statement"), list):
            doc["Statement"].append(draw(st.one_of(json_values, statements(kind, 9))))
    return kind, doc


@FUZZ
@given(case=mutated(), managed=st.booleans())
def test_mutated_documents_are_accepted_or_malformed(
    case: tuple[PolicyKind, dict[str, Any]], managed: bool
) -> None:
    kind, doc = case
    verdict(doc, kind, managed)


def _json_safe(value: object) -> bool:
    """No NaN / infinity anywhere: those do not survive a trip through JSON text."""
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    if isinstance(value, dict):
        return all(_json_safe(v) for v in value.values())
    return True


@FUZZ
@given(case=mutated(), managed=st.booleans())
def test_verdict_survives_json_round_trip(
    case: tuple[PolicyKind, dict[str, Any]], managed: bool
) -> None:
    kind, doc = case
    assume(_json_safe(doc))
    first = verdict(doc, kind, managed)
    text = json.dumps(doc)
    assert verdict(json.loads(text), kind, managed) == first
    assert text_verdict(text, kind, managed) == first
    if first is None:
        # accepted documents stay accepted, pretty-printed or compact
        assert text_verdict(json.dumps(doc, indent=2), kind, managed) is None
        assert text_verdict(json.dumps(doc, separators=(",", ":")), kind, managed) is None


# --- Random text ---------------------------------------------------------------------------------

json_like_text = st.lists(
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            '"Version"',
            '"2012-10-17"',
            '"Statement"',
            '"Effect"',
            '"Allow"',
            '"Action"',
            '"s3:GetObject"',
            '"Resource"',
            '"*"',
            '"Condition"',
            "null",
            "true",
            "1e400",
            "-0",
            '"\\u0000"',
            " ",
            "\n",
            '"x"',
            "123456789012345678901234567890",
        ]
    ),
    max_size=40,
).map("".join)


@FUZZ
@given(
    text=st.one_of(st.text(max_size=200), json_like_text),
    kind=kinds,
    managed=st.booleans(),
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
)
def test_random_text_is_accepted_or_refused(
    text: str, kind: PolicyKind, managed: bool, limit: int | None
) -> None:
    text_verdict(text, kind, managed, limit)


@QUICK
@given(case=kind_and_document(), limit=st.integers(min_value=0, max_value=2000))
def test_size_limit_is_decided_by_non_white_space(
    case: tuple[PolicyKind, dict[str, Any]], limit: int
) -> None:
    kind, doc = case
    compact = json.dumps(doc, separators=(",", ":"))
    size = sum(1 for c in compact if not c.isspace())
    for text in (compact, json.dumps(doc, indent=3)):
        outcome = text_verdict(text, kind, limit=limit)
        if size > limit:
            assert outcome == f"Cannot exceed quota for PolicySize: {limit}"
        else:
            assert outcome is None


# --- Extremes ------------------------------------------------------------------------------------


def _deep(depth: int, leaf: object) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@settings(max_examples=30, deadline=None)
@given(
    field=st.sampled_from(
        ["Action", "Resource", "Sid", "Effect", "Principal", "Condition", "Extra"]
    ),
    depth=st.sampled_from([1, 50, 5000, 50_000]),
    kind=kinds,
)
def test_deeply_nested_values_are_syntax_errors(field: str, depth: int, kind: PolicyKind) -> None:
    deep = _deep(depth, "s3:GetObject")
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*", field: deep}
    assert verdict({"Version": "2012-10-17", "Statement": statement}, kind) is not None
    assert verdict({"Version": "2012-10-17", "Statement": [statement, deep]}, kind) is not None
    assert verdict({"Version": "2012-10-17", "Statement": deep}, kind) is not None
    assert verdict(deep, kind) is not None


@settings(max_examples=30, deadline=None)
@given(
    number=st.one_of(
        st.integers(min_value=2**63), st.integers(max_value=-(2**63)), st.just(10**5000)
    )
)
def test_huge_numbers_in_dates_fail_legacy_parsing(number: int) -> None:
    doc: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "*",
            "Condition": {"DateLessThan": {"aws:EpochTime": [number]}},
        },
    }
    assert verdict(doc, PolicyKind.IDENTITY) == "The policy failed legacy parsing"
    doc["Statement"]["Condition"] = {"NumericLessThan": {"k": number}}
    assert verdict(doc, PolicyKind.IDENTITY) is None
