"""Model-driven validation: AWS's exact texts, Java patterns, and never-crash fuzzing."""

from __future__ import annotations

import datetime as dt
import logging
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.server.awswire import (
    operation,
    parse_json_body,
    parse_query_input,
    validate_input,
)
from hatchway.server.awswire.models import ShapeInfo, input_info
from hatchway.server.awswire.validate import compile_pattern, render_value, translate_pattern
from hatchway.server.base.errors import ServiceError

PREFIX = "1 validation error detected: "


def op(service: str, name: str) -> Any:
    found = operation(service, name)
    assert found is not None
    return found


def message(
    service: str, name: str, params: dict[str, Any], code: str = "ValidationException"
) -> str:
    with pytest.raises(ServiceError) as caught:
        validate_input(op(service, name), params, code=code)
    assert caught.value.code == code
    assert caught.value.status == 400
    return caught.value.message


def one(path: str, value: str, text: str) -> str:
    return f"{PREFIX}{value} at '{path}' failed to satisfy constraint: {text}"


@pytest.mark.parametrize(
    ("service", "name", "params", "expected"),
    [
        (
            "ssm",
            "StartSession",
            {},
            one("target", "Value null", "Member must not be null"),
        ),
        (
            "ssm",
            "StartSession",
            {"Target": "x" * 401},
            one(
                "target",
                f"Value '{'x' * 401}'",
                "Member must have length less than or equal to 400",
            ),
        ),
        (
            "ssm",
            "DescribeSessions",
            {"State": "Gone"},
            one("state", "Value 'Gone'", "Member must satisfy enum value set: [Active, History]"),
        ),
        (
            "ssm",
            "DescribeSessions",
            {"State": "Active", "MaxResults": 0},
            one("maxResults", "Value '0'", "Member must have value greater than or equal to 1"),
        ),
        (
            "ssm",
            "DescribeSessions",
            {"State": "Active", "MaxResults": 201},
            one("maxResults", "Value '201'", "Member must have value less than or equal to 200"),
        ),
        (
            "ssm",
            "DescribeSessions",
            {"State": "History", "Filters": [{"key": "Owner", "value": "a"}, {"key": "Owner"}]},
            one("filters.2.member.value", "Value null", "Member must not be null"),
        ),
        (
            "ssm",
            "DescribeSessions",
            {"State": "History", "Filters": []},
            one("filters", "Value '[]'", "Member must have length greater than or equal to 1"),
        ),
        (
            "ssm",
            "CreateDocument",
            {"Content": "{}", "Name": "ab"},
            one(
                "name",
                "Value 'ab'",
                "Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.]{3,128}$",
            ),
        ),
        (
            "ssm",
            "GetParameters",
            {"Names": ["ok", ""]},
            one(
                "names",
                "Value '[ok, ]'",
                "Member must satisfy constraint: [Member must have length less than or equal to "
                "2048, Member must have length greater than or equal to 1]",
            ),
        ),
        (
            "ssm",
            "StartSession",
            {"Target": "t", "Parameters": {"": ["v"]}},
            one(
                "parameters",
                "Value '{=[v]}'",
                "Map keys must satisfy constraint: [Member must have length less than or equal "
                "to 255, Member must have length greater than or equal to 1]",
            ),
        ),
        (
            "iam",
            "CreateUser",
            {"UserName": "bob smith"},
            one(
                "userName",
                "Value 'bob smith'",
                "Member must satisfy regular expression pattern: [\\w+=,.@-]+",
            ),
        ),
        (
            "iam",
            "TagUser",
            {
                "UserName": "bob",
                "Tags": [{"Key": "ok", "Value": "v"}, {"Key": "a{b}", "Value": "v"}],
            },
            one(
                "tags.2.member.key",
                "Value 'a{b}'",
                "Member must satisfy regular expression pattern: [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]+",
            ),
        ),
        (
            "iam",
            "CreateLoginProfile",
            {"UserName": "bob", "Password": "x" * 200},
            one("password", "Value", "Member must have length less than or equal to 128"),
        ),
    ],
)
def test_exact_messages(service: str, name: str, params: dict[str, Any], expected: str) -> None:
    assert message(service, name, params) == expected


def test_query_services_use_validation_error_code() -> None:
    text = message("iam", "CreateUser", {}, code="ValidationError")
    assert text == one("userName", "Value null", "Member must not be null")


