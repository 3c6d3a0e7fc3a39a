"""Audit events and session records through the API, governed by IAM (docs/audit.md).

A real broker and agent; boto3, the real ``aws`` CLI and ``hatchway audit|sessions
--endpoint-url`` with the AWS credential chain read what IAM allows them and get
AccessDenied for the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError
from harness import (
    ADMIN_KEY,
    ADMIN_SECRET,
    REGION,
    Agent,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
    user_with_policy,
)
from harness.wsclient import Client

from hatchway.server.awswire.models import MODELS_DIR

BIN = Path(sys.executable).parent
TARGET = "i-0a1b2c3d4e5f60718"
READER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "hatchway:ListSessionRecordings",
                "hatchway:GetSessionRecording",
                "hatchway:ListPortConnections",
                "cloudtrail:LookupEvents",
            ],
            "Resource": "*",
        }
    ],
}
OUTSIDER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "ssm:*", "Resource": "*"}],
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("auditapi") / "data")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("auditapi-node") / "state", TARGET)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def recorded(broker: Broker, node: Agent) -> str:
    """A finished shell session with a recording."""
    s = broker.client("ssm").start_session(Target=TARGET)

    async def go() -> None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(b"echo audit-$((6*7))\r")
        await c.read_until(b"audit-42")
        await c.send(b"exit 0\r")
        await c.read_until(None)
        await c.close()

    asyncio.run(go())
    sid = str(s["SessionId"])
    api = hatchway_client(broker, ADMIN_KEY, ADMIN_SECRET)
    deadline = time.monotonic() + 20
    while True:  # the recording reaches the store in batches
        lines = api.get_session_recording(SessionId=sid)["Lines"]
        if any('"m"' in line and "exit" in line for line in lines):
            return sid
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)


def hatchway_client(broker: Broker, key: str, secret: str) -> Any:
    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.append(str(MODELS_DIR))
    return session.create_client(
        "hatchway",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def hatchway_cli(
    *args: str, key: str, secret: str, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``hatchway …`` with credentials from the environment (botocore's chain)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    return subprocess.run(
        [str(BIN / "hatchway"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_reader_replays_a_recording_through_the_api_and_others_are_denied(
    broker: Broker, recorded: str
) -> None:
    key, secret = user_with_policy(broker, "reader", READER_POLICY)
    okey, osecret = user_with_policy(broker, "outsider", OUTSIDER_POLICY)

    reader = hatchway_client(broker, key, secret)
    listed = reader.list_session_recordings()["Recordings"]
    mine = [r for r in listed if r["SessionId"] == recorded]
    assert mine and mine[0]["Target"] == TARGET and mine[0]["RecordingBytes"] > 0
    got = reader.get_session_recording(SessionId=recorded)
    assert got["Format"] == "asciicast-v2" and json.loads(got["Lines"][0])["version"] == 2
    assert "audit-42" in "".join(got["Lines"])
    # Paged: one line at a time gives the same lines.
    paged: list[str] = []
    kwargs: dict[str, Any] = {"SessionId": recorded, "MaxLines": 1}
    while True:
        page = reader.get_session_recording(**kwargs)
        paged += page["Lines"]
        if "NextToken" not in page:
            break
        kwargs["NextToken"] = page["NextToken"]
    assert paged == got["Lines"]

    # The CLI with the credential chain: replays what the API gives.
    played = hatchway_cli(
        "sessions", "replay", recorded, "--endpoint-url", broker.url, "--speed", "100",
        "--max-idle", "0.01", key=key, secret=secret,
    )  # fmt: skip
    assert played.returncode == 0, played.stderr
    assert "audit-42" in played.stdout
    raw = hatchway_cli(
        "sessions", "replay", recorded, "--raw", "--endpoint-url", broker.url,
        key=key, secret=secret,
    )  # fmt: skip
    assert raw.stdout.splitlines() == got["Lines"]
    listing = hatchway_cli(
        "sessions", "list", "--endpoint-url", broker.url, "--output", "json", key=key, secret=secret
    )
    assert listing.returncode == 0, listing.stderr
    assert recorded in [json.loads(line)["SessionId"] for line in listing.stdout.splitlines()]

    outsider = hatchway_client(broker, okey, osecret)
    arn = f" on resource: arn:aws:ssm:{REGION}:123456789012:session/{recorded}"
    calls: list[tuple[Callable[[], Any], str, str]] = [
        (lambda: outsider.get_session_recording(SessionId=recorded), "GetSessionRecording", arn),
        (lambda: outsider.list_port_connections(SessionId=recorded), "ListPortConnections", arn),
        (lambda: outsider.list_session_recordings(), "ListSessionRecordings", ""),
    ]
    for call, action, resource in calls:
        with pytest.raises(ClientError) as denied:
            call()
        err = denied.value.response["Error"]
        assert err["Code"] == "AccessDeniedException"
        assert err["Message"] == (
            "User: arn:aws:iam::123456789012:user/outsider is not authorized to perform: "
            f"hatchway:{action}{resource} because no identity-based policy "
            f"allows the hatchway:{action} action"
        )
    refused = hatchway_cli(
        "sessions", "replay", recorded, "--endpoint-url", broker.url, key=okey, secret=osecret
    )
    assert refused.returncode == 1
    assert "AccessDeniedException: User: arn:aws:iam::123456789012:user/outsider" in refused.stderr
    assert "audit-42" not in refused.stdout


def test_a_policy_can_limit_a_reader_to_one_target_s_sessions(
    broker: Broker, recorded: str
) -> None:
    """The session ARN is the resource: ``session/<owner name>-*`` limits a reader to the
    sessions one principal started (the admin's here)."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "hatchway:GetSessionRecording",
                "Resource": f"arn:aws:ssm:{REGION}:123456789012:session/someone-else-*",
            }
        ],
    }
    key, secret = user_with_policy(broker, "narrow", policy)
    with pytest.raises(ClientError) as denied:
        hatchway_client(broker, key, secret).get_session_recording(SessionId=recorded)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    missing = hatchway_client(broker, ADMIN_KEY, ADMIN_SECRET)
    with pytest.raises(ClientError) as nothing:
        missing.get_session_recording(SessionId="nobody-0123456789abcdef0")
    assert nothing.value.response["Error"] == {
        "Code": "DoesNotExistException",
        "Message": "Session nobody-0123456789abcdef0 does not exist.",
    }
    assert missing.list_port_connections(SessionId=recorded)["Connections"] == []


