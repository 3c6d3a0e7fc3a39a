"""The seed document's scenarios, as a table: ``aws ssm start-session`` under each policy.

Every row is checked twice: through the Python API (``hatchway.ssm``) and through the command
line (``hatchway policy start-session --output json``), the interface CI pipelines use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hatchway.cli.main import cli
from hatchway.iam import PolicySet, Principal, parse_policy
from hatchway.ssm import StartSessionMode, authorize_start_session, target_arn

REGION = "us-west-2"
ACCOUNT = "123456789012"
TARGET = "i-02573cafcfEXAMPLE"
INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{TARGET}"
RUN_SHELL = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/SSM-SessionManagerRunShell"
CHECK_TRUE = {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}


def allow(resources: list[str], condition: dict[str, Any] | None = None) -> dict[str, Any]:
    stmt: dict[str, Any] = {
        "Effect": "Allow",
        "Action": ["ssm:StartSession"],
        "Resource": resources,
    }
    if condition is not None:
        stmt["Condition"] = condition
    return stmt


def deny(resources: list[str] | str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Effect": "Deny", "Action": "ssm:StartSession", "Resource": resources}
    if condition is not None:
        stmt["Condition"] = condition
    return stmt


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


@dataclass
class Case:
    name: str
    policy: dict[str, Any]
    document: str | None
    decision: str
    failing: str | None = None  # the resource named in the AccessDenied message
    strict: bool = False
    target_tags: dict[str, str] = field(default_factory=dict)


SEED = doc(allow([INSTANCE, RUN_SHELL], CHECK_TRUE))
NO_CONDITION = doc(allow([INSTANCE]))
NO_CONDITION_WITH_DOC = doc(allow([INSTANCE, RUN_SHELL]))
SSH = f"arn:aws:ssm:{REGION}::document/AWS-StartSSHSession"
CUSTOM = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/MyTeamShell"

CASES = [
    # By default StartSession gets the default document without naming it.
    Case("no condition: default document implicit", NO_CONDITION, None, "allowed"),
    Case(
        "no condition: naming the default needs it in Resource",
        NO_CONDITION,
        "SSM-SessionManagerRunShell",
        "implicitDeny",
        RUN_SHELL,
    ),
    Case(
        "no condition, document in Resource: named",
        NO_CONDITION_WITH_DOC,
        "SSM-SessionManagerRunShell",
        "allowed",
    ),
    # The condition on the (only) statement: --document-name becomes mandatory.
    Case("condition: omitted document is denied", SEED, None, "implicitDeny", INSTANCE),
    Case(
        "condition: default document named is allowed",
        SEED,
        "SSM-SessionManagerRunShell",
        "allowed",
    ),
    Case(
        "condition: another document named is denied", SEED, "MyTeamShell", "implicitDeny", CUSTOM
    ),
    Case(
        "condition: AWS-StartSSHSession needs its own grant",
        SEED,
        "AWS-StartSSHSession",
        "implicitDeny",
        SSH,
    ),
    # SSH: AWS-owned documents have an empty account field.
    Case(
        "ssh allowed with wildcard account",
        doc(allow([INSTANCE, "arn:aws:ssm:*:*:document/AWS-StartSSHSession"], CHECK_TRUE)),
        "AWS-StartSSHSession",
        "allowed",
    ),
    Case(
        "ssh allowed with the empty account",
        doc(allow([INSTANCE, SSH], CHECK_TRUE)),
        "AWS-StartSSHSession",
        "allowed",
    ),
    Case(
        "ssh denied when the policy puts an account in an AWS-owned document ARN",
        doc(allow([INSTANCE, f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/AWS-StartSSHSession"])),
        "AWS-StartSSHSession",
        "implicitDeny",
        SSH,
    ),
    # Custom documents.
    Case(
        "custom document allowed",
        doc(allow([INSTANCE, CUSTOM], CHECK_TRUE)),
        "MyTeamShell",
        "allowed",
    ),
    Case(
        "custom document: the default is then not allowed by name",
        doc(allow([INSTANCE, CUSTOM], CHECK_TRUE)),
        "SSM-SessionManagerRunShell",
        "implicitDeny",
        RUN_SHELL,
    ),
    # The condition must be in every statement that allows StartSession.
    Case(
        "condition missing from one of two statements: not enforced",
        doc(
            allow([INSTANCE, RUN_SHELL], CHECK_TRUE),
            allow([f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"]),
        ),
        None,
        "allowed",
    ),
    Case(
        "condition in both statements: enforced",
        doc(
            allow([INSTANCE, RUN_SHELL], CHECK_TRUE),
            allow([f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"], CHECK_TRUE),
        ),
        None,
        "implicitDeny",
        INSTANCE,
    ),
    # "false" does not affect the evaluation.
    Case(
        "false value: omitted document allowed",
        doc(
            allow(
                [INSTANCE, RUN_SHELL], {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}}
            )
        ),
        None,
        "allowed",
    ),
    Case(
        "false value: named document allowed",
        doc(
            allow(
                [INSTANCE, RUN_SHELL], {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}}
            )
        ),
        "SSM-SessionManagerRunShell",
        "allowed",
    ),
    # Bool without IfExists: the key is absent when a document is named.
    Case(
        "Bool instead of BoolIfExists breaks named documents",
        doc(allow([INSTANCE, RUN_SHELL], {"Bool": {"ssm:SessionDocumentAccessCheck": "true"}})),
        "SSM-SessionManagerRunShell",
        "implicitDeny",
        INSTANCE,
    ),
    # Denies.
    Case(
        "deny on the document wins over the allow",
        doc(
            allow([INSTANCE, "arn:aws:ssm:*:*:document/*"]),
            deny("arn:aws:ssm:*:*:document/AWS-StartSSHSession"),
        ),
        "AWS-StartSSHSession",
        "explicitDeny",
        SSH,
    ),
    Case(
        "deny with Bool false forces naming a document",
        doc(
            allow([INSTANCE, RUN_SHELL]),
            deny("*", {"Bool": {"ssm:SessionDocumentAccessCheck": "false"}}),
        ),
        None,
        "explicitDeny",
        INSTANCE,
    ),
    Case(
        "deny with Bool false lets a named document through",
        doc(
            allow([INSTANCE, RUN_SHELL]),
            deny("*", {"Bool": {"ssm:SessionDocumentAccessCheck": "false"}}),
        ),
        "SSM-SessionManagerRunShell",
        "allowed",
    ),
    Case(
        "deny with BoolIfExists false also denies named documents",
        doc(
            allow([INSTANCE, RUN_SHELL]),
            deny("*", {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}}),
        ),
        "SSM-SessionManagerRunShell",
        "explicitDeny",
        INSTANCE,
    ),
    # Strict mode (2025 AWS docs): the default document must be allowed even when omitted.
    Case(
        "strict: instance-only policy denies the omitted default",
        NO_CONDITION,
        None,
        "implicitDeny",
        RUN_SHELL,
        strict=True,
    ),
    Case(
        "strict: default document in Resource", NO_CONDITION_WITH_DOC, None, "allowed", strict=True
    ),
    # Target tags are the target's own; the document evaluation does not see them.
    Case(
        "target tag condition on the target",
        doc(
            allow(
                [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"],
                {"StringLike": {"ssm:resourceTag/Finance": ["WebServers"]}},
            )
        ),
        None,
        "allowed",
        target_tags={"Finance": "WebServers"},
    ),
    Case(
        "target tag condition, other tag value",
        doc(
            allow(
                [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"],
                {"StringLike": {"ssm:resourceTag/Finance": ["WebServers"]}},
            )
        ),
        None,
        "implicitDeny",
        INSTANCE,
        target_tags={"Finance": "Payroll"},
    ),
    Case(
        "a tag condition shared with the document ARN fails on the document",
        doc(
            allow(
                [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*", RUN_SHELL],
                {"StringLike": {"ssm:resourceTag/Finance": ["WebServers"]}},
            )
        ),
        "SSM-SessionManagerRunShell",
        "implicitDeny",
        RUN_SHELL,
        target_tags={"Finance": "WebServers"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_seed_scenario_api(case: Case) -> None:
    ps = PolicySet([parse_policy(json.dumps(case.policy))])
    result = authorize_start_session(
        ps,
        Principal.from_arn(f"arn:aws:iam::{ACCOUNT}:user/alice"),
        target_arn=target_arn(TARGET, REGION, ACCOUNT),
        region=REGION,
        account=ACCOUNT,
        document_name=case.document,
        target_tags=case.target_tags,
        mode=StartSessionMode.STRICT if case.strict else StartSessionMode.LEGACY,
    )
    assert result.decision == case.decision
    if case.failing is None:
        assert result.message is None
    else:
        assert result.failed is not None and result.failed.resource == case.failing
        assert result.message is not None
        assert result.message.startswith(
            f"User: arn:aws:iam::{ACCOUNT}:user/alice is not authorized to perform: "
            f"ssm:StartSession on resource: {case.failing} "
        )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_seed_scenario_cli(case: Case, tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(case.policy, indent=2))
    args = [
        "policy",
        "start-session",
        "--policy",
        str(policy_file),
        "--target",
        TARGET,
        "--region",
        REGION,
        "--account-id",
        ACCOUNT,
        "--output",
        "json",
    ]
    if case.document:
        args += ["--document-name", case.document]
    if case.strict:
        args.append("--strict")
    if case.target_tags:
        args += ["--target-tags", ",".join(f"{k}={v}" for k, v in case.target_tags.items())]
    result = CliRunner().invoke(cli, args)
    out = json.loads(result.output)
    assert out["decision"] == case.decision
    assert result.exit_code == (0 if case.decision == "allowed" else 1)
    evaluated = [e["resource"] for e in out["evaluations"]]
    assert evaluated[0] == INSTANCE
    if case.document or case.strict:
        assert len(evaluated) == 2
    else:
        assert evaluated == [INSTANCE]  # legacy: the default document is not checked
    if case.failing:
        assert case.failing in out["message"]


def test_omitted_document_sets_check_false_and_named_leaves_it_absent() -> None:
    ps = PolicySet([parse_policy(json.dumps(SEED))])
    p = Principal.from_arn(f"arn:aws:iam::{ACCOUNT}:user/alice")
    omitted = authorize_start_session(ps, p, target_arn=INSTANCE, region=REGION, account=ACCOUNT)
    named = authorize_start_session(
        ps,
        p,
        target_arn=INSTANCE,
        region=REGION,
        account=ACCOUNT,
        document_name="SSM-SessionManagerRunShell",
    )
    ctx_omitted = omitted.evaluations[0].decision.request.context
    assert ctx_omitted["ssm:sessiondocumentaccesscheck"] == "false"
    for e in named.evaluations:
        assert "ssm:sessiondocumentaccesscheck" not in e.decision.request.context
    assert "--document-name" in omitted.reason


def test_cli_text_output_explains_the_condition(tmp_path: Path) -> None:
    policy_file = tmp_path / "seed.json"
    policy_file.write_text(json.dumps(SEED))
    result = CliRunner().invoke(
        cli,
        [
            "policy",
            "start-session",
            "--policy",
            str(policy_file),
            "--target",
            TARGET,
            "--region",
            REGION,
            "--explain",
        ],
    )
    assert result.exit_code == 1
    assert 'ssm:SessionDocumentAccessCheck = "false"' in result.output
    assert "BoolIfExists ssm:SessionDocumentAccessCheck ['true'] is false" in result.output
    assert "--document-name" in result.output


def test_cli_rejects_malformed_policy_and_bad_target(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "allow", '
        '"Action": "ssm:StartSession", "Resource": "*"}]}'
    )
    result = CliRunner().invoke(
        cli, ["policy", "start-session", "--policy", str(bad), "--target", TARGET]
    )
    assert result.exit_code == 2
    assert "MalformedPolicyDocument" in result.output
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SEED))
    result = CliRunner().invoke(
        cli, ["policy", "start-session", "--policy", str(good), "--target", "not-a-node"]
    )
    assert result.exit_code == 2
    assert "InvalidTarget" in result.output
