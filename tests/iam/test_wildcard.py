"""IAM wildcards are matched in linear time (issue 16, item 2): no backtracking regex.

``*a*a*a…*b`` took a backtracking regex exponential time; the matcher's step counter shows
it bounded by pattern × input length, and a property test holds it to the regex semantics it
replaced (``*`` any run including newlines, ``?`` one character, everything else literal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hatchway.iam import PolicySet, compile_policy, make_request
from hatchway.iam.lint import lint_policies
from hatchway.iam.wildcard import Glob, Steps, compile_glob, compile_pieces

EVIL = "*a" * 1000 + "*b"  # 1,001 wildcards

TEXTS = [
    "a" * 2000,
    "a" * 2000 + "b",
    "a" * 999 + "b",
    "a" * 1000 + "c" * 1000 + "b",
    "ab" * 1500,
    "ba" * 1500 + "b",
    "b" * 3000,
    "",
]


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: f"len{len(t)}")
@pytest.mark.parametrize("ignore_case", [False, True])
def test_steps_bounded_by_pattern_times_input(text: str, ignore_case: bool) -> None:
    steps = Steps()
    got = compile_glob(EVIL, ignore_case).match(text, steps)
    assert got == (text.endswith("b") and text[:-1].count("a") >= 1000)
    assert steps.count <= (len(EVIL) + 1) * (len(text) + 1)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("?" * 300 + "*" + "a?" * 300 + "*b", "a" * 3000, False),
        ("?" * 300 + "*" + "a?" * 300 + "*b", "a" * 3000 + "b", True),
        ("*" + "?a" * 500 + "*" + "a" * 500 + "*c", "ab" * 1500 + "c", False),
        ("*" + "?a" * 500 + "*" + "a" * 500 + "*c", "ba" * 500 + "a" * 500 + "c", True),
        ("*" + "a" * 400 + "*" + "a" * 400 + "?*b", "a" * 3000 + "b", True),
        ("*" + "a" * 400 + "*" + "a" * 400 + "?*b", ("a" * 399 + "b") * 8, False),
    ],
    ids=range(6),
)
def test_steps_bounded_with_question_marks(pattern: str, text: str, expected: bool) -> None:
    steps = Steps()
    assert compile_glob(pattern).match(text, steps) == expected
    assert steps.count <= (len(pattern) + 1) * (len(text) + 1)


def _regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


ALPHABET = st.text(alphabet="ab*?A:\n", max_size=9)


@settings(max_examples=400, deadline=None)
@given(pattern=ALPHABET, text=st.text(alphabet="abA:\n", max_size=12), ignore_case=st.booleans())
def test_same_answers_as_the_regex_it_replaced(pattern: str, text: str, ignore_case: bool) -> None:
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    expected = re.fullmatch(_regex(pattern), text, flags) is not None
    assert Glob(((pattern, False),), ignore_case).match(text) == expected


def test_substituted_text_is_literal() -> None:
    glob = compile_pieces((("home/", False), ("a*?", True), ("/*", False)))
    assert glob.match("home/a*?/x")
    assert not glob.match("home/abc/x")


def _decide(statement: Mapping[str, object], action: str, resource: str, **ctx: str) -> str:
    policy = compile_policy({"Version": "2012-10-17", "Statement": [statement]})
    return PolicySet([policy]).evaluate(make_request(action, resource, None, ctx)).decision


@pytest.mark.parametrize("tail", ["", "b"])
def test_every_pattern_element_is_linear(tail: str) -> None:
    """Action, Resource, NotResource, StringLike, ArnLike and variables, each with 1,001
    wildcards against 2,000 characters: answered at once (a regex never finished)."""
    long = "a" * 2000 + tail
    want = "allowed" if tail else "implicitDeny"
    arn = f"arn:aws:ssm:us-east-1:123456789012:document/{long}"
    evil_arn = f"arn:aws:ssm:us-east-1:123456789012:document/{EVIL}"
    assert (
        _decide({"Effect": "Allow", "Action": f"ssm:{EVIL}", "Resource": "*"}, f"ssm:{long}", "*")
        == want
    )
    assert (
        _decide({"Effect": "Allow", "Action": "ssm:x", "Resource": evil_arn}, "ssm:x", arn) == want
    )
    not_res = {"Effect": "Allow", "Action": "ssm:x", "NotResource": evil_arn}
    assert _decide(not_res, "ssm:x", arn) == ("implicitDeny" if tail else "allowed")
    like = {"StringLike": {"aws:username": EVIL}}
    stmt = {"Effect": "Allow", "Action": "ssm:x", "Resource": "*", "Condition": like}
    assert _decide(stmt, "ssm:x", "*", **{"aws:username": long}) == want
    arn_like = {"ArnLike": {"aws:SourceArn": evil_arn}}
    stmt = {"Effect": "Allow", "Action": "ssm:x", "Resource": "*", "Condition": arn_like}
    assert _decide(stmt, "ssm:x", "*", **{"aws:SourceArn": arn}) == want
    var_arn = "arn:aws:ssm:us-east-1:123456789012:document/${aws:username}" + EVIL
    stmt = {"Effect": "Allow", "Action": "ssm:x", "Resource": var_arn}
    assert (
        _decide(stmt, "ssm:x", arn.replace("document/", "document/u"), **{"aws:username": "u"})
        == want
    )


def test_lint_matches_linearly() -> None:
    doc = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ssm:StartSession", "Resource": f"arn:aws:{EVIL}:*:*:*"},
            {
                "Effect": "Allow",
                "Action": "ssm:StartSession",
                "Resource": f"arn:aws:ssm:*:*:{EVIL}",
            },
        ],
    }
    lint_policies([("evil.json", doc)])  # answers; the findings are test_lint's business
