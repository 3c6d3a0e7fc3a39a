"""IAM through boto3 and the aws CLI against a running broker: UpdateRole, ListEntitiesForPolicy,
GetAccountSummary, the simulator's ResourceSpecificResults, AWS's reserved ``aws:`` tag keys,
trust policies naming missing principals, ``ManagedInstance`` tags needing an ``mi-`` id, and
AWS's answer to unsigned requests per protocol (issue 15, items 7, 8 and 13)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from harness import (
    ACCOUNT,
    ADMIN_KEY,
    ADMIN_SECRET,
    REGION,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
)

ALLOW_SSM = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*"}],
    }
)


def _trust(principal: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"}
            ],
        }
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("iamacct") / "data")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def iam(broker: Broker) -> Any:
    return broker.client("iam")


def _error(fn: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as exc:
        fn()
    return dict(exc.value.response["Error"]) | {
        "status": exc.value.response["ResponseMetadata"]["HTTPStatusCode"]
    }


# -- UpdateRole ---------------------------------------------------------------------------------


def test_update_role_sets_description_and_max_session_duration(broker: Broker, iam: Any) -> None:
    iam.create_role(RoleName="upd", AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:root"))
    broker.aws_json(
        "iam",
        "update-role",
        "--role-name",
        "upd",
        "--description",
        "operators",
        "--max-session-duration",
        "7200",
    )
    role = iam.get_role(RoleName="upd")["Role"]
    assert role["Description"] == "operators"
    assert role["MaxSessionDuration"] == 7200
    # The new maximum is the one AssumeRole enforces.
    iam.update_role(RoleName="upd", MaxSessionDuration=3600)
    assert iam.get_role(RoleName="upd")["Role"]["MaxSessionDuration"] == 3600
    assert iam.get_role(RoleName="upd")["Role"]["Description"] == "operators"  # kept
    import boto3

    lax = boto3.client(
        "iam",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    err = _error(lambda: lax.update_role(RoleName="upd", MaxSessionDuration=60))
    assert err["Code"] == "ValidationError"
    assert iam.get_role(RoleName="upd")["Role"]["MaxSessionDuration"] == 3600
    assert _error(lambda: iam.update_role(RoleName="nope", Description="x"))["Code"] == (
        "NoSuchEntity"
    )


# -- ListEntitiesForPolicy ----------------------------------------------------------------------


def test_list_entities_for_policy(iam: Any) -> None:
    arn = iam.create_policy(PolicyName="ents", PolicyDocument=ALLOW_SSM)["Policy"]["Arn"]
    iam.create_user(UserName="ent-u")
    iam.create_group(GroupName="ent-g")
    iam.create_role(
        RoleName="ent-r", AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:root")
    )
    iam.create_user(UserName="ent-b", PermissionsBoundary=arn)
    iam.attach_user_policy(UserName="ent-u", PolicyArn=arn)
    iam.attach_group_policy(GroupName="ent-g", PolicyArn=arn)
    iam.attach_role_policy(RoleName="ent-r", PolicyArn=arn)
    out = iam.list_entities_for_policy(PolicyArn=arn)
    assert [u["UserName"] for u in out["PolicyUsers"]] == ["ent-b", "ent-u"]
    assert [g["GroupName"] for g in out["PolicyGroups"]] == ["ent-g"]
    assert [r["RoleName"] for r in out["PolicyRoles"]] == ["ent-r"]
    assert out["PolicyRoles"][0]["RoleId"].startswith("AROA")
    roles_only = iam.list_entities_for_policy(PolicyArn=arn, EntityFilter="Role")
    assert roles_only["PolicyUsers"] == [] and len(roles_only["PolicyRoles"]) == 1
    boundary = iam.list_entities_for_policy(PolicyArn=arn, PolicyUsageFilter="PermissionsBoundary")
    assert [u["UserName"] for u in boundary["PolicyUsers"]] == ["ent-b"]
    assert boundary["PolicyRoles"] == []
    missing = f"arn:aws:iam::{ACCOUNT}:policy/none"
    err = _error(lambda: iam.list_entities_for_policy(PolicyArn=missing))
    assert (err["Code"], err["Message"]) == ("NoSuchEntity", f"Policy {missing} was not found.")


# -- GetAccountSummary --------------------------------------------------------------------------


def test_get_account_summary_counts_and_quotas(broker: Broker, iam: Any) -> None:
    before = iam.get_account_summary()["SummaryMap"]
    iam.create_user(UserName="summary-u")
    summary = broker.aws_json("iam", "get-account-summary")["SummaryMap"]
    assert summary["Users"] == before["Users"] + 1
    assert summary["Roles"] == len(iam.list_roles()["Roles"])
    for key in (
        "UsersQuota",
        "GroupsQuota",
        "RolesQuota",
        "PoliciesQuota",
        "PolicySizeQuota",
        "AssumeRolePolicySizeQuota",
        "AccessKeysPerUserQuota",
        "AttachedPoliciesPerRoleQuota",
        "VersionsPerPolicyQuota",
        "MFADevices",
        "MFADevicesInUse",
        "AccountMFAEnabled",
        "GlobalEndpointTokenVersion",
    ):
        assert key in summary, key
    assert summary["AccessKeysPerUserQuota"] == 2
    assert summary["AssumeRolePolicySizeQuota"] == 2048


# -- the simulator ------------------------------------------------------------------------------


def test_simulators_return_resource_specific_results_for_named_resources(iam: Any) -> None:
    doc = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0aaaaaaaaaaaaaaaa",
                }
            ],
        }
    )
    iam.create_user(UserName="sim-u")
    iam.put_user_policy(UserName="sim-u", PolicyName="p", PolicyDocument=doc)
    yes = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0aaaaaaaaaaaaaaaa"
    no = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0bbbbbbbbbbbbbbbb"
    principal = iam.simulate_principal_policy(
        PolicySourceArn=f"arn:aws:iam::{ACCOUNT}:user/sim-u",
        ActionNames=["ssm:StartSession"],
        ResourceArns=[yes, no],
    )
    custom = iam.simulate_custom_policy(
        PolicyInputList=[doc], ActionNames=["ssm:StartSession"], ResourceArns=[yes, no]
    )
    for out, source in ((principal, "user_sim-u_p"), (custom, "PolicyInputList.1")):
        results = out["EvaluationResults"]
        assert [r["EvalResourceName"] for r in results] == [yes, no]
        specific = [r["ResourceSpecificResults"] for r in results]
        assert [[s["EvalResourceName"] for s in x] for x in specific] == [[yes], [no]]
        assert [x[0]["EvalResourceDecision"] for x in specific] == ["allowed", "implicitDeny"]
        assert specific[0][0]["MatchedStatements"][0]["SourcePolicyId"] == source
        assert specific[1][0]["MatchedStatements"] == []
    # Without ResourceArns the simulation is on "*" and has no resource-specific results.
    plain = iam.simulate_custom_policy(PolicyInputList=[doc], ActionNames=["ssm:StartSession"])
    assert "ResourceSpecificResults" not in plain["EvaluationResults"][0]


# -- tags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda iam: iam.create_user(UserName="t-new", Tags=[{"Key": "aws:team", "Value": "x"}]),
        lambda iam: iam.tag_user(UserName="t-user", Tags=[{"Key": "AWS:team", "Value": "x"}]),
        lambda iam: iam.tag_role(RoleName="t-role", Tags=[{"Key": "aws:x", "Value": "y"}]),
        lambda iam: iam.create_role(
            RoleName="t-new-role",
            AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:root"),
            Tags=[{"Key": "ok", "Value": "1"}, {"Key": "aws:cloudformation:stack", "Value": "s"}],
        ),
    ],
)
def test_iam_refuses_reserved_aws_tag_keys(iam: Any, call: Any) -> None:
    if not any(u["UserName"] == "t-user" for u in iam.list_users()["Users"]):
        iam.create_user(UserName="t-user")
        iam.create_role(
            RoleName="t-role", AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:root")
        )
    err = _error(lambda: call(iam))
    assert (err["Code"], err["status"]) == ("InvalidInput", 400)
    assert "aws:" in err["Message"]
    names = {u["UserName"] for u in iam.list_users()["Users"]}
    assert "t-new" not in names
    assert "t-new-role" not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert iam.list_user_tags(UserName="t-user")["Tags"] == []
    assert iam.list_role_tags(RoleName="t-role")["Tags"] == []


def test_managed_instance_tags_need_an_mi_id(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A registered node with an EC2-style id is still not a ``ManagedInstance`` to tag (AWS:
    "You must specify the name of the managed node in the following format: mi-ID_number")."""
    node = start_agent(broker, tmp_path_factory.mktemp("ec2node") / "state", "i-0123456789abcdef0")
    try:
        ssm = broker.client("ssm")
        for call in (
            lambda: ssm.add_tags_to_resource(
                ResourceType="ManagedInstance",
                ResourceId=node.instance_id,
                Tags=[{"Key": "a", "Value": "b"}],
            ),
            lambda: ssm.list_tags_for_resource(
                ResourceType="ManagedInstance", ResourceId=node.instance_id
            ),
            lambda: ssm.remove_tags_from_resource(
                ResourceType="ManagedInstance", ResourceId=node.instance_id, TagKeys=["a"]
            ),
        ):
            assert _error(call)["Code"] == "InvalidResourceId"
    finally:
        node.stop()


