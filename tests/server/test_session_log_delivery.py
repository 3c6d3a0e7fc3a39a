"""Session logs to S3 and CloudWatch Logs: a real broker and agent, and moto's server mode
(started here on a free port) standing in for AWS; the broker reaches it with boto3."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from harness import Agent, Broker, start_agent, start_broker, stop_broker
from harness.wsclient import Client

from hatchway.server.recordings.logdelivery import CLOUDWATCH_ENCRYPTION_ERROR, S3_ENCRYPTION_ERROR

BIN = Path(sys.executable).parent
TARGET = "i-0a1b2c3d4e5f60718"
AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAMOTOTESTING00001",
    "AWS_SECRET_ACCESS_KEY": "moto-testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/0b6a3d4c-1111-2222-3333-444455556666"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the server
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@dataclass
class Stack:
    broker: Broker
    node: Agent
    moto: str

    def aws(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.moto,
            region_name="us-east-1",
            aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="module")
def stack(moto: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # S3 through the option, CloudWatch Logs through boto3's own endpoint variable.
    b = start_broker(
        tmp_path_factory.mktemp("delivery") / "data",
        "--s3-endpoint-url",
        moto,
        "--cloudwatch-stream-interval",
        "0.2",
        env={**AWS, "AWS_ENDPOINT_URL_LOGS": moto},
    )
    a = start_agent(b, tmp_path_factory.mktemp("delivery-node") / "state", TARGET)
    yield Stack(b, a, moto)
    a.stop()
    stop_broker(b)


def document(stack: Stack, name: str, inputs: dict[str, Any]) -> str:
    content = {
        "schemaVersion": "1.0",
        "description": "logging test",
        "sessionType": "Standard_Stream",
        "inputs": inputs,
    }
    stack.broker.client("ssm").create_document(
        Name=name, DocumentType="Session", DocumentFormat="JSON", Content=json.dumps(content)
    )
    return name


@dataclass
class Run:
    session_id: str
    output: bytes
    closed: Any


def shell(stack: Stack, doc: str, command: bytes, until: bytes | None) -> Run:
    s = stack.broker.client("ssm").start_session(Target=TARGET, DocumentName=doc)

    async def go() -> Run:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(command + b"\r")
        r = await c.read_until(until)
        if until is not None and r.closed is None:
            await c.send(b"exit\r")
            r = await c.read_until(None)
        await c.close()
        return Run(s["SessionId"], r.output, r.closed)

    return asyncio.run(go())


def session(stack: Stack, session_id: str) -> dict[str, Any]:
    ssm = stack.broker.client("ssm")
    for state in ("Active", "History"):
        found = ssm.describe_sessions(
            State=state, Filters=[{"key": "SessionId", "value": session_id}]
        )["Sessions"]
        if found:
            return dict(found[0])
    raise AssertionError(f"no session {session_id}")


def wait_for(what: str, probe: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened")
        time.sleep(0.1)


def deliveries(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    path = stack.broker.data_dir / "audit.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        e
        for e in events
        if e["eventName"] == "DeliverSessionLog"
        and e["requestParameters"]["SessionId"] == session_id
    ]


def test_s3_encryption_required_but_missing_fails_the_session_with_aws_text(
    stack: Stack,
) -> None:
    stack.aws("s3").create_bucket(Bucket="hw-plain-bucket")
    doc = document(
        stack,
        "Logs-S3-Unencrypted",
        {"s3BucketName": "hw-plain-bucket", "s3EncryptionEnabled": True},
    )
    run = shell(stack, doc, b"echo never-$((1+1))", None)
    assert run.closed is not None
    assert run.closed.output == S3_ENCRYPTION_ERROR
    assert b"never-2" not in run.output
    s = session(stack, run.session_id)
    assert (s["Status"], s["Details"]) == ("Failed", S3_ENCRYPTION_ERROR)
    assert deliveries(stack, run.session_id)[0]["errorMessage"] == S3_ENCRYPTION_ERROR


def test_the_transcript_goes_to_an_encrypted_bucket_at_the_end(stack: Stack) -> None:
    s3 = stack.aws("s3")
    s3.create_bucket(Bucket="hw-sealed-bucket")
    s3.put_bucket_encryption(
        Bucket="hw-sealed-bucket",
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    doc = document(
        stack,
        "Logs-S3-Encrypted",
        {
            "s3BucketName": "hw-sealed-bucket",
            "s3KeyPrefix": "team/sessions/",
            "s3EncryptionEnabled": "true",
        },
    )
    run = shell(stack, doc, b"ls --color=always / >/dev/null; echo s3-$((40+2))", b"s3-42")
    assert run.closed is not None and run.closed.output == ""
    url = wait_for(
        "S3OutputUrl", lambda: session(stack, run.session_id)["OutputUrl"].get("S3OutputUrl")
    )
    key = f"team/sessions/{run.session_id}.log"
    assert url == f"{stack.moto}/hw-sealed-bucket/{key}"
    text = s3.get_object(Bucket="hw-sealed-bucket", Key=key)["Body"].read().decode()
    lines = text.splitlines()
    assert any(line.endswith("echo s3-$((40+2))") for line in lines)  # prompt + typed command
    assert "s3-42" in lines
    assert "\x1b" not in text and "\r" not in text
    assert deliveries(stack, run.session_id)[-1].get("errorCode") is None


def test_cloudwatch_encryption_required_but_missing_fails_with_aws_text(stack: Stack) -> None:
    stack.aws("logs").create_log_group(logGroupName="hw-plain-group")
    doc = document(
        stack,
        "Logs-CW-Unencrypted",
        {"cloudWatchLogGroupName": "hw-plain-group", "cloudWatchEncryptionEnabled": True},
    )
    run = shell(stack, doc, b"echo never", None)
    assert run.closed is not None and run.closed.output == CLOUDWATCH_ENCRYPTION_ERROR
    s = session(stack, run.session_id)
    assert (s["Status"], s["Details"]) == ("Failed", CLOUDWATCH_ENCRYPTION_ERROR)


def test_the_transcript_goes_to_an_encrypted_log_group_at_the_end(stack: Stack) -> None:
    logs = stack.aws("logs")
    logs.create_log_group(logGroupName="hw-sealed-group", kmsKeyId=KMS_KEY)
    doc = document(
        stack,
        "Logs-CW-Encrypted",
        {
            "cloudWatchLogGroupName": "hw-sealed-group",
            "cloudWatchEncryptionEnabled": True,
            "cloudWatchStreamingEnabled": False,
        },
    )
    run = shell(stack, doc, b"echo cw-$((40+2))", b"cw-42")
    url = wait_for(
        "CloudWatchOutputUrl",
        lambda: session(stack, run.session_id)["OutputUrl"].get("CloudWatchOutputUrl"),
    )
    assert f"group=hw-sealed-group;stream={run.session_id}" in url
    events = logs.get_log_events(
        logGroupName="hw-sealed-group", logStreamName=run.session_id, startFromHead=True
    )["events"]
    messages = [e["message"] for e in events]
    assert "cw-42" in messages
    assert any(m.endswith("echo cw-$((40+2))") for m in messages)
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps) and abs(stamps[0] / 1000 - time.time()) < 300


def test_cloudwatch_streaming_sends_json_events_while_the_session_runs(stack: Stack) -> None:
    logs = stack.aws("logs")
    logs.create_log_group(logGroupName="hw-stream-group")
    doc = document(
        stack,
        "Logs-CW-Streaming",
        {
            "cloudWatchLogGroupName": "hw-stream-group",
            "cloudWatchEncryptionEnabled": False,
            "cloudWatchStreamingEnabled": True,
        },
    )
    s = stack.broker.client("ssm").start_session(Target=TARGET, DocumentName=doc)
    sid = s["SessionId"]

    def streamed() -> list[dict[str, Any]]:
        try:
            events = logs.get_log_events(
                logGroupName="hw-stream-group", logStreamName=sid, startFromHead=True
            )["events"]
        except logs.exceptions.ResourceNotFoundException:
            return []
        return [json.loads(e["message"]) for e in events]

    def lines() -> list[str]:
        return [line for ev in streamed() for line in ev["sessionData"]]

    async def go() -> None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(b"echo live-$((3*3))\r")
        await c.read_until(b"live-9")
        await asyncio.to_thread(wait_for, "a streamed line", lambda: "live-9" in lines())
        assert session(stack, sid)["Status"] == "Connected"  # the session is still running
        await c.send(b"printf 'no newline at the end'; exit\r")
        await c.read_until(None)
        await c.close()

    asyncio.run(go())
    wait_for("the last line", lambda: "no newline at the end" in "".join(lines()))
    first = streamed()[0]
    assert first["eventVersion"] == "1.0"
    assert first["sessionId"] == sid and first["target"] == {"id": TARGET}
    assert first["userIdentity"] == {"arn": "arn:aws:iam::123456789012:user/admin"}
    assert first["awsRegion"] == "us-east-1"
    assert "eventTime" in first and "runAsUser" in first
    url = wait_for(
        "CloudWatchOutputUrl", lambda: session(stack, sid)["OutputUrl"].get("CloudWatchOutputUrl")
    )
    assert f"stream={sid}" in url


def test_a_missing_log_group_only_turns_cloudwatch_off(stack: Stack) -> None:
    doc = document(
        stack,
        "Logs-CW-Missing",
        {"cloudWatchLogGroupName": "hw-no-such-group", "cloudWatchEncryptionEnabled": True},
    )
    run = shell(stack, doc, b"echo fine-$((2+2))", b"fine-4")
    assert b"fine-4" in run.output and run.closed is not None and run.closed.output == ""
    found = wait_for("the warning", lambda: deliveries(stack, run.session_id))
    assert "hw-no-such-group does not exist" in found[0]["errorMessage"]
    assert session(stack, run.session_id)["Status"] == "Terminated"
    assert session(stack, run.session_id)["OutputUrl"] == {}


def test_a_failed_upload_is_audited_and_the_session_unaffected(stack: Stack) -> None:
    doc = document(
        stack,
        "Logs-S3-NoBucket",
        {"s3BucketName": "hw-bucket-that-is-not-there", "s3EncryptionEnabled": False},
    )
    run = shell(stack, doc, b"echo ok-$((1+4))", b"ok-5")
    assert b"ok-5" in run.output
    found = wait_for("the failure", lambda: deliveries(stack, run.session_id))
    assert found[0]["errorCode"] == "SessionLogDeliveryFailed"
    assert "NoSuchBucket" in found[0]["errorMessage"]

    def audited() -> bool:
        out = subprocess.run(
            [
                str(BIN / "hatchway"),
                "audit",
                "--data-dir",
                str(stack.broker.data_dir),
                "--event",
                "DeliverSessionLog",
                "--output",
                "text",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return "NoSuchBucket" in out

    wait_for("the audit row in the store", audited)
    assert session(stack, run.session_id)["OutputUrl"] == {}
