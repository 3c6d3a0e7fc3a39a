"""Two brokers on one PostgreSQL database: a change through one reaches the other's caches.

Broker B (with an API worker process beside its primary) caches what it authorizes with
(access keys, compiled policies, documents); broker A changes them. B must follow within about a
quarter of a second (the generation poll; LISTEN wakes it at once); the tests allow 5 s (3 s for
documents, see there) so that a loaded machine does not fail them, and bench/invalidation.py
measures the real delay.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from botocore.exceptions import ClientError
from harness import (
    ACCOUNT,
    Agent,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
    user_with_policy,
)

DEADLINE = 5.0  # seconds: generous; the mechanism's figure is in bench/invalidation.py
AUTH_ERRORS = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch"}


def error_code(call: Callable[[], object]) -> str | None:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return None


def eventually(check: Callable[[], bool], deadline: float = DEADLINE) -> bool:
    """Poll ``check`` until it holds or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while True:
        if check():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)


@pytest.fixture(scope="module")
def brokers(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Broker, Broker]]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_inval")
        conn.execute("CREATE DATABASE hatchway_inval")
    url = postgres_url.rsplit("/", 1)[0] + "/hatchway_inval"
    root = tmp_path_factory.mktemp("two")
    a = start_broker(root / "a", "--database-url", url)
    # One deployment: the brokers share the master key that seals secrets in the database.
    (root / "b").mkdir(mode=0o700)
    shutil.copy(root / "a" / "master.key", root / "b" / "master.key")
    # B serves the APIs from an API worker process: it follows the changes on its own.
    b = start_broker(root / "b", "--database-url", url, "--workers", "1")
    yield a, b
    stop_broker(b)
    stop_broker(a)


def test_access_key_deleted_through_one_broker_is_refused_by_the_other(
    brokers: tuple[Broker, Broker],
) -> None:
    a, b = brokers
    key = user_with_policy(
        a,
        "keyholder",
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "iam:ListUsers", "Resource": "*"}],
        },
    )
    sts_b = b.client("sts", *key)
    assert sts_b.get_caller_identity()["Arn"].endswith(":user/keyholder")  # B caches the key
    a.client("iam").delete_access_key(UserName="keyholder", AccessKeyId=key[0])
    assert eventually(lambda: error_code(sts_b.get_caller_identity) in AUTH_ERRORS)


def test_policy_detached_through_one_broker_is_denied_by_the_other(
    brokers: tuple[Broker, Broker],
) -> None:
    a, b = brokers
    iam_a = a.client("iam")
    arn = iam_a.create_policy(
        PolicyName="list-users",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iam:ListUsers", "Resource": "*"}],
            }
        ),
    )["Policy"]["Arn"]
    iam_a.create_user(UserName="detached")
    iam_a.attach_user_policy(UserName="detached", PolicyArn=arn)
    k = iam_a.create_access_key(UserName="detached")["AccessKey"]
    iam_b = b.client("iam", k["AccessKeyId"], k["SecretAccessKey"])
    iam_b.list_users()  # allowed; B caches the compiled policies
    iam_a.detach_user_policy(UserName="detached", PolicyArn=arn)
    assert eventually(lambda: error_code(iam_b.list_users) == "AccessDenied")
    iam_a.attach_user_policy(UserName="detached", PolicyArn=arn)  # and back
    assert eventually(lambda: error_code(iam_b.list_users) is None)


def test_document_changed_through_one_broker_is_seen_by_the_other(
    brokers: tuple[Broker, Broker],
) -> None:
    """StartSession on B resolves the document from B's cache; A tags the document, and a
    policy denying that tag holds on B. (The deadline is 3 s: before the invalidation
    mechanism, B's document cache expired after 5 s.)"""
    a, b = brokers
    doc = f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/SSM-SessionManagerRunShell"
    key = user_with_policy(
        a,
        "docuser",
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*"},
                {
                    "Effect": "Deny",
                    "Action": "ssm:StartSession",
                    "Resource": doc,
                    "Condition": {"StringEquals": {"ssm:resourceTag/frozen": "yes"}},
                },
            ],
        },
    )
    ssm_b = b.client("ssm", *key)

    def start() -> str | None:
        return error_code(
            lambda: ssm_b.start_session(
                Target="i-0123456789abcdef0", DocumentName="SSM-SessionManagerRunShell"
            )
        )

    # The preferences document does not exist until created (AWS's documented first step).
    a.client("ssm").create_document(
        Name="SSM-SessionManagerRunShell",
        DocumentType="Session",
        Content=json.dumps({"schemaVersion": "1.0", "sessionType": "Standard_Stream"}),
    )
    assert start() == "TargetNotConnected"  # authorized; no such node; B caches the document
    a.client("ssm").add_tags_to_resource(
        ResourceType="Document",
        ResourceId="SSM-SessionManagerRunShell",
        Tags=[{"Key": "frozen", "Value": "yes"}],
    )
    try:
        assert eventually(lambda: start() == "AccessDeniedException", deadline=3.0)
    finally:
        a.client("ssm").remove_tags_from_resource(
            ResourceType="Document", ResourceId="SSM-SessionManagerRunShell", TagKeys=["frozen"]
        )


@pytest.fixture(scope="module")
def node_on_b(
    brokers: tuple[Broker, Broker], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    agent = start_agent(brokers[1], tmp_path_factory.mktemp("inval-node") / "state")
    yield agent
    agent.stop()


def _node_keys(state_dir: Path) -> tuple[str, str]:
    keys = dict(
        line.split(" = ", 1) for line in (state_dir / "credentials").read_text().splitlines()[1:]
    )
    return keys["aws_access_key_id"], keys["aws_secret_access_key"]


def test_node_deregistered_through_one_broker_is_cut_off_by_the_other(
    brokers: tuple[Broker, Broker], node_on_b: Agent
) -> None:
    """The node's control channel is on B; A deregisters it: B closes the channel and
    refuses the node's credentials."""
    a, b = brokers
    ssm_node_b = b.client("ssm", *_node_keys(node_on_b.state_dir))
    assert error_code(ssm_node_b.describe_instance_information) not in AUTH_ERRORS
    a.client("ssm").deregister_managed_instance(InstanceId=node_on_b.instance_id)
    assert eventually(lambda: error_code(ssm_node_b.describe_instance_information) in AUTH_ERRORS)
    assert eventually(
        lambda: "control channel closed by the broker (code 4001)" in node_on_b.log.read_text()
    ), node_on_b.log.read_text()