# -- trust policies naming principals that do not exist ----------------------------------------


def test_trust_policy_naming_a_missing_principal_is_malformed(broker: Broker, iam: Any) -> None:
    ghost = f"arn:aws:iam::{ACCOUNT}:user/ghost"
    err = _error(
        lambda: iam.create_role(RoleName="haunted", AssumeRolePolicyDocument=_trust(ghost))
    )
    assert (err["Code"], err["status"]) == ("MalformedPolicyDocument", 400)
    assert err["Message"] == f'Invalid principal in policy: "AWS":"{ghost}"'
    assert "haunted" not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    proc = broker.aws(
        "iam",
        "create-role",
        "--role-name",
        "haunted",
        "--assume-role-policy-document",
        _trust(f"arn:aws:iam::{ACCOUNT}:role/no-such-role"),
    )
    assert proc.returncode != 0 and "Invalid principal in policy" in proc.stderr
    # Existing users and roles, the account and other accounts are accepted.
    iam.create_user(UserName="real")
    iam.create_role(
        RoleName="trusting",
        AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:user/real"),
    )
    iam.create_role(RoleName="other-acct", AssumeRolePolicyDocument=_trust("210987654321"))
    # UpdateAssumeRolePolicy checks the same way and changes nothing when it refuses.
    err = _error(
        lambda: iam.update_assume_role_policy(RoleName="trusting", PolicyDocument=_trust(ghost))
    )
    assert err["Code"] == "MalformedPolicyDocument"
    trust = iam.get_role(RoleName="trusting")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"]["AWS"] == f"arn:aws:iam::{ACCOUNT}:user/real"


# -- unsigned requests --------------------------------------------------------------------------


def _unsigned(broker: Broker, service: str) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=broker.url,
        region_name=REGION,
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )


def test_unsigned_requests_get_aws_answer_per_protocol(broker: Broker) -> None:
    ssm = _unsigned(broker, "ssm")
    err = _error(lambda: ssm.describe_sessions(State="Active"))
    assert (err["Code"], err["status"]) == ("MissingAuthenticationTokenException", 400)
    assert err["Message"] == "Request is missing Authentication Token"
    for service, call in (
        ("iam", lambda c: c.list_users()),
        ("sts", lambda c: c.get_caller_identity()),
    ):
        err = _error(lambda c=call, s=service: c(_unsigned(broker, s)))
        assert (err["Code"], err["status"]) == ("MissingAuthenticationToken", 403), service
        assert err["Message"] == "Request is missing Authentication Token"
    # A bare Query POST with no Authorization at all (what curl sends).
    req = urllib.request.Request(
        broker.url + "/",
        data=b"Action=ListUsers&Version=2010-05-08",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(req, timeout=10)
    assert raw.value.code == 403
    body = raw.value.read().decode()
    assert "<Code>MissingAuthenticationToken</Code>" in body
    assert "Request is missing Authentication Token" in body
