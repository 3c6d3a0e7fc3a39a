"""``hatchway policy evaluate | simulate | lint | demo`` through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The console script installed beside the interpreter running the tests (the project venv).
HATCHWAY = str(Path(sys.executable).with_name("hatchway"))
USER = "arn:aws:iam::123456789012:user/alice"
INSTANCE = "arn:aws:ec2:us-west-2:123456789012:instance/i-02573cafcfEXAMPLE"
SEED: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["ssm:StartSession"],
            "Resource": [
                INSTANCE,
                "arn:aws:ssm:us-west-2:123456789012:document/SSM-SessionManagerRunShell",
            ],
            "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
        }
    ],
}


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HATCHWAY, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_evaluate_json_lines_and_errors_do_not_stop_the_run() -> None:
    lines = [
        {
            "id": "omitted",
            "policies": [SEED],
            "action": "ssm:StartSession",
            "resource": INSTANCE,
            "principal": USER,
            "context": {"ssm:SessionDocumentAccessCheck": "false"},
        },
        {
            "id": "named",
            "policies": [SEED],
            "action": "ssm:StartSession",
            "resource": INSTANCE,
            "principal": USER,
            "context": {},
        },
        {
            "id": "bad",
            "policies": [{"Statement": [{"Effect": "Allow", "Resource": "*"}]}],
            "action": "ssm:StartSession",
            "resource": "*",
            "principal": USER,
        },
        {
            "id": "boundary",
            "policies": [SEED],
            "action": "ssm:StartSession",
            "resource": INSTANCE,
            "principal": USER,
            "permissionBoundaries": [
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Deny", "Action": "ssm:*", "Resource": "*"}],
                }
            ],
        },
        {
            "id": "scp",
            "policies": [SEED],
            "action": "ssm:StartSession",
            "resource": INSTANCE,
            "principal": USER,
            "scps": [
                [
                    {
                        "Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}],
                    }
                ]
            ],
        },
    ]
    stdin = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n"
    proc = run("policy", "evaluate", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == ["omitted", "named", "bad", "boundary", "scp", None]
    assert out[0]["decision"] == "implicitDeny"
    assert out[0]["message"] == (
        f"User: {USER} is not authorized to perform: ssm:StartSession on resource: {INSTANCE} "
        "because no identity-based policy allows the ssm:StartSession action"
    )
    assert out[1]["decision"] == "allowed"
    assert out[1]["matchedStatements"] == [
        {
            "policyType": "identity",
            "policyId": "policies[0]",
            "statementIndex": 0,
            "effect": "Allow",
        }
    ]
    assert out[2]["error"] == {
        "code": "MalformedPolicyDocument",
        "message": "Policy statement must contain actions.",
    }
    assert out[3]["decision"] == "explicitDeny"
    assert out[3]["message"].endswith("with an explicit deny in a permissions boundary")
    assert out[4]["decision"] == "implicitDeny"
    assert out[4]["message"].endswith("with an explicit deny in a service control policy")
    assert out[5]["error"]["code"] == "InvalidInput"


def test_evaluate_explain_says_why_each_statement_did_not_apply() -> None:
    line = {
        "policies": [SEED],
        "action": "ssm:StartSession",
        "principal": USER,
        "resource": "arn:aws:ssm:us-west-2:123456789012:document/Other",
    }
    proc = run("policy", "evaluate", "--explain", stdin=json.dumps(line))
    out = json.loads(proc.stdout)
    (step,) = out["explanation"]
    assert step["result"] == "NotApplicable"
    assert step["statements"][0]["applies"] is False
    assert "Resource does not cover" in step["statements"][0]["reason"]


def test_simulate_matches_aws_output_shape(tmp_path: Path) -> None:
    text = json.dumps(SEED, indent=4)
    (tmp_path / "p.json").write_text(text)
    proc = run(
        "policy",
        "simulate",
        "--policy-input-list",
        f"file://{tmp_path / 'p.json'}",
        "--action-names",
        "ssm:StartSession",
        "ssm:TerminateSession",
        "--resource-arns",
        INSTANCE,
        "--caller-arn",
        USER,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    results = out["EvaluationResults"]
    assert [(r["EvalActionName"], r["EvalDecision"]) for r in results] == [
        ("ssm:StartSession", "allowed"),
        ("ssm:TerminateSession", "implicitDeny"),
    ]
    (m,) = results[0]["MatchedStatements"]
    assert m["SourcePolicyId"] == "PolicyInputList.1"
    lines = text.splitlines()
    start, end = m["StartPosition"], m["EndPosition"]
    assert lines[start["Line"] - 1][start["Column"] - 1] == "{"
    assert lines[end["Line"] - 1][end["Column"] - 1] == "}"
    assert results[0]["MissingContextValues"] == ["ssm:SessionDocumentAccessCheck"]
    # Named resources: each result has its ResourceSpecificResults, as AWS's simulator gives.
    (specific,) = results[0]["ResourceSpecificResults"]
    assert (specific["EvalResourceName"], specific["EvalResourceDecision"]) == (
        INSTANCE,
        "allowed",
    )
    assert specific["MatchedStatements"] == [m]
    proc = run(
        "policy",
        "simulate",
        "--policy-input-list",
        json.dumps(SEED),
        "--action-names",
        "ssm:StartSession",
        "--resource-arns",
        INSTANCE,
        "--context-entries",
        "ContextKeyName=ssm:SessionDocumentAccessCheck,ContextKeyValues=false,"
        "ContextKeyType=boolean",
    )
    out = json.loads(proc.stdout)
    assert out["EvaluationResults"][0]["EvalDecision"] == "implicitDeny"
    assert out["EvaluationResults"][0]["MissingContextValues"] == []


def test_simulate_malformed_policy_reports_like_the_aws_cli() -> None:
    proc = run(
        "policy",
        "simulate",
        "--policy-input-list",
        '{"Statement": []}',
        "--action-names",
        "ssm:StartSession",
    )
    assert proc.returncode == 254
    assert proc.stderr.strip() == (
        "An error occurred (MalformedPolicyDocument) when calling "
        "the SimulateCustomPolicy operation: Syntax errors in policy."
    )


@pytest.mark.parametrize("with_condition_everywhere", [True, False])
def test_lint_document_check_not_enforced(tmp_path: Path, with_condition_everywhere: bool) -> None:
    second: dict[str, Any] = {
        "Effect": "Allow",
        "Action": "ssm:StartSession",
        "Resource": "arn:aws:ec2:*:*:instance/*",
    }
    if with_condition_everywhere:
        second["Condition"] = {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}
    doc = {"Version": "2012-10-17", "Statement": [*SEED["Statement"], second]}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    proc = run("policy", "lint", str(tmp_path / "p.json"))
    if with_condition_everywhere:
        assert proc.returncode == 0, proc.stdout
    else:
        assert proc.returncode == 1
        assert "statement 1: document-check-not-enforced" in proc.stdout


def test_demo_runs() -> None:
    proc = run("policy", "demo")
    assert proc.returncode == 0
    assert "seed (BoolIfExists true)" in proc.stdout


# --- cross-account requests (issue 15, item 10) ---------------------------------------------

OTHER = "444455556666"
QUEUE = f"arn:aws:sqs:us-west-2:{OTHER}:shared-queue"
SEND_ANYWHERE: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}],
}
QUEUE_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": USER},
            "Action": "sqs:SendMessage",
            "Resource": QUEUE,
        }
    ],
}


def _decide(*lines: dict[str, Any]) -> list[dict[str, Any]]:
    stdin = "".join(json.dumps(x) + "\n" for x in lines)
    proc = run("policy", "evaluate", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_evaluate_takes_the_resource_account_from_the_resource_arn() -> None:
    base = {"action": "sqs:SendMessage", "resource": QUEUE, "principal": USER}
    out = _decide(
        # identity side only: the queue is in another account, its owner has not allowed
        {"id": "identity-only", **base, "policies": [SEND_ANYWHERE]},
        # both sides allow
        {"id": "both", **base, "policies": [SEND_ANYWHERE], "resourcePolicy": QUEUE_POLICY},
        # the resource policy alone never suffices across accounts
        {"id": "resource-only", **base, "policies": [], "resourcePolicy": QUEUE_POLICY},
        # an explicit resourceAccount still wins over the ARN
        {"id": "explicit", **base, "policies": [SEND_ANYWHERE], "resourceAccount": "123456789012"},
        # ARNs without an account (S3 buckets) stay in the caller's account
        {
            "id": "bucket",
            "action": "s3:GetObject",
            "resource": "arn:aws:s3:::reports/q3.csv",
            "principal": USER,
            "policies": [
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
                }
            ],
        },
    )
    got = {o["id"]: o for o in out}
    assert got["identity-only"]["decision"] == "implicitDeny"
    assert got["identity-only"]["deniedBy"] == "resource"
    assert got["both"]["decision"] == "allowed"
    assert [m["policyType"] for m in got["both"]["matchedStatements"]] == ["identity", "resource"]
    assert got["resource-only"]["decision"] == "implicitDeny"
    assert got["resource-only"]["deniedBy"] == "identity"
    assert got["explicit"]["decision"] == "allowed"
    assert got["bucket"]["decision"] == "allowed"


# --- compiled policy sets cached by content (issue 15, item 11) -----------------------------


def _allow_start(effect: str = "Allow") -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": effect, "Action": "ssm:StartSession", "Resource": INSTANCE}],
    }


def test_evaluate_cache_keys_on_policy_text() -> None:
    allow = _allow_start()
    deny_same_shape = _allow_start("Deny ")  # same length and prefix as the Allow text
    deny_same_shape["Statement"][0]["Effect"] = "Deny"
    base = {"action": "ssm:StartSession", "resource": INSTANCE, "principal": USER}
    lines = [
        {"id": 1, **base, "policies": [allow]},
        {"id": 2, **base, "policies": [allow]},
        # the same policy spelled differently: as a JSON string, indented, keys reordered
        {"id": 3, **base, "policies": [json.dumps(dict(reversed(allow.items())), indent=2)]},
        # a changed policy: "Deny" where "Allow" was (shares its first characters)
        {"id": 4, **base, "policies": [deny_same_shape]},
        {"id": 5, **base, "policies": [allow]},
        # a nested "policies" key before the real one must not be taken for it
        {"id": 6, "context": {"policies": "x"}, **base, "policies": [deny_same_shape]},
        {"id": 7, **base, "policies": [allow], "policies_note": "policies"},
        # the same identity policies with a boundary: another set
        {"id": 8, **base, "policies": [allow], "permissionBoundaries": [_allow_start("Deny")]},
        {"id": 9, **base, "policies": [allow]},
    ]
    stdin = "".join(json.dumps(x) + "\n" for x in lines)
    # duplicate key: JSON's last value wins (Python's reading), on the fast path as well
    dup = json.dumps({"id": 10, **base, "policies": [allow]})[:-1]
    stdin += dup + ', "policies": ' + json.dumps([deny_same_shape]) + "}\n"
    # the line's own text spelling a sentinel where the policies should be (under an escaped
    # key name, which the search does not see)
    stdin += (
        '{"id": 11, "context": {"policies": ' + json.dumps([allow]) + "}, "
        '"action": "ssm:StartSession", "resource": "' + INSTANCE + '", '
        '"polic\\u0069es": "\\u00000"}\n'
    )
    cached = run("policy", "evaluate", stdin=stdin)
    uncached = run("policy", "evaluate", "--no-cache", stdin=stdin)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == uncached.stdout
    results = {o["id"]: o for o in map(json.loads, cached.stdout.splitlines())}
    assert results.pop(11)["error"] == {
        "code": "InvalidInput",
        "message": "policies must be a list of policy documents",
    }
    got = {k: o["decision"] for k, o in results.items()}
    assert got == {
        1: "allowed",
        2: "allowed",
        3: "allowed",
        4: "explicitDeny",
        5: "allowed",
        6: "explicitDeny",
        7: "allowed",
        8: "explicitDeny",
        9: "allowed",
        10: "explicitDeny",
    }


def test_evaluate_compiles_each_policy_set_once_across_lines(monkeypatch: Any) -> None:
    """A batch over two policy sets builds two compiled sets, not one per line."""
    from click.testing import CliRunner

    from hatchway.cli.policy import policy
    from hatchway.iam import PolicySet

    built = 0
    original = PolicySet.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal built
        built += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(PolicySet, "__init__", counting)
    base = {"action": "ssm:StartSession", "resource": INSTANCE, "principal": USER}
    sets = [[_allow_start()], [SEED, _allow_start("Deny")]]
    stdin = "".join(
        json.dumps({"id": i, **base, "policies": sets[i % 2]}) + "\n" for i in range(200)
    )
    result = CliRunner().invoke(policy, ["evaluate"], input=stdin)
    assert result.exit_code == 0, result.output
    decisions = [json.loads(x)["decision"] for x in result.output.splitlines()]
    assert decisions == ["allowed", "explicitDeny"] * 100
    assert built == 2


def test_evaluate_request_and_result_caches_are_exact() -> None:
    """Lines asking the same thing share a built request and a rendered result; lines that
    differ only in a value's JSON type (``true`` / ``1`` / ``"1"``), in the principal or in
    their id get their own answer, identical to the uncached path's."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ssm:StartSession",
                "Resource": INSTANCE,
                "Condition": {"StringEquals": {"ssm:flag": "1"}},
            },
            {
                "Effect": "Deny",
                "Action": "ssm:StartSession",
                "Resource": INSTANCE,
                "Condition": {"StringEquals": {"ssm:flag": "true"}},
            },
        ],
    }
    base = {"action": "ssm:StartSession", "resource": INSTANCE, "policies": [policy]}
    bob = "arn:aws:iam::123456789012:user/bob"
    lines = [
        {"id": 1, **base, "principal": USER, "context": {"ssm:flag": "1"}},
        {"id": "two", **base, "principal": USER, "context": {"ssm:flag": "1"}},
        {"id": None, **base, "principal": USER, "context": {"ssm:flag": 1}},
        {**base, "principal": USER, "context": {"ssm:flag": True}},
        {"id": 5.5, **base, "principal": USER, "context": {"ssm:flag": "true"}},
        {"id": True, **base, "principal": bob, "context": {"ssm:flag": "true"}},
        {"id": 7, **base, "principal": bob, "context": {"ssm:flag": ["1"]}},
        {"id": 8, **base, "principal": bob, "context": {"ssm:flag": "0"}},
        {"id": 9, **base, "principal": USER, "context": {"ssm:flag": "1"}},
        {"id": 10, **base, "principal": USER, "context": {"SSM:Flag": "true"}},
    ]
    stdin = "".join(json.dumps(x) + "\n" for x in lines)
    cached = run("policy", "evaluate", stdin=stdin)
    uncached = run("policy", "evaluate", "--no-cache", stdin=stdin)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == uncached.stdout
    out = [json.loads(x) for x in cached.stdout.splitlines()]
    assert [o["id"] for o in out] == [1, "two", None, None, 5.5, True, 7, 8, 9, 10]
    assert [o["decision"] for o in out] == [
        "allowed",
        "allowed",
        "allowed",
        "explicitDeny",
        "explicitDeny",
        "explicitDeny",
        "implicitDeny",  # a multivalued key under a single-valued operator
        "implicitDeny",
        "allowed",
        "explicitDeny",
    ]
    assert USER in out[4]["message"] and bob in out[5]["message"]