def test_several_errors_are_joined() -> None:
    text = message(
        "sts",
        "AssumeRole",
        {
            "RoleArn": "arn:aws:iam::1:role/x",
            "RoleSessionName": "a b",
            "DurationSeconds": 100,
            "PolicyArns": [{"arn": "short"}],
        },
    )
    assert text == (
        "3 validation errors detected: "
        "Value 'a b' at 'roleSessionName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [\\w+=,.@-]*; "
        "Value 'short' at 'policyArns.1.member.arn' failed to satisfy constraint: "
        "Member must have length greater than or equal to 20; "
        "Value '100' at 'durationSeconds' failed to satisfy constraint: "
        "Member must have value greater than or equal to 900"
    )
    both = message("ssm", "StartSession", {"Target": "t", "Reason": ""})
    assert both.startswith("2 validation errors detected: Value '' at 'reason'")
    assert (
        "; Value '' at 'reason' failed to satisfy constraint: Member must satisfy regular" in both
    )


def test_valid_unicode_tags_and_unknown_members_pass() -> None:
    tags = [{"Key": "Größe", "Value": "naïve value: a/b=c+d@e"}, {"Key": "日本", "Value": ""}]
    validate_input(op("iam", "TagUser"), {"UserName": "bob", "Tags": tags, "Extra": 1})
    validate_input(op("sts", "GetCallerIdentity"), {})


def test_type_errors() -> None:
    text = message("ssm", "CreateActivation", {"IamRole": 5, "RegistrationLimit": True})
    assert text == (
        "2 validation errors detected: "
        "Value '5' at 'iamRole' failed to satisfy constraint: Member must be of type string; "
        "Value 'true' at 'registrationLimit' failed to satisfy constraint: "
        "Member must be of type integer"
    )


def test_render_value() -> None:
    assert render_value(None) == "Value null"
    assert render_value("abc") == "Value 'abc'"
    assert render_value(["a", 1, True]) == "Value '[a, 1, true]'"
    assert render_value({"k": ["v"]}) == "Value '{k=[v]}'"
    assert render_value(b"abc") == "Value 'java.nio.HeapByteBuffer[pos=0 lim=3 cap=3]'"
    assert render_value("secret", sensitive=True) == "Value"
    when = dt.datetime(2026, 11, 27, 20, 31, 7, tzinfo=dt.UTC)
    assert render_value(when) == "Value 'Fri Nov 27 20:31:07 UTC 2026'"


# --------------------------------------------------------------------------- Java patterns


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        ("[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]+", ["Größe 1", "日本", "a\u00a0b"], ["a{b}", "", "a!"]),
        (
            "^arn:aws[a-z0-9-]*:iam::\\d{12}:role\\/[\\w-\\/.@+=,]{1,1017}$",
            ["arn:aws:iam::123456789012:role/a-b/c"],
            ["arn:aws:iam::1:role/x"],
        ),
        (
            "[\\u0009\\u000A\\u000D\\u0020-\\u007E\\u0085\\u00A0-\\uD7FF\\uE000-\\uFFFD\\u10000-\\u10FFFF]+",
            ["a\U0001f600", "tab\tok"],
            ["\x00", ""],
        ),
        ("(?i)all|[0-9]{12}", ["ALL", "123456789012"], ["al", "12345"]),
        ("[\\w+=,.@-]+", ["a.b@c"], ["é", "a b"]),
        ("\\p{Lu}\\P{Lu}", ["Ab"], ["AB"]),
        ("\\Qa.b\\E", ["a.b"], ["axb"]),
        ("(?<year>\\d{4})-\\k<year>", [], []),
    ],
)
def test_java_patterns(pattern: str, good: list[str], bad: list[str]) -> None:
    regex = compile_pattern(pattern)
    if not good and not bad:
        assert regex is None
        return
    assert regex is not None
    for text in good:
        assert regex.fullmatch(text), text
    for text in bad:
        assert not regex.fullmatch(text), text


def test_named_groups_and_untranslatable(caplog: pytest.LogCaptureFixture) -> None:
    assert translate_pattern("(?<name>a)(?<=b)") == "(?P<name>a)(?<=b)"
    for odd in ("[a-z&&[^e]]", "a(?i)b", "\\p{InGreek}", "[\\P{L}]", "[a", "\\", "(", "\\R"):
        with caplog.at_level(logging.WARNING):
            assert compile_pattern(odd) is None
            assert compile_pattern(odd) is None
        assert sum(isinstance(r.args, tuple) and r.args[0] == odd for r in caplog.records) == 1


