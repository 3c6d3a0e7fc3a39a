"""The broker's IAM API through boto3 and the aws CLI: shapes, errors, limits, enforcement.

Every failing call is followed by a check that nothing changed. Names are unique per test so
that the tests share one broker (``broker`` is module-scoped).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

Broker = Any  # harness.broker.Broker
ACCOUNT = "123456789012"  # the account the conftest broker runs with
ARN = f"arn:aws:iam::{ACCOUNT}"
TRUST: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ssm.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], resource: str = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: str | list[str], resource: str = "*") -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource}


def error(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """Call ``fn`` expecting a ClientError; its ``Error`` with the HTTP status added."""
    with pytest.raises(ClientError) as exc:
        fn(**kwargs)
    out: dict[str, Any] = dict(exc.value.response["Error"])
    out["Status"] = exc.value.response["ResponseMetadata"]["HTTPStatusCode"]
    return out


@pytest.fixture(scope="module")
def iam(broker: Broker) -> Any:
    return broker.client("iam")


def user_names(iam: Any) -> set[str]:
    return {u["UserName"] for u in iam.list_users(MaxItems=1000)["Users"]}


def policy_arns(iam: Any) -> set[str]:
    return {p["Arn"] for p in iam.list_policies(Scope="Local", MaxItems=1000)["Policies"]}


# -- users ------------------------------------------------------------------------------------


def test_user_lifecycle(iam: Any) -> None:
    out = iam.create_user(UserName="u-life", Path="/eng/", Tags=[{"Key": "team", "Value": "a"}])
    user = out["User"]
    assert user["UserName"] == "u-life"
    assert user["Path"] == "/eng/"
    assert user["Arn"] == f"{ARN}:user/eng/u-life"
    assert user["UserId"].startswith("AIDA") and len(user["UserId"]) == 21
    assert user["Tags"] == [{"Key": "team", "Value": "a"}]
    got = iam.get_user(UserName="u-life")["User"]
    assert got["UserId"] == user["UserId"]
    assert got["CreateDate"] == user["CreateDate"]
    listed = iam.list_users(PathPrefix="/eng/")["Users"]
    assert [u["UserName"] for u in listed] == ["u-life"]
    assert "u-life" not in {u["UserName"] for u in iam.list_users(PathPrefix="/ops/")["Users"]}
    iam.delete_user(UserName="u-life")
    assert "u-life" not in user_names(iam)


def test_get_user_defaults_to_caller(iam: Any) -> None:
    assert iam.get_user()["User"]["UserName"] == "admin"


def test_list_users_pagination(iam: Any) -> None:
    for i in range(5):
        iam.create_user(UserName=f"u-page-{i}", Path="/page/")
    first = iam.list_users(PathPrefix="/page/", MaxItems=2)
    assert first["IsTruncated"] is True and len(first["Users"]) == 2
    names = [u["UserName"] for u in first["Users"]]
    marker = first["Marker"]
    while marker:
        nxt = iam.list_users(PathPrefix="/page/", MaxItems=2, Marker=marker)
        names += [u["UserName"] for u in nxt["Users"]]
        marker = nxt.get("Marker")
    assert names == [f"u-page-{i}" for i in range(5)]
    paginated = iam.get_paginator("list_users").paginate(
        PathPrefix="/page/", PaginationConfig={"PageSize": 3}
    )
    assert [u["UserName"] for p in paginated for u in p["Users"]] == names


def test_duplicate_user(iam: Any) -> None:
    iam.create_user(UserName="u-dup")
    before = iam.get_user(UserName="u-dup")["User"]
    err = error(iam.create_user, UserName="u-dup", Path="/other/")
    assert err["Code"] == "EntityAlreadyExists"
    assert err["Message"] == "User with name u-dup already exists."
    assert err["Status"] == 409
    # IAM names are unique regardless of case.
    err = error(iam.create_user, UserName="U-DUP")
    assert err["Code"] == "EntityAlreadyExists"
    assert iam.get_user(UserName="u-dup")["User"] == before
    assert "U-DUP" not in user_names(iam)


def test_unknown_user(iam: Any) -> None:
    err = error(iam.get_user, UserName="nobody")
    assert err == {
        "Code": "NoSuchEntity",
        "Type": "Sender",
        "Status": 404,
        "Message": "The user with name nobody cannot be found.",
    }
    assert error(iam.delete_user, UserName="nobody")["Code"] == "NoSuchEntity"


def test_user_name_too_long(iam: Any) -> None:
    before = user_names(iam)
    err = error(iam.create_user, UserName="x" * 200)
    assert err["Code"] == "ValidationError"
    assert err["Message"] == (
        f"1 validation error detected: Value '{'x' * 200}' at 'userName' failed to satisfy "
        "constraint: Member must have length less than or equal to 64"
    )
    assert user_names(iam) == before


def test_delete_user_conflicts(iam: Any) -> None:
    iam.create_user(UserName="u-del")
    iam.create_group(GroupName="g-del")
    key = iam.create_access_key(UserName="u-del")["AccessKey"]["AccessKeyId"]
    iam.put_user_policy(UserName="u-del", PolicyName="p", PolicyDocument=doc(allow("s3:*")))
    iam.attach_user_policy(
        UserName="u-del", PolicyArn="arn:aws:iam::aws:policy/AmazonSSMReadOnlyAccess"
    )
    iam.add_user_to_group(UserName="u-del", GroupName="g-del")
    steps = [
        (
            "Cannot delete entity, must delete access keys first.",
            lambda: iam.delete_access_key(UserName="u-del", AccessKeyId=key),
        ),
        (
            "Cannot delete entity, must delete policies first.",
            lambda: iam.delete_user_policy(UserName="u-del", PolicyName="p"),
        ),
        (
            "Cannot delete entity, must detach all policies first.",
            lambda: iam.detach_user_policy(
                UserName="u-del", PolicyArn="arn:aws:iam::aws:policy/AmazonSSMReadOnlyAccess"
            ),
        ),
        (
            "Cannot delete entity, must remove users from group first.",
            lambda: iam.remove_user_from_group(UserName="u-del", GroupName="g-del"),
        ),
    ]
    for message, fix in steps:
        err = error(iam.delete_user, UserName="u-del")
        assert (err["Code"], err["Message"], err["Status"]) == ("DeleteConflict", message, 409)
        assert iam.get_user(UserName="u-del")["User"]["UserName"] == "u-del"
        fix()
    iam.delete_user(UserName="u-del")
    assert error(iam.get_user, UserName="u-del")["Code"] == "NoSuchEntity"


# -- groups -----------------------------------------------------------------------------------


def test_groups_and_membership(iam: Any) -> None:
    group = iam.create_group(GroupName="g-dev", Path="/teams/")["Group"]
    assert group["Arn"] == f"{ARN}:group/teams/g-dev" and group["GroupId"].startswith("AGPA")
    err = error(iam.create_group, GroupName="g-dev")
    assert (err["Code"], err["Message"]) == (
        "EntityAlreadyExists",
        "Group with name g-dev already exists.",
    )
    iam.create_user(UserName="u-member")
    iam.add_user_to_group(GroupName="g-dev", UserName="u-member")
    iam.add_user_to_group(GroupName="g-dev", UserName="u-member")  # idempotent
    got = iam.get_group(GroupName="g-dev")
    assert got["Group"]["GroupName"] == "g-dev"
    assert [u["UserName"] for u in got["Users"]] == ["u-member"]
    assert [g["GroupName"] for g in iam.list_groups_for_user(UserName="u-member")["Groups"]] == [
        "g-dev"
    ]
    assert "g-dev" in {g["GroupName"] for g in iam.list_groups(PathPrefix="/teams/")["Groups"]}

    err = error(iam.add_user_to_group, GroupName="g-none", UserName="u-member")
    assert err["Message"] == "The group with name g-none cannot be found."
    err = error(iam.add_user_to_group, GroupName="g-dev", UserName="u-none")
    assert err["Message"] == "The user with name u-none cannot be found."
    assert [u["UserName"] for u in iam.get_group(GroupName="g-dev")["Users"]] == ["u-member"]

    err = error(iam.delete_group, GroupName="g-dev")
    assert (err["Code"], err["Message"]) == (
        "DeleteConflict",
        "Cannot delete entity, must remove users from group first.",
    )
    iam.remove_user_from_group(GroupName="g-dev", UserName="u-member")
    assert iam.list_groups_for_user(UserName="u-member")["Groups"] == []
    iam.put_group_policy(GroupName="g-dev", PolicyName="gp", PolicyDocument=doc(allow("s3:*")))
    err = error(iam.delete_group, GroupName="g-dev")
    assert err["Message"] == "Cannot delete entity, must delete policies first."
    iam.delete_group_policy(GroupName="g-dev", PolicyName="gp")
    iam.delete_group(GroupName="g-dev")
    assert error(iam.get_group, GroupName="g-dev")["Code"] == "NoSuchEntity"


def test_groups_per_user_limit(iam: Any) -> None:
    iam.create_user(UserName="u-joiner")
    for i in range(10):
        iam.create_group(GroupName=f"g-lim-{i}")
        iam.add_user_to_group(GroupName=f"g-lim-{i}", UserName="u-joiner")
    iam.create_group(GroupName="g-lim-10")
    err = error(iam.add_user_to_group, GroupName="g-lim-10", UserName="u-joiner")
    assert (err["Code"], err["Message"], err["Status"]) == (
        "LimitExceeded",
        "Cannot exceed quota for GroupsPerUser: 10",
        409,
    )
    assert len(iam.list_groups_for_user(UserName="u-joiner")["Groups"]) == 10
    assert iam.get_group(GroupName="g-lim-10")["Users"] == []


# -- roles ------------------------------------------------------------------------------------


def test_role_lifecycle(iam: Any) -> None:
    role = iam.create_role(
        RoleName="r-app",
        Path="/svc/",
        AssumeRolePolicyDocument=json.dumps(TRUST),
        Description="app role",
        MaxSessionDuration=7200,
        Tags=[{"Key": "env", "Value": "dev"}],
    )["Role"]
    assert role["Arn"] == f"{ARN}:role/svc/r-app" and role["RoleId"].startswith("AROA")
    assert role["AssumeRolePolicyDocument"] == TRUST  # botocore URL-decodes and parses it
    got = iam.get_role(RoleName="r-app")["Role"]
    assert got["Description"] == "app role" and got["MaxSessionDuration"] == 7200
    assert got["Tags"] == [{"Key": "env", "Value": "dev"}]
    assert "r-app" in {r["RoleName"] for r in iam.list_roles(PathPrefix="/svc/")["Roles"]}
    new_trust = {
        **TRUST,
        "Statement": [{**TRUST["Statement"][0], "Principal": {"AWS": f"{ARN}:root"}}],
    }
    iam.update_assume_role_policy(RoleName="r-app", PolicyDocument=json.dumps(new_trust))
    assert iam.get_role(RoleName="r-app")["Role"]["AssumeRolePolicyDocument"] == new_trust
    err = error(iam.create_role, RoleName="r-app", AssumeRolePolicyDocument=json.dumps(TRUST))
    assert err["Message"] == "Role with name r-app already exists."
    iam.attach_role_policy(
        RoleName="r-app", PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    )
    err = error(iam.delete_role, RoleName="r-app")
    assert err["Message"] == "Cannot delete entity, must detach all policies first."
    iam.detach_role_policy(
        RoleName="r-app", PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    )
    iam.delete_role(RoleName="r-app")
    assert error(iam.get_role, RoleName="r-app")["Message"] == (
        "The role with name r-app cannot be found."
    )


def test_malformed_trust_policy(iam: Any) -> None:
    no_principal = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}],
    }
    err = error(
        iam.create_role, RoleName="r-bad", AssumeRolePolicyDocument=json.dumps(no_principal)
    )
    assert err["Code"] == "MalformedPolicyDocument" and err["Status"] == 400
    assert err["Message"] == (
        "Invalid principal in policy: com.amazon.balsa.error.InvalidPolicyException: "
        "The passed in policy has a statement with no principals!"
    )
    assert error(iam.get_role, RoleName="r-bad")["Code"] == "NoSuchEntity"
    iam.create_role(RoleName="r-keep", AssumeRolePolicyDocument=json.dumps(TRUST))
    err = error(iam.update_assume_role_policy, RoleName="r-keep", PolicyDocument="{not json")
    assert (err["Code"], err["Message"]) == ("MalformedPolicyDocument", "Syntax errors in policy.")
    assert iam.get_role(RoleName="r-keep")["Role"]["AssumeRolePolicyDocument"] == TRUST


# -- managed policies -------------------------------------------------------------------------


def test_managed_policy_versions(iam: Any) -> None:
    v1 = doc(allow("s3:GetObject"))
    pol = iam.create_policy(
        PolicyName="p-ver", Path="/team/", PolicyDocument=v1, Description="versions"
    )["Policy"]
    arn = pol["Arn"]
    assert arn == f"{ARN}:policy/team/p-ver"
    assert pol["DefaultVersionId"] == "v1" and pol["AttachmentCount"] == 0
    assert pol["PolicyId"].startswith("ANPA")
    got = iam.get_policy(PolicyArn=arn)["Policy"]
    assert got["Description"] == "versions" and got["IsAttachable"] is True
    version = iam.get_policy_version(PolicyArn=arn, VersionId="v1")["PolicyVersion"]
    assert version["Document"] == json.loads(v1) and version["IsDefaultVersion"] is True

    for i in range(2, 6):
        out = iam.create_policy_version(
            PolicyArn=arn, PolicyDocument=doc(allow(f"s3:Get{i}")), SetAsDefault=(i == 3)
        )["PolicyVersion"]
        assert out["VersionId"] == f"v{i}" and out["IsDefaultVersion"] is (i == 3)
    err = error(iam.create_policy_version, PolicyArn=arn, PolicyDocument=doc(allow("s3:*")))
    assert (err["Code"], err["Message"], err["Status"]) == (
        "LimitExceeded",
        "A managed policy can have up to 5 versions. Before you create a new version, "
        "you must delete an existing version.",
        409,
    )
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    assert sorted(v["VersionId"] for v in versions) == ["v1", "v2", "v3", "v4", "v5"]
    assert [v["VersionId"] for v in versions if v["IsDefaultVersion"]] == ["v3"]
    assert iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"] == "v3"

    err = error(iam.delete_policy_version, PolicyArn=arn, VersionId="v3")
    assert (err["Code"], err["Message"]) == (
        "DeleteConflict",
        "Cannot delete the default version of a policy.",
    )
    err = error(iam.get_policy_version, PolicyArn=arn, VersionId="v9")
    assert (err["Code"], err["Message"]) == (
        "NoSuchEntity",
        f"Policy {arn} version v9 does not exist or is not attachable.",
    )
    iam.set_default_policy_version(PolicyArn=arn, VersionId="v5")
    assert iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"] == "v5"

    err = error(iam.delete_policy, PolicyArn=arn)
    assert (err["Code"], err["Message"]) == (
        "DeleteConflict",
        "This policy has more than one version. Before you delete a policy, you must delete "
        "the policy's versions. The default version is deleted with the policy.",
    )
    for v in ("v1", "v2", "v3", "v4"):
        iam.delete_policy_version(PolicyArn=arn, VersionId=v)
    iam.delete_policy(PolicyArn=arn)
    err = error(iam.get_policy, PolicyArn=arn)
    assert (err["Code"], err["Message"]) == ("NoSuchEntity", f"Policy {arn} was not found.")


def test_malformed_managed_policies(iam: Any) -> None:
    before = policy_arns(iam)
    cases = {
        "{": "Syntax errors in policy.",
        json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject"}]}
        ): "Policy statement must contain resources.",
        json.dumps(
            {"Statement": [allow("s3:GetObject")]}
        ): "Policy document must be version 2012-10-17 or greater.",
        doc(
            allow("s3:GetObject", Principal={"AWS": "*"})
        ): "Policy document should not specify a principal.",
    }
    for text, message in cases.items():
        err = error(iam.create_policy, PolicyName="p-bad", PolicyDocument=text)
        assert (err["Code"], err["Message"], err["Status"]) == (
            "MalformedPolicyDocument",
            message,
            400,
        )
    huge = doc(
        *[allow(f"s3:GetObject{i:04d}", f"arn:aws:s3:::bucket-{i:04d}/*") for i in range(120)]
    )
    err = error(iam.create_policy, PolicyName="p-bad", PolicyDocument=huge)
    assert (err["Code"], err["Message"], err["Status"]) == (
        "LimitExceeded",
        "Cannot exceed quota for PolicySize: 6144",
        409,
    )
    assert policy_arns(iam) == before
    iam.create_policy(PolicyName="p-dup", PolicyDocument=doc(allow("s3:*")))
    err = error(
        iam.create_policy, PolicyName="p-dup", Path="/x/", PolicyDocument=doc(allow("s3:*"))
    )
    assert (err["Code"], err["Message"]) == (
        "EntityAlreadyExists",
        "A policy called p-dup already exists. Duplicate names are not allowed.",
    )
    arn = f"{ARN}:policy/p-dup"
    err = error(iam.create_policy_version, PolicyArn=arn, PolicyDocument="[]")
    assert err["Code"] == "MalformedPolicyDocument"
    assert [v["VersionId"] for v in iam.list_policy_versions(PolicyArn=arn)["Versions"]] == ["v1"]


def test_list_policies_scope_and_attached(iam: Any) -> None:
    arn = iam.create_policy(PolicyName="p-scope", PolicyDocument=doc(allow("ssm:*")))["Policy"][
        "Arn"
    ]
    aws = {p["Arn"] for p in iam.list_policies(Scope="AWS")["Policies"]}
    local = {p["Arn"] for p in iam.list_policies(Scope="Local", MaxItems=1000)["Policies"]}
    assert "arn:aws:iam::aws:policy/AdministratorAccess" in aws and arn not in aws
    assert arn in local and not any(a.startswith("arn:aws:iam::aws:") for a in local)
    attached = {p["Arn"] for p in iam.list_policies(OnlyAttached=True, MaxItems=1000)["Policies"]}
    assert "arn:aws:iam::aws:policy/AdministratorAccess" in attached and arn not in attached
    iam.create_group(GroupName="g-scope")
    iam.attach_group_policy(GroupName="g-scope", PolicyArn=arn)
    pol = iam.get_policy(PolicyArn=arn)["Policy"]
    assert pol["AttachmentCount"] == 1
    err = error(iam.delete_policy, PolicyArn=arn)
    assert (err["Code"], err["Message"]) == (
        "DeleteConflict",
        "Cannot delete a policy attached to entities.",
    )
    assert iam.get_policy(PolicyArn=arn)["Policy"]["Arn"] == arn


# -- attachments ------------------------------------------------------------------------------


def test_attachments(iam: Any) -> None:
    arn = iam.create_policy(PolicyName="p-att", PolicyDocument=doc(allow("s3:*")))["Policy"]["Arn"]
    iam.create_user(UserName="u-att")
    iam.create_group(GroupName="g-att")
    iam.create_role(RoleName="r-att", AssumeRolePolicyDocument=json.dumps(TRUST))
    for kind, name in (("user", "u-att"), ("group", "g-att"), ("role", "r-att")):
        label = kind.capitalize()
        getattr(iam, f"attach_{kind}_policy")(**{f"{label}Name": name, "PolicyArn": arn})
        listed = getattr(iam, f"list_attached_{kind}_policies")(**{f"{label}Name": name})
        assert listed["AttachedPolicies"] == [{"PolicyName": "p-att", "PolicyArn": arn}]
    assert iam.get_policy(PolicyArn=arn)["Policy"]["AttachmentCount"] == 3
    missing = f"{ARN}:policy/p-missing"
    err = error(iam.attach_user_policy, UserName="u-att", PolicyArn=missing)
    assert (err["Code"], err["Message"]) == (
        "NoSuchEntity",
        f"Policy {missing} does not exist or is not attachable.",
    )
    err = error(iam.detach_user_policy, UserName="u-att", PolicyArn=missing)
    assert (err["Code"], err["Message"]) == ("NoSuchEntity", f"Policy {missing} was not found.")
    assert len(iam.list_attached_user_policies(UserName="u-att")["AttachedPolicies"]) == 1
    for kind, name in (("user", "u-att"), ("group", "g-att"), ("role", "r-att")):
        label = kind.capitalize()
        getattr(iam, f"detach_{kind}_policy")(**{f"{label}Name": name, "PolicyArn": arn})
    assert iam.get_policy(PolicyArn=arn)["Policy"]["AttachmentCount"] == 0


def test_attached_policies_limit(iam: Any) -> None:
    iam.create_user(UserName="u-many")
    arns = [
        iam.create_policy(PolicyName=f"p-many-{i}", PolicyDocument=doc(allow("s3:*")))["Policy"][
            "Arn"
        ]
        for i in range(11)
    ]
    for arn in arns[:10]:
        iam.attach_user_policy(UserName="u-many", PolicyArn=arn)
    err = error(iam.attach_user_policy, UserName="u-many", PolicyArn=arns[10])
    assert (err["Code"], err["Message"], err["Status"]) == (
        "LimitExceeded",
        "Cannot exceed quota for PoliciesPerUser: 10",
        409,
    )
    attached = iam.list_attached_user_policies(UserName="u-many")["AttachedPolicies"]
    assert {p["PolicyArn"] for p in attached} == set(arns[:10])


# -- inline policies --------------------------------------------------------------------------


def test_inline_policies(iam: Any) -> None:
    iam.create_user(UserName="u-inl")
    iam.create_group(GroupName="g-inl")
    iam.create_role(RoleName="r-inl", AssumeRolePolicyDocument=json.dumps(TRUST))
    text = doc(allow("ssm:StartSession"))
    for kind, name in (("user", "u-inl"), ("group", "g-inl"), ("role", "r-inl")):
        label = kind.capitalize()
        key = {f"{label}Name": name}
        getattr(iam, f"put_{kind}_policy")(**key, PolicyName="one", PolicyDocument=text)
        got = getattr(iam, f"get_{kind}_policy")(**key, PolicyName="one")
        assert got["PolicyDocument"] == json.loads(text) and got[f"{label}Name"] == name
        assert getattr(iam, f"list_{kind}_policies")(**key)["PolicyNames"] == ["one"]
        err = error(getattr(iam, f"get_{kind}_policy"), **key, PolicyName="two")
        assert (err["Code"], err["Message"]) == (
            "NoSuchEntity",
            f"The {kind} policy with name two cannot be found.",
        )
        getattr(iam, f"delete_{kind}_policy")(**key, PolicyName="one")
        assert getattr(iam, f"list_{kind}_policies")(**key)["PolicyNames"] == []
    err = error(
        iam.put_user_policy,
        UserName="u-inl",
        PolicyName="bad",
        PolicyDocument=json.dumps({"Statement": [{"Effect": "Allow", "Resource": "*"}]}),
    )
    assert (err["Code"], err["Message"]) == (
        "MalformedPolicyDocument",
        "Policy statement must contain actions.",
    )
    assert iam.list_user_policies(UserName="u-inl")["PolicyNames"] == []


def test_inline_policy_aggregate_size(iam: Any) -> None:
    iam.create_user(UserName="u-size")
    stmts = [allow(f"s3:GetObject{i:03d}", f"arn:aws:s3:::b{i:03d}/*") for i in range(30)]
    first = doc(*stmts[:16])
    iam.put_user_policy(UserName="u-size", PolicyName="a", PolicyDocument=first)
    err = error(
        iam.put_user_policy, UserName="u-size", PolicyName="b", PolicyDocument=doc(*stmts[16:])
    )
    assert (err["Code"], err["Message"], err["Status"]) == (
        "LimitExceeded",
        "Maximum policy size of 2048 bytes exceeded for user u-size",
        409,
    )
    assert iam.list_user_policies(UserName="u-size")["PolicyNames"] == ["a"]
    # Replacing a policy counts its new text, not the old one.
    iam.put_user_policy(UserName="u-size", PolicyName="a", PolicyDocument=doc(*stmts[16:]))


# -- access keys ------------------------------------------------------------------------------


def test_access_keys(broker: Broker, iam: Any) -> None:
    iam.create_user(UserName="u-keys")
    k1 = iam.create_access_key(UserName="u-keys")["AccessKey"]
    assert k1["AccessKeyId"].startswith("AKIA") and len(k1["SecretAccessKey"]) >= 40
    assert k1["Status"] == "Active" and k1["UserName"] == "u-keys"
    k2 = iam.create_access_key(UserName="u-keys")["AccessKey"]
    err = error(iam.create_access_key, UserName="u-keys")
    assert (err["Code"], err["Message"], err["Status"]) == (
        "LimitExceeded",
        "Cannot exceed quota for AccessKeysPerUser: 2",
        409,
    )
    meta = iam.list_access_keys(UserName="u-keys")["AccessKeyMetadata"]
    assert {m["AccessKeyId"] for m in meta} == {k1["AccessKeyId"], k2["AccessKeyId"]}
    assert all("SecretAccessKey" not in m for m in meta)
    # The new key works: the user can ask who it is.
    sts = broker.client("sts", k1["AccessKeyId"], k1["SecretAccessKey"])
    assert sts.get_caller_identity()["Arn"] == f"{ARN}:user/u-keys"
    iam.update_access_key(UserName="u-keys", AccessKeyId=k1["AccessKeyId"], Status="Inactive")
    statuses = {
        m["AccessKeyId"]: m["Status"]
        for m in iam.list_access_keys(UserName="u-keys")["AccessKeyMetadata"]
    }
    assert statuses[k1["AccessKeyId"]] == "Inactive"
    err = error(iam.delete_access_key, UserName="u-keys", AccessKeyId="AKIAFAKEFAKEFAKE0000")
    assert (err["Code"], err["Message"]) == (
        "NoSuchEntity",
        "The Access Key with id AKIAFAKEFAKEFAKE0000 cannot be found.",
    )
    iam.delete_access_key(UserName="u-keys", AccessKeyId=k1["AccessKeyId"])
    iam.delete_access_key(UserName="u-keys", AccessKeyId=k2["AccessKeyId"])
    assert iam.list_access_keys(UserName="u-keys")["AccessKeyMetadata"] == []


def test_secrets_never_stored_in_clear(broker: Broker, iam: Any) -> None:
    iam.create_user(UserName="u-secret")
    secret = iam.create_access_key(UserName="u-secret")["AccessKey"]["SecretAccessKey"]
    for path in broker.data_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# -- boundaries and tags ----------------------------------------------------------------------


def test_permissions_boundary_api(iam: Any) -> None:
    arn = iam.create_policy(PolicyName="p-bound", PolicyDocument=doc(allow("ssm:*")))["Policy"][
        "Arn"
    ]
    iam.create_user(UserName="u-bound")
    iam.put_user_permissions_boundary(UserName="u-bound", PermissionsBoundary=arn)
    assert iam.get_user(UserName="u-bound")["User"]["PermissionsBoundary"] == {
        "PermissionsBoundaryType": "PermissionsBoundaryPolicy",
        "PermissionsBoundaryArn": arn,
    }
    assert iam.get_policy(PolicyArn=arn)["Policy"]["PermissionsBoundaryUsageCount"] == 1
    err = error(iam.delete_policy, PolicyArn=arn)
    assert err["Message"] == "Cannot delete a policy attached to entities."
    missing = f"{ARN}:policy/p-nope"
    err = error(iam.put_user_permissions_boundary, UserName="u-bound", PermissionsBoundary=missing)
    assert (err["Code"], err["Message"], err["Status"]) == (
        "NoSuchEntity",
        f"Scope ARN: {missing} does not exist or is not attachable.",
        404,
    )
    assert (
        iam.get_user(UserName="u-bound")["User"]["PermissionsBoundary"]["PermissionsBoundaryArn"]
        == arn
    )
    iam.delete_user_permissions_boundary(UserName="u-bound")
    assert "PermissionsBoundary" not in iam.get_user(UserName="u-bound")["User"]
    iam.create_role(
        RoleName="r-bound", AssumeRolePolicyDocument=json.dumps(TRUST), PermissionsBoundary=arn
    )
    assert (
        iam.get_role(RoleName="r-bound")["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"]
        == arn
    )
    iam.delete_role_permissions_boundary(RoleName="r-bound")
    assert "PermissionsBoundary" not in iam.get_role(RoleName="r-bound")["Role"]
    err = error(iam.create_user, UserName="u-bound-2", PermissionsBoundary=missing)
    assert err["Code"] == "NoSuchEntity"
    assert "u-bound-2" not in user_names(iam)


def test_tags(iam: Any) -> None:
    iam.create_user(UserName="u-tags", Tags=[{"Key": "a", "Value": "1"}])
    iam.tag_user(UserName="u-tags", Tags=[{"Key": "b", "Value": "2"}, {"Key": "A", "Value": "3"}])
    tags = iam.list_user_tags(UserName="u-tags")["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("A", "3"), ("b", "2")]
    iam.untag_user(UserName="u-tags", TagKeys=["b"])
    assert iam.list_user_tags(UserName="u-tags")["Tags"] == [{"Key": "A", "Value": "3"}]
    err = error(
        iam.tag_user,
        UserName="u-tags",
        Tags=[{"Key": "x", "Value": "1"}, {"Key": "X", "Value": "2"}],
    )
    assert (err["Code"], err["Message"]) == (
        "InvalidInput",
        "Duplicate tag keys found. Please note that Tag keys are case insensitive.",
    )
    err = error(
        iam.tag_user, UserName="u-tags", Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    )
    assert (err["Code"], err["Message"], err["Status"]) == (
        "LimitExceeded",
        "Cannot exceed quota for TagsPerUser: 50",
        409,
    )
    err = error(iam.tag_user, UserName="u-tags", Tags=[{"Key": "k" * 129, "Value": "v"}])
    assert err["Code"] == "ValidationError"
    assert err["Message"].startswith("1 validation error detected: ")
    assert "Member must have length less than or equal to 128" in err["Message"]
    assert iam.list_user_tags(UserName="u-tags")["Tags"] == [{"Key": "A", "Value": "3"}]
    iam.create_role(RoleName="r-tags", AssumeRolePolicyDocument=json.dumps(TRUST))
    iam.tag_role(RoleName="r-tags", Tags=[{"Key": "env", "Value": "prod"}])
    assert iam.list_role_tags(RoleName="r-tags")["Tags"] == [{"Key": "env", "Value": "prod"}]
    iam.untag_role(RoleName="r-tags", TagKeys=["env"])
    assert iam.list_role_tags(RoleName="r-tags")["Tags"] == []
    assert error(iam.list_user_tags, UserName="u-none")["Code"] == "NoSuchEntity"


# -- account authorization details ------------------------------------------------------------


def test_account_authorization_details(iam: Any) -> None:
    iam.create_user(UserName="u-auth")
    iam.put_user_policy(UserName="u-auth", PolicyName="inl", PolicyDocument=doc(allow("s3:*")))
    iam.create_group(GroupName="g-auth")
    iam.add_user_to_group(GroupName="g-auth", UserName="u-auth")
    out = iam.get_account_authorization_details(Filter=["User"], MaxItems=1000)
    assert out["GroupDetailList"] == [] and out["Policies"] == []
    users = {u["UserName"]: u for u in out["UserDetailList"]}
    assert users["u-auth"]["GroupList"] == ["g-auth"]
    assert users["u-auth"]["UserPolicyList"] == [
        {"PolicyName": "inl", "PolicyDocument": json.loads(doc(allow("s3:*")))}
    ]
    assert users["admin"]["AttachedManagedPolicies"] == [
        {
            "PolicyName": "AdministratorAccess",
            "PolicyArn": "arn:aws:iam::aws:policy/AdministratorAccess",
        }
    ]
    full = iam.get_account_authorization_details(MaxItems=1000)
    roles = {r["RoleName"]: r for r in full["RoleDetailList"]}
    assert roles["SSMServiceRole"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ssm.amazonaws.com"
    }
    policies = {p["PolicyName"]: p for p in full["Policies"]}
    admin = policies["AdministratorAccess"]
    assert admin["PolicyVersionList"][0]["Document"]["Statement"][0]["Action"] == "*"


# -- the aws CLI ------------------------------------------------------------------------------


def test_cli(broker: Broker) -> None:
    out = broker.aws_json("iam", "create-user", "--user-name", "u-cli", "--path", "/cli/")
    assert out["User"]["Arn"] == f"{ARN}:user/cli/u-cli"
    assert broker.aws_json("iam", "get-user", "--user-name", "u-cli")["User"]["Path"] == "/cli/"
    listed = broker.aws_json("iam", "list-users", "--path-prefix", "/cli/")
    assert [u["UserName"] for u in listed["Users"]] == ["u-cli"]
    pol = broker.aws_json(
        "iam",
        "create-policy",
        "--policy-name",
        "p-cli",
        "--policy-document",
        doc(allow("ssm:DescribeSessions")),
    )["Policy"]
    broker.aws_json("iam", "attach-user-policy", "--user-name", "u-cli", "--policy-arn", pol["Arn"])
    version = broker.aws_json(
        "iam", "get-policy-version", "--policy-arn", pol["Arn"], "--version-id", "v1"
    )
    assert version["PolicyVersion"]["Document"]["Statement"][0]["Action"] == (
        "ssm:DescribeSessions"
    )
    key = broker.aws_json("iam", "create-access-key", "--user-name", "u-cli")["AccessKey"]
    assert key["Status"] == "Active"
    proc = broker.aws("iam", "delete-user", "--user-name", "u-cli")
    assert proc.returncode != 0
    assert (
        "An error occurred (DeleteConflict) when calling the DeleteUser operation: "
        "Cannot delete entity, must delete access keys first."
    ) in proc.stderr
    proc = broker.aws(
        "iam",
        "put-user-policy",
        "--user-name",
        "u-cli",
        "--policy-name",
        "x",
        "--policy-document",
        '{"Version": "2012-10-17", "Statement": []}x',
    )
    assert proc.returncode != 0
    assert "(MalformedPolicyDocument)" in proc.stderr and "Syntax errors in policy." in proc.stderr
    broker.aws_json(
        "iam", "delete-access-key", "--user-name", "u-cli", "--access-key-id", key["AccessKeyId"]
    )
    broker.aws_json("iam", "detach-user-policy", "--user-name", "u-cli", "--policy-arn", pol["Arn"])
    broker.aws_json("iam", "delete-user", "--user-name", "u-cli")
    proc = broker.aws("iam", "get-user", "--user-name", "u-cli")
    assert "The user with name u-cli cannot be found." in proc.stderr


# -- enforcement: a non-admin user ------------------------------------------------------------


def _principal(
    broker: Broker,
    iam: Any,
    name: str,
    *statements: dict[str, Any],
    tags: list[dict[str, str]] | None = None,
) -> Any:
    iam.create_user(UserName=name, Tags=tags or [])
    if statements:
        iam.put_user_policy(UserName=name, PolicyName="perms", PolicyDocument=doc(*statements))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return broker.client("iam", key["AccessKeyId"], key["SecretAccessKey"])


def test_non_admin_only_what_policy_allows(broker: Broker, iam: Any) -> None:
    bob = _principal(broker, iam, "u-bob", allow(["iam:GetUser", "iam:ListUsers"]))
    assert bob.get_user()["User"]["UserName"] == "u-bob"
    assert "u-bob" in {u["UserName"] for u in bob.list_users(MaxItems=1000)["Users"]}
    err = error(bob.create_user, UserName="u-made-by-bob")
    assert (err["Code"], err["Status"]) == ("AccessDenied", 403)
    assert err["Message"] == (
        f"User: {ARN}:user/u-bob is not authorized to perform: iam:CreateUser on resource: "
        f"{ARN}:user/u-made-by-bob because no identity-based policy allows the iam:CreateUser "
        "action"
    )
    assert "u-made-by-bob" not in user_names(iam)
    # Policy changes take effect at once (cached policy sets are dropped on every IAM write).
    iam.put_user_policy(
        UserName="u-bob",
        PolicyName="more",
        PolicyDocument=doc(allow("iam:CreateUser", f"{ARN}:user/bobs/*")),
    )
    bob.create_user(UserName="u-bobs-own", Path="/bobs/")
    err = error(bob.create_user, UserName="u-elsewhere")
    assert err["Code"] == "AccessDenied"
    assert "u-elsewhere" not in user_names(iam)


def test_boundary_limits_user(broker: Broker, iam: Any) -> None:
    bound = iam.create_policy(
        PolicyName="p-only-get", PolicyDocument=doc(allow(["iam:Get*", "iam:List*"]))
    )["Policy"]["Arn"]
    carol = _principal(broker, iam, "u-carol", allow("iam:*"))
    carol.create_group(GroupName="g-carol-before")
    iam.put_user_permissions_boundary(UserName="u-carol", PermissionsBoundary=bound)
    assert carol.get_user()["User"]["UserName"] == "u-carol"
    err = error(carol.create_group, GroupName="g-carol-after")
    assert err["Message"] == (
        f"User: {ARN}:user/u-carol is not authorized to perform: iam:CreateGroup on resource: "
        f"{ARN}:group/g-carol-after because no permissions boundary allows the iam:CreateGroup "
        "action"
    )
    assert error(iam.get_group, GroupName="g-carol-after")["Code"] == "NoSuchEntity"


def test_explicit_deny_wins(broker: Broker, iam: Any) -> None:
    dave = _principal(broker, iam, "u-dave", allow("iam:*"), deny("iam:DeleteUser"))
    dave.create_user(UserName="u-dave-victim")
    err = error(dave.delete_user, UserName="u-dave-victim")
    assert err["Message"] == (
        f"User: {ARN}:user/u-dave is not authorized to perform: iam:DeleteUser on resource: "
        f"{ARN}:user/u-dave-victim with an explicit deny in an identity-based policy"
    )
    assert iam.get_user(UserName="u-dave-victim")["User"]["UserName"] == "u-dave-victim"
    # A group's deny applies to its members too.
    iam.create_group(GroupName="g-no-roles")
    iam.put_group_policy(
        GroupName="g-no-roles", PolicyName="deny", PolicyDocument=doc(deny("iam:CreateRole"))
    )
    iam.add_user_to_group(GroupName="g-no-roles", UserName="u-dave")
    err = error(dave.create_role, RoleName="r-dave", AssumeRolePolicyDocument=json.dumps(TRUST))
    assert "with an explicit deny in an identity-based policy" in err["Message"]


def test_principal_tags_reach_conditions(broker: Broker, iam: Any) -> None:
    stmt = allow("iam:CreateGroup", Condition={"StringEquals": {"aws:PrincipalTag/team": "blue"}})
    erin = _principal(broker, iam, "u-erin", stmt, tags=[{"Key": "team", "Value": "red"}])
    assert error(erin.create_group, GroupName="g-erin")["Code"] == "AccessDenied"
    iam.tag_user(UserName="u-erin", Tags=[{"Key": "team", "Value": "blue"}])
    erin.create_group(GroupName="g-erin")
    assert iam.get_group(GroupName="g-erin")["Group"]["GroupName"] == "g-erin"


def test_request_tags_reach_conditions(broker: Broker, iam: Any) -> None:
    stmt = allow(
        "iam:CreateUser", Condition={"StringEquals": {"aws:RequestTag/owner": "${aws:username}"}}
    )
    fay = _principal(broker, iam, "u-fay", stmt)
    assert error(fay.create_user, UserName="u-fay-1")["Code"] == "AccessDenied"
    err = error(fay.create_user, UserName="u-fay-1", Tags=[{"Key": "owner", "Value": "x"}])
    assert err["Code"] == "AccessDenied"
    fay.create_user(UserName="u-fay-1", Tags=[{"Key": "owner", "Value": "u-fay"}])


# -- the simulator ----------------------------------------------------------------------------


def test_simulate_custom_policy(iam: Any) -> None:
    out = iam.simulate_custom_policy(
        PolicyInputList=[
            doc(allow("s3:GetObject", "arn:aws:s3:::b/*"), deny("s3:GetObject", "arn:aws:s3:::b/x"))
        ],
        ActionNames=["s3:GetObject", "s3:PutObject"],
        ResourceArns=["arn:aws:s3:::b/y", "arn:aws:s3:::b/x"],
    )
    decisions = {
        (r["EvalActionName"], r["EvalResourceName"]): r["EvalDecision"]
        for r in out["EvaluationResults"]
    }
    assert decisions == {
        ("s3:GetObject", "arn:aws:s3:::b/y"): "allowed",
        ("s3:GetObject", "arn:aws:s3:::b/x"): "explicitDeny",
        ("s3:PutObject", "arn:aws:s3:::b/y"): "implicitDeny",
        ("s3:PutObject", "arn:aws:s3:::b/x"): "implicitDeny",
    }
    allowed = out["EvaluationResults"][0]
    assert allowed["MatchedStatements"][0]["SourcePolicyId"] == "PolicyInputList.1"
    err = error(iam.simulate_custom_policy, PolicyInputList=["{"], ActionNames=["s3:GetObject"])
    assert (err["Code"], err["Message"]) == ("MalformedPolicyDocument", "Syntax errors in policy.")
    page = iam.simulate_custom_policy(
        PolicyInputList=[doc(allow("s3:*"))], ActionNames=["s3:A", "s3:B", "s3:C"], MaxItems=2
    )
    assert page["IsTruncated"] is True and len(page["EvaluationResults"]) == 2


def test_simulate_principal_policy(iam: Any) -> None:
    bound = iam.create_policy(
        PolicyName="p-sim-bound", PolicyDocument=doc(allow(["ssm:*", "s3:*"]))
    )["Policy"]["Arn"]
    iam.create_user(
        UserName="u-sim", Tags=[{"Key": "team", "Value": "red"}], PermissionsBoundary=bound
    )
    iam.put_user_policy(
        UserName="u-sim",
        PolicyName="own",
        PolicyDocument=doc(allow(["ssm:StartSession", "ec2:RunInstances"])),
    )
    iam.create_group(GroupName="g-sim")
    iam.put_group_policy(
        GroupName="g-sim",
        PolicyName="tagged",
        PolicyDocument=doc(
            allow("s3:GetObject", Condition={"StringEquals": {"aws:PrincipalTag/team": "red"}})
        ),
    )
    iam.add_user_to_group(GroupName="g-sim", UserName="u-sim")
    out = iam.simulate_principal_policy(
        PolicySourceArn=f"{ARN}:user/u-sim",
        ActionNames=["ssm:StartSession", "ec2:RunInstances", "s3:GetObject", "s3:PutObject"],
    )
    results = {r["EvalActionName"]: r for r in out["EvaluationResults"]}
    assert results["ssm:StartSession"]["EvalDecision"] == "allowed"
    assert results["ssm:StartSession"]["MatchedStatements"][0]["SourcePolicyId"] == (
        "user_u-sim_own"
    )
    # Allowed by the identity policy, but not by the boundary.
    assert results["ec2:RunInstances"]["EvalDecision"] == "implicitDeny"
    assert results["ec2:RunInstances"]["PermissionsBoundaryDecisionDetail"] == {
        "AllowedByPermissionsBoundary": False
    }
    # The group's policy, through the user's tag.
    assert results["s3:GetObject"]["EvalDecision"] == "allowed"
    assert results["s3:PutObject"]["EvalDecision"] == "implicitDeny"
    err = error(
        iam.simulate_principal_policy,
        PolicySourceArn=f"{ARN}:user/u-sim-none",
        ActionNames=["s3:GetObject"],
    )
    assert (err["Code"], err["Message"]) == (
        "NoSuchEntity",
        "The user with name u-sim-none cannot be found.",
    )
    role_out = iam.simulate_principal_policy(
        PolicySourceArn=f"{ARN}:role/SSMServiceRole",
        ActionNames=["ssm:UpdateInstanceInformation", "ssm:StartSession"],
    )
    assert [r["EvalDecision"] for r in role_out["EvaluationResults"]] == ["allowed", "implicitDeny"]