def test_aws_cloudtrail_lookup_events_through_the_real_cli(broker: Broker, recorded: str) -> None:
    key, secret = user_with_policy(broker, "trailreader", READER_POLICY)
    okey, osecret = user_with_policy(broker, "notrail", OUTSIDER_POLICY)
    start = datetime.now(UTC) - timedelta(minutes=10)

    by_name = broker.aws_json(
        "cloudtrail", "lookup-events",
        "--lookup-attributes", "AttributeKey=EventName,AttributeValue=StartSession",
        "--start-time", start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        key=key, secret=secret,
    )  # fmt: skip
    events = by_name["Events"]
    assert events and {e["EventName"] for e in events} == {"StartSession"}
    ev = events[0]
    assert ev["EventSource"] == "ssm.amazonaws.com" and ev["Username"] == "admin"
    assert ev["AccessKeyId"] == ADMIN_KEY and ev["ReadOnly"] == "false"
    assert {"ResourceType": "AWS::SSM::ManagedInstance", "ResourceName": TARGET} in ev["Resources"]
    detail = json.loads(ev["CloudTrailEvent"])
    assert detail["eventName"] == "StartSession" and detail["eventID"] == ev["EventId"]
    assert detail["userIdentity"]["type"] == "IAMUser"
    assert detail["userIdentity"]["accessKeyId"] == ADMIN_KEY

    by_user = broker.aws_json(
        "cloudtrail", "lookup-events",
        "--lookup-attributes", "AttributeKey=Username,AttributeValue=trailreader",
        key=key, secret=secret,
    )  # fmt: skip
    assert by_user["Events"] and {e["Username"] for e in by_user["Events"]} == {"trailreader"}
    by_key = broker.aws_json(
        "cloudtrail", "lookup-events",
        "--lookup-attributes", f"AttributeKey=AccessKeyId,AttributeValue={okey}",
        key=key, secret=secret,
    )  # fmt: skip
    assert by_key["Events"] == []  # notrail has made no call yet
    by_resource = broker.aws_json(
        "cloudtrail", "lookup-events",
        "--lookup-attributes", f"AttributeKey=ResourceName,AttributeValue={recorded}",
        key=key, secret=secret,
    )  # fmt: skip
    assert {e["EventName"] for e in by_resource["Events"]} >= {"GetSessionRecording"}
    by_source = broker.aws_json(
        "cloudtrail", "lookup-events",
        "--lookup-attributes", "AttributeKey=EventSource,AttributeValue=iam.amazonaws.com",
        "--max-items", "3",
        key=key, secret=secret,
    )  # fmt: skip
    assert len(by_source["Events"]) == 3
    assert {e["EventSource"] for e in by_source["Events"]} == {"iam.amazonaws.com"}

    # Paging with MaxResults/NextToken returns every event once, newest first.
    trail = broker.client("cloudtrail", key, secret)
    seen: list[str] = []
    kwargs: dict[str, Any] = {"MaxResults": 2, "StartTime": start}
    for _ in range(5):
        page = trail.lookup_events(**kwargs)
        seen += [e["EventId"] for e in page["Events"]]
        kwargs["NextToken"] = page["NextToken"]
    assert len(seen) == len(set(seen)) == 10
    with pytest.raises(ClientError) as other_query:
        trail.lookup_events(MaxResults=2, NextToken=kwargs["NextToken"])
    assert other_query.value.response["Error"]["Code"] == "InvalidNextTokenException"
    with pytest.raises(ClientError) as two:
        trail.lookup_events(
            LookupAttributes=[
                {"AttributeKey": "EventName", "AttributeValue": "StartSession"},
                {"AttributeKey": "Username", "AttributeValue": "admin"},
            ]
        )
    assert two.value.response["Error"]["Code"] == "InvalidLookupAttributesException"
    with pytest.raises(ClientError) as backwards:
        trail.lookup_events(StartTime=datetime.now(UTC), EndTime=start)
    assert backwards.value.response["Error"]["Code"] == "InvalidTimeRangeException"
    future = trail.lookup_events(StartTime=datetime.now(UTC) + timedelta(days=1))
    assert future["Events"] == []

    denied = broker.aws("cloudtrail", "lookup-events", key=okey, secret=osecret)
    assert denied.returncode != 0
    assert "AccessDeniedException" in denied.stderr
    assert (
        "User: arn:aws:iam::123456789012:user/notrail is not authorized to perform: "
        "cloudtrail:LookupEvents" in denied.stderr
    )

    # hatchway audit --endpoint-url reads the same events, filtered.
    out = hatchway_cli(
        "audit", "--endpoint-url", broker.url, "--event", "StartSession", "--limit", "1",
        key=key, secret=secret,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert json.loads(line)["eventName"] == "StartSession"
    refused = hatchway_cli("audit", "--endpoint-url", broker.url, key=okey, secret=osecret)
    assert refused.returncode == 1 and "AccessDeniedException" in refused.stderr
