"""The same broker on PostgreSQL (``--database-url``), exercised through the real clients."""

from __future__ import annotations

import json
from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def pg_broker(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_e2e")
        conn.execute("CREATE DATABASE hatchway_e2e")
    url = postgres_url.rsplit("/", 1)[0] + "/hatchway_e2e"
    b = start_broker(tmp_path_factory.mktemp("pg") / "data", "--database-url", url)
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def pg_node(pg_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(pg_broker, tmp_path_factory.mktemp("pgnode") / "state", "i-0fedcba987654321f")
    yield a
    a.stop()


def test_store_is_postgresql(pg_broker: Broker) -> None:
    assert "store: postgresql" in pg_broker.log.read_text()
    assert not (pg_broker.data_dir / "hatchway.db").exists()


def test_identity_documents_and_sessions_on_postgresql(pg_broker: Broker, pg_node: Agent) -> None:
    instance = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{pg_node.instance_id}"
    run_shell = f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/SSM-SessionManagerRunShell"
    key = user_with_policy(
        pg_broker,
        "pguser",
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": [
                        instance,
                        run_shell,
                    ],
                    "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
                },
                {
                    "Effect": "Allow",
                    "Action": ["ssm:TerminateSession", "ssm:DescribeSessions"],
                    "Resource": "*",
                },
            ],
        },
    )
    ssm = pg_broker.client("ssm", *key)
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=pg_node.instance_id)
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    out = ssm.start_session(Target=pg_node.instance_id, DocumentName="SSM-SessionManagerRunShell")
    assert out["SessionId"].startswith("pguser-")
    ssm.terminate_session(SessionId=out["SessionId"])
    hist = ssm.describe_sessions(State="History")["Sessions"]
    assert [s["SessionId"] for s in hist] == [out["SessionId"]]
    docs = pg_broker.client("ssm").list_documents(Filters=[{"Key": "Owner", "Values": ["Amazon"]}])[
        "DocumentIdentifiers"
    ]
    assert "AWS-StartSSHSession" in [d["Name"] for d in docs]
    pg_broker.client("ssm").create_document(
        Name="pg-doc",
        DocumentType="Session",
        Content=json.dumps(
            {
                "schemaVersion": "1.0",
                "description": "x",
                "sessionType": "Standard_Stream",
                "inputs": {},
            }
        ),
    )
    assert pg_broker.client("ssm").describe_document(Name="pg-doc")["Document"]["Owner"] == ACCOUNT
