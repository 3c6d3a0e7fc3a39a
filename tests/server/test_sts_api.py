"""STS through boto3 and the aws CLI: caller identity, AssumeRole with trust, session policies
and session tags; role sessions then start Session Manager sessions under their own names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import (
    ACCOUNT,
    ADMIN_KEY,
    Agent,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
    user_with_policy,
)

TARGET = "i-0a1b2c3d4e5f60718"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("sts") / "data")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("node") / "state", TARGET)
    yield a
    a.stop()


def _trust(principal: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": principal},
                    "Action": ["sts:AssumeRole", "sts:TagSession"],
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def role(broker: Broker) -> str:
    iam = broker.client("iam")
    iam.create_role(
        RoleName="Operators",
        AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:root"),
        Tags=[{"Key": "SSMSessionRunAs", "Value": "ops"}],
    )
    iam.put_role_policy(
        RoleName="Operators",
        PolicyName="sessions",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": [
                            "ssm:StartSession",
                            "ssm:DescribeSessions",
                            "ssm:TerminateSession",
                        ],
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    return f"arn:aws:iam::{ACCOUNT}:role/Operators"


def _assumer(broker: Broker) -> tuple[str, str]:
    return user_with_policy(
        broker,
        "assumer",
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"], "Resource": "*"}
            ],
        },
    )


@pytest.fixture(scope="module")
def assumer(broker: Broker, role: str) -> tuple[str, str]:
    return _assumer(broker)


def test_get_caller_identity(broker: Broker) -> None:
    me = broker.client("sts").get_caller_identity()
    assert me["Account"] == ACCOUNT
    assert me["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/admin"
    assert me["UserId"].startswith("AIDA")
    out = broker.aws_json("sts", "get-caller-identity")
    assert out["Arn"] == me["Arn"]


def test_assume_role_and_use_the_session(
    broker: Broker, node: Agent, role: str, assumer: tuple[str, str]
) -> None:
    sts = broker.client("sts", *assumer)
    creds = sts.assume_role(RoleArn=role, RoleSessionName="alice@example.com", DurationSeconds=900)
    c = creds["Credentials"]
    assert c["AccessKeyId"].startswith("ASIA")
    assert creds["AssumedRoleUser"]["Arn"] == (
        f"arn:aws:sts::{ACCOUNT}:assumed-role/Operators/alice@example.com"
    )
    session = (c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
    me = broker.client("sts", *session).get_caller_identity()
    assert me["Arn"] == creds["AssumedRoleUser"]["Arn"]
    assert me["UserId"] == creds["AssumedRoleUser"]["AssumedRoleId"]
    ssm = broker.client("ssm", *session)
    started = ssm.start_session(Target=TARGET)
    assert started["SessionId"].startswith("alice@example.com-")
    ssm.terminate_session(SessionId=started["SessionId"])
    # Without the session token the temporary key is refused.
    with pytest.raises(ClientError) as exc:
        broker.client("ssm", c["AccessKeyId"], c["SecretAccessKey"]).describe_sessions(
            State="Active"
        )
    assert exc.value.response["Error"]["Code"] in (
        "UnrecognizedClientException",
        "InvalidSignatureException",
    )


def test_session_policy_narrows_the_role(
    broker: Broker, node: Agent, role: str, assumer: tuple[str, str]
) -> None:
    narrow = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "ssm:DescribeSessions", "Resource": "*"}],
        }
    )
    c = broker.client("sts", *assumer).assume_role(
        RoleArn=role, RoleSessionName="narrow", Policy=narrow
    )["Credentials"]
    ssm = broker.client("ssm", c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
    ssm.describe_sessions(State="Active")
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=TARGET)
    msg = exc.value.response["Error"]["Message"]
    assert msg.startswith(
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/Operators/narrow is not "
        "authorized to perform: ssm:StartSession on resource: "
    )
    assert msg.endswith("because no session policy allows the ssm:StartSession action")


def test_trust_policy_must_allow(broker: Broker, role: str) -> None:
    iam = broker.client("iam")
    # The trusted user must exist: IAM refuses a trust policy naming one that does not.
    iam.create_user(UserName="someone-else")
    iam.create_role(
        RoleName="Locked",
        AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:user/someone-else"),
    )
    key = _outsider(broker)
    with pytest.raises(ClientError) as exc:
        broker.client("sts", *key).assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/Locked", RoleSessionName="xx"
        )
    err = exc.value.response["Error"]
    assert err["Code"] == "AccessDenied"
    assert f"sts:AssumeRole on resource: arn:aws:iam::{ACCOUNT}:role/Locked" in err["Message"]
    with pytest.raises(ClientError) as exc:
        broker.client("sts", *key).assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/NoSuchRole", RoleSessionName="xx"
        )
    assert exc.value.response["Error"]["Code"] == "AccessDenied"


def _outsider(broker: Broker) -> tuple[str, str]:
    return user_with_policy(
        broker,
        "outsider",
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
        },
    )


def test_malformed_session_policy_and_duration(
    broker: Broker, role: str, assumer: tuple[str, str]
) -> None:
    sts = broker.client("sts", *assumer)
    with pytest.raises(ClientError) as exc:
        sts.assume_role(RoleArn=role, RoleSessionName="bad", Policy='{"Statement": []}')
    assert exc.value.response["Error"]["Code"] == "MalformedPolicyDocument"
    with pytest.raises(ClientError) as exc:
        sts.assume_role(RoleArn=role, RoleSessionName="long", DurationSeconds=43200)
    assert exc.value.response["Error"]["Code"] == "ValidationError"


def test_session_tags_feed_principal_tag_conditions(
    broker: Broker, node: Agent, role: str, assumer: tuple[str, str]
) -> None:
    iam = broker.client("iam")
    iam.create_role(
        RoleName="Tagged", AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:root")
    )
    iam.put_role_policy(
        RoleName="Tagged",
        PolicyName="p",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "ssm:StartSession",
                        "Resource": "*",
                        "Condition": {"StringEquals": {"aws:PrincipalTag/team": "blue"}},
                    }
                ],
            }
        ),
    )
    sts = broker.client("sts", *assumer)

    def start(tags: list[dict[str, str]]) -> Any:
        c = sts.assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/Tagged", RoleSessionName="tagged", Tags=tags
        )["Credentials"]
        return broker.client(
            "ssm", c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]
        ).start_session(Target=TARGET)

    out = start([{"Key": "team", "Value": "blue"}])
    broker.client("ssm").terminate_session(SessionId=out["SessionId"])
    with pytest.raises(ClientError):
        start([{"Key": "team", "Value": "red"}])


def test_scp_file_binds_even_the_admin(tmp_path: Path) -> None:
    scp = tmp_path / "scp.json"
    scp.write_text(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "*", "Resource": "*"},
                    {"Effect": "Deny", "Action": "ssm:CreateActivation", "Resource": "*"},
                ],
            }
        )
    )
    b = start_broker(tmp_path / "data", "--scp-file", str(scp))
    try:
        with pytest.raises(ClientError) as exc:
            b.client("ssm").create_activation(IamRole="SSMServiceRole")
        msg = exc.value.response["Error"]["Message"]
        assert msg == (
            f"User: arn:aws:iam::{ACCOUNT}:user/admin is not authorized to perform: "
            "ssm:CreateActivation with an explicit deny in a service control policy"
        )
        assert b.client("ssm").describe_activations()["ActivationList"] == []
        assert b.client("sts").get_caller_identity()["Account"] == ACCOUNT
    finally:
        stop_broker(b)
    assert ADMIN_KEY
