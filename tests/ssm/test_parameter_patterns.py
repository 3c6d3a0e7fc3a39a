"""``allowedPattern`` in the core both the broker and the agent call (issue 16, item 2).

The agent re-checks a session's parameters with ``validate_parameters`` before it runs the
document, so these answers are the node's as well as the API's: RE2 semantics, linear time.
"""

from __future__ import annotations

from typing import Any

import pytest

from hatchway.ssm.documents import DocumentError, validate_document, validate_parameters

PORT = (
    "^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
)


def doc(pattern: str) -> dict[str, Any]:
    return {
        "schemaVersion": "1.0",
        "sessionType": "Port",
        "parameters": {"portNumber": {"type": "String", "allowedPattern": pattern}},
        "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding"},
    }


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        (PORT, "22\n"),  # $ is the end of the text, not the end of a line
        (r"^\d+$", "٢٢"),  # \d is ASCII
        (r"^\w+$", "é"),  # \w is ASCII
        ("^(a+)+$", "a" * 20000 + "!"),  # exponential for a backtracking engine
        ("^(a|aa)+$", "a" * 20000 + "!"),
        (PORT, "2\ud8002"),  # a lone surrogate matches nothing (and does not crash)
    ],
    ids=["newline", "digits", "word", "nested", "alternation", "surrogate"],
)
def test_value_refused(pattern: str, value: str) -> None:
    with pytest.raises(DocumentError) as exc:
        validate_parameters(doc(pattern), {"portNumber": [value]})
    assert exc.value.code == "InvalidParameters"


@pytest.mark.parametrize(
    ("pattern", "value"),
    [(PORT, "22"), (r"^\d+$", "22"), ("^(a+)+$", "a" * 20000), ("[0-9]", "x1y")],
)
def test_value_accepted(pattern: str, value: str) -> None:
    assert validate_parameters(doc(pattern), {"portNumber": [value]}) == {"portNumber": [value]}


@pytest.mark.parametrize(
    "pattern", [r"(?=a)a", r"(?<=a)b", r"(a)\1", r"a*+", r"(?>a)", r"a\Z", "a{2000}", "\ud800"]
)
def test_pattern_re2_cannot_compile(pattern: str) -> None:
    with pytest.raises(DocumentError) as exc:
        validate_document(doc(pattern), "Session")
    assert exc.value.code == "InvalidDocumentContent"
    assert "allowedPattern is not a valid regular expression" in exc.value.message


def test_stored_pattern_re2_cannot_compile_refuses_values() -> None:
    """A document stored before patterns were checked with RE2 answers InvalidParameters."""
    with pytest.raises(DocumentError) as exc:
        validate_parameters(doc(r"^(?=1)[0-9]+$"), {"portNumber": ["1"]})
    assert exc.value.code == "InvalidParameters"
    assert "allowedPattern that cannot be used" in exc.value.message