def test_every_model_pattern_compiles() -> None:
    from hatchway.server.awswire.models import load_service

    for name in ("ssm", "iam", "sts"):
        service = load_service(name)
        for shape_name in service.shape_names:
            pattern = service.shape_for(shape_name).metadata.get("pattern")
            if pattern is not None:
                assert compile_pattern(pattern) is not None, pattern


# --------------------------------------------------------------------------- fuzzing

SCALAR_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=10),
    st.datetimes(timezones=st.just(dt.UTC)),
)


def values_for(info: ShapeInfo, depth: int = 0) -> st.SearchStrategy[Any]:
    """Mostly well-typed values for a shape, with junk mixed in at every level."""
    if depth > 4:
        return SCALAR_JUNK
    kind = info.type
    typed: st.SearchStrategy[Any]
    if kind == "structure":
        members = {m.name: values_for(m.info, depth + 1) for m in info.members[:12]}
        typed = st.fixed_dictionaries({}, optional=members)
    elif kind == "list" and info.member is not None:
        typed = st.lists(values_for(info.member, depth + 1), max_size=4)
    elif kind == "map" and info.key is not None and info.value is not None:
        typed = st.dictionaries(st.text(max_size=8), values_for(info.value, depth + 1), max_size=3)
    elif kind == "string":
        choices = list(info.enum or ())
        typed = st.one_of(st.text(max_size=30), st.sampled_from(choices)) if choices else st.text()
    elif kind in ("integer", "long"):
        typed = st.integers(min_value=-(2**40), max_value=2**40)
    elif kind == "boolean":
        typed = st.booleans()
    elif kind == "timestamp":
        typed = st.datetimes(timezones=st.just(dt.UTC))
    elif kind == "blob":
        typed = st.binary(max_size=20)
    else:
        typed = SCALAR_JUNK
    return st.one_of(typed, typed, typed, SCALAR_JUNK)


FUZZ_OPS = [
    ("ssm", "StartSession"),
    ("ssm", "CreateDocument"),
    ("ssm", "DescribeSessions"),
    ("ssm", "SendCommand"),
    ("iam", "TagUser"),
    ("iam", "CreatePolicy"),
    ("sts", "AssumeRole"),
]


@pytest.mark.parametrize(("service", "name"), FUZZ_OPS)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_validate_never_crashes(service: str, name: str, data: st.DataObject) -> None:
    model = op(service, name)
    info = input_info(model)
    assert info is not None
    params = data.draw(values_for(info))
    if not isinstance(params, dict):
        params = {}
    try:
        validate_input(model, params)
    except ServiceError as exc:
        assert exc.code == "ValidationException"
        assert exc.message.split(" ", 1)[0].isdigit()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize(("service", "name"), [op_ for op_ in FUZZ_OPS if op_[0] == "ssm"])
@settings(max_examples=150, deadline=None)
@given(
    document=st.dictionaries(
        st.sampled_from(
            [
                "Target",
                "Parameters",
                "Filters",
                "MaxResults",
                "Tags",
                "Content",
                "Name",
                "InstanceIds",
                "x",
            ]
        ),
        JSON_VALUES,
        max_size=5,
    ),
    raw=st.binary(max_size=30),
)
def test_json_parse_never_crashes(
    service: str, name: str, document: dict[str, Any], raw: bytes
) -> None:
    import json

    model = op(service, name)
    for body in (json.dumps(document).encode(), raw):
        try:
            params = parse_json_body(model, body)
            validate_input(model, params)
        except ServiceError as exc:
            assert exc.code in ("SerializationException", "ValidationException")


QUERY_KEYS = st.lists(
    st.sampled_from(
        [
            "Tags",
            "member",
            "entry",
            "key",
            "value",
            "Key",
            "Value",
            "1",
            "2",
            "0",
            "x",
            "PolicyArns",
            "arn",
            "UserName",
            "DurationSeconds",
            "RoleArn",
            "TransitiveTagKeys",
        ]
    ),
    min_size=1,
    max_size=5,
).map(".".join)


@pytest.mark.parametrize(("service", "name"), [op_ for op_ in FUZZ_OPS if op_[0] != "ssm"])
@settings(max_examples=150, deadline=None)
@given(
    form=st.dictionaries(QUERY_KEYS, st.text(alphabet=string.printable, max_size=12), max_size=8)
)
def test_query_parse_never_crashes(service: str, name: str, form: dict[str, str]) -> None:
    model = op(service, name)
    try:
        params = parse_query_input(model, form)
        validate_input(model, params, code="ValidationError")
    except ServiceError as exc:
        assert exc.code == "ValidationError"
