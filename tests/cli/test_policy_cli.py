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
