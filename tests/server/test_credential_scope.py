"""Credential scope (issue 16, item 3) and the data channel's explicit deny (item 7), through
the real front door: boto3, the ``aws`` CLI with our session-manager-plugin, raw SigV4
requests (header-signed and presigned) and the websocket upgrades.

The broker runs in ``eu-west-1`` so that IAM's and STS's extra ``us-east-1`` is told apart
from the broker's own region.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from harness import (
    ACCOUNT,
    ADMIN_KEY,
    ADMIN_SECRET,
    Agent,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
    user_with_policy,
)
from harness.wsclient import Client

BROKER_REGION = "eu-west-1"
TARGET = "i-0c0ffee0c0ffee000"
INSTANCE = f"arn:aws:ec2:{BROKER_REGION}:{ACCOUNT}:instance/{TARGET}"
REGION_TEXT = "Credential should be scoped to a valid region, not '{}'."
SERVICE_TEXT = "Credential should be scoped to correct service: '{}'."


class RegionalBroker(Broker):
    """The conftest broker, its clients signing for the broker's own region."""

    def client(
        self,
        service: str,
        key: str = ADMIN_KEY,
        secret: str = ADMIN_SECRET,
        token: str | None = None,
    ) -> Any:
        return _client(self, service, BROKER_REGION, key, secret)

    def aws(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        extra = () if "--region" in args else ("--region", BROKER_REGION)
        return super().aws(*args, *extra, **kw)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    # Also with --require-signed-data-channel (item 7): client upgrades must be signed.
    b = start_broker(
        tmp_path_factory.mktemp("scope") / "data",
        "--region",
        BROKER_REGION,
        "--require-signed-data-channel",
    )
    regional = RegionalBroker(b.url, b.data_dir, b.proc, b.log)
    yield regional
    stop_broker(regional)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("node") / "state", TARGET)
    yield a
    a.stop()


def _client(
    broker: Broker, service: str, region: str, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET
) -> Any:
    return boto3.client(
        service,
        endpoint_url=broker.url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = exc.value.response["Error"]
    status = exc.value.response["ResponseMetadata"]["HTTPStatusCode"]
    return err["Code"], err["Message"], status


def _send(req: AWSRequest) -> tuple[int, str]:
    prepared = req.prepare()
    body = prepared.body or b""
    raw = urllib.request.Request(
        prepared.url,
        data=body.encode() if isinstance(body, str) else body,
        headers=dict(prepared.headers),
        method=req.method,
    )
    try:
        with urllib.request.urlopen(raw, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _query_error(text: str) -> tuple[str, str]:
    code = re.search(r"<Code>(.*?)</Code>", text)
    message = re.search(r"<Message>(.*?)</Message>", text)
    assert code and message, text
    return code.group(1), message.group(1).replace("&apos;", "'")


def _users(broker: Broker) -> list[str]:
    iam = _client(broker, "iam", BROKER_REGION)
    return [u["UserName"] for u in iam.list_users()["Users"]]


# --------------------------------------------------------------------------- item 3: regions


def test_ssm_and_kms_scopes_must_name_the_brokers_region(broker: Broker) -> None:
    for region in ("eu-west-9", "us-east-1"):  # us-east-1 is IAM's, not SSM's or KMS's
        with pytest.raises(ClientError) as exc:
            _client(broker, "ssm", region).create_activation(IamRole="SSMServiceRole")
        assert _error(exc) == ("InvalidSignatureException", REGION_TEXT.format(region), 400)
        with pytest.raises(ClientError) as exc:
            _client(broker, "kms", region).create_key()
        assert _error(exc) == ("InvalidSignatureException", REGION_TEXT.format(region), 400)
    # Nothing was created, and the broker's own region is served.
    ssm = _client(broker, "ssm", BROKER_REGION)
    assert ssm.describe_activations()["ActivationList"] == []
    assert _client(broker, "kms", BROKER_REGION).list_keys()["Keys"] == []


def test_iam_and_sts_take_the_brokers_region_or_us_east_1(broker: Broker) -> None:
    for region in (BROKER_REGION, "us-east-1"):
        _client(broker, "iam", region).get_user()
        arn = _client(broker, "sts", region).get_caller_identity()["Arn"]
        assert arn.endswith(":root") or ":user/" in arn
    with pytest.raises(ClientError) as exc:
        _client(broker, "iam", "eu-west-9").create_user(UserName="mallory")
    assert _error(exc) == ("SignatureDoesNotMatch", REGION_TEXT.format("eu-west-9"), 403)
    with pytest.raises(ClientError) as exc:
        _client(broker, "sts", "ap-south-2").get_caller_identity()
    assert _error(exc) == ("SignatureDoesNotMatch", REGION_TEXT.format("ap-south-2"), 403)
    assert "mallory" not in _users(broker)


def test_the_aws_cli_signed_for_another_region_is_refused(broker: Broker) -> None:
    proc = broker.aws("ssm", "describe-sessions", "--state", "Active", "--region", "eu-west-9")
    assert proc.returncode != 0
    assert "InvalidSignatureException" in proc.stderr
    assert REGION_TEXT.format("eu-west-9") in proc.stderr
    ok = broker.aws("ssm", "describe-sessions", "--state", "Active", "--region", BROKER_REGION)
    assert ok.returncode == 0, ok.stderr


# --------------------------------------------------------------------------- item 3: services


def _signed_json(broker: Broker, target: str, body: dict[str, Any], service: str) -> AWSRequest:
    req = AWSRequest(
        "POST",
        broker.url + "/",
        data=json.dumps(body).encode(),
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), service, BROKER_REGION).add_auth(req)
    return req


def _signed_query(
    broker: Broker, form: dict[str, str], service: str, region: str = BROKER_REGION
) -> AWSRequest:
    req = AWSRequest(
        "POST",
        broker.url + "/",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), service, region).add_auth(req)
    return req


def test_the_scope_must_name_the_operations_service(broker: Broker) -> None:
    for wrong in ("s3", "kms", "ssmmessages"):
        status, text = _send(
            _signed_json(broker, "AmazonSSM.CreateActivation", {"IamRole": "r"}, wrong)
        )
        assert status == 400
        body = json.loads(text)
        assert body["__type"] == "InvalidSignatureException"
        assert body["message"] == SERVICE_TEXT.format("ssm")
    status, text = _send(_signed_json(broker, "TrentService.CreateKey", {}, "ssm"))
    assert (status, json.loads(text)["message"]) == (400, SERVICE_TEXT.format("kms"))
    form = {"Action": "CreateUser", "Version": "2010-05-08", "UserName": "mallory"}
    status, text = _send(_signed_query(broker, form, "s3"))
    assert (status, _query_error(text)) == (
        403,
        ("SignatureDoesNotMatch", SERVICE_TEXT.format("iam")),
    )
    sts = {"Action": "GetCallerIdentity", "Version": "2011-06-15"}
    status, text = _send(_signed_query(broker, sts, "ec2"))
    assert (status, _query_error(text)) == (
        403,
        ("SignatureDoesNotMatch", SERVICE_TEXT.format("sts")),
    )
    assert _send(_signed_query(broker, sts, "sts"))[0] == 200
    assert _client(broker, "ssm", BROKER_REGION).describe_activations()["ActivationList"] == []
    assert "mallory" not in _users(broker)


def test_presigned_requests_are_scoped_too(broker: Broker) -> None:
    def presigned(service: str, region: str) -> AWSRequest:
        req = AWSRequest(
            "POST", broker.url + "/?Action=GetCallerIdentity&Version=2011-06-15", data=b""
        )
        SigV4QueryAuth(Credentials(ADMIN_KEY, ADMIN_SECRET), service, region, 60).add_auth(req)
        return req

    assert _send(presigned("sts", "us-east-1"))[0] == 200
    status, text = _send(presigned("sts", "eu-west-9"))
    assert (status, _query_error(text)) == (
        403,
        ("SignatureDoesNotMatch", REGION_TEXT.format("eu-west-9")),
    )
    status, text = _send(presigned("s3", BROKER_REGION))
    assert (status, _query_error(text)) == (
        403,
        ("SignatureDoesNotMatch", SERVICE_TEXT.format("sts")),
    )


def test_websocket_upgrades_are_scoped_to_ssmmessages_in_the_brokers_region(
    broker: Broker,
) -> None:
    """The control-channel upgrade is authenticated before anything else (the scope first)."""
    url = broker.url + f"/v1/control-channel/{TARGET}"

    def upgrade(service: str, region: str) -> tuple[int, dict[str, Any]]:
        req = AWSRequest("GET", url)
        SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), service, region).add_auth(req)
        status, text = _send(req)
        return status, json.loads(text)

    status, body = upgrade("ssmmessages", "eu-west-9")
    assert status == 400 and body["__type"] == "InvalidSignatureException"
    assert body["message"] == REGION_TEXT.format("eu-west-9")
    status, body = upgrade("ssm", BROKER_REGION)
    assert body["message"] == SERVICE_TEXT.format("ssmmessages")
    # Correctly scoped, the admin's key is authenticated and then refused as not the node's.
    status, body = upgrade("ssmmessages", BROKER_REGION)
    assert body["__type"] == "AccessDeniedException"


def test_a_client_upgrade_signed_for_another_region_is_refused(broker: Broker, node: Agent) -> None:
    s = _client(broker, "ssm", BROKER_REGION).start_session(Target=TARGET)

    async def go(region: str) -> int | None:
        req = AWSRequest("GET", s["StreamUrl"].replace("ws://", "http://", 1))
        SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "ssmmessages", region).add_auth(req)
        headers = {k: v for k, v in req.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(s["StreamUrl"], headers=headers) as ws,
        ):
            c = Client(s["StreamUrl"], s["TokenValue"])
            c.ws = ws
            await ws.send_str(_open_frame(s["TokenValue"]))
            msg = await ws.receive(timeout=10)
            return ws.close_code if msg.type != aiohttp.WSMsgType.BINARY else None

    assert asyncio.run(go("eu-west-9")) == 4403
    _client(broker, "ssm", BROKER_REGION).terminate_session(SessionId=s["SessionId"])


def _open_frame(token: str) -> str:
    import uuid

    from hatchway.protocol import build_open_data_channel

    return build_open_data_channel(
        token, request_id=str(uuid.uuid4()), client_id=str(uuid.uuid4()), client_version="1.2.764.0"
    )


# --------------------------------------------------------------------------- item 7


SESSION_RIGHTS = {
    "Effect": "Allow",
    "Action": ["ssm:StartSession", "ssm:ResumeSession", "ssm:TerminateSession"],
    "Resource": "*",
}
DENY_ODC = {"Effect": "Deny", "Action": "ssmmessages:OpenDataChannel", "Resource": "*"}


def test_explicit_deny_of_open_data_channel_refuses_the_token(broker: Broker, node: Agent) -> None:
    """Unsigned upgrades (AWS's plugin before 1.2.688, third-party clients) carry only the
    token, so StartSession itself must not hand one to a caller denied OpenDataChannel."""
    key, secret = user_with_policy(
        broker, "nodc", {"Version": "2012-10-17", "Statement": [SESSION_RIGHTS, DENY_ODC]}
    )
    ssm = _client(broker, "ssm", BROKER_REGION, key, secret)
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=TARGET)
    code, message, status = _error(exc)
    assert (code, status) == ("AccessDeniedException", 400)
    assert "ssmmessages:OpenDataChannel" in message and "explicit deny" in message
    admin = _client(broker, "ssm", BROKER_REGION)
    owner = f"arn:aws:iam::{ACCOUNT}:user/nodc"
    assert (
        admin.describe_sessions(State="Active", Filters=[{"key": "Owner", "value": owner}])[
            "Sessions"
        ]
        == []
    )


def test_explicit_deny_added_later_refuses_resume(broker: Broker, node: Agent) -> None:
    key, secret = user_with_policy(
        broker, "later", {"Version": "2012-10-17", "Statement": [SESSION_RIGHTS]}
    )
    ssm = _client(broker, "ssm", BROKER_REGION, key, secret)
    s = ssm.start_session(Target=TARGET)  # no statement on OpenDataChannel: allowed (old clients)
    _client(broker, "iam", BROKER_REGION).put_user_policy(
        UserName="later",
        PolicyName="deny-odc",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [DENY_ODC]}),
    )
    with pytest.raises(ClientError) as exc:
        ssm.resume_session(SessionId=s["SessionId"])
    assert _error(exc)[0] == "AccessDeniedException"
    ssm.terminate_session(SessionId=s["SessionId"])


def test_unsigned_client_upgrades_are_refused_when_the_broker_requires_signatures(
    broker: Broker, node: Agent
) -> None:
    """``--require-signed-data-channel``: the token alone no longer opens the channel; a
    signed upgrade (our plugin under the AWS CLI, like AWS's plugin >= 1.2.688) does, with
    ssmmessages:OpenDataChannel allowed."""
    s = _client(broker, "ssm", BROKER_REGION).start_session(Target=TARGET)

    async def go() -> int | None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        r = await c.read_until(None, 5)
        await c.close()
        return r.close_code

    assert asyncio.run(go()) == 4403
    _client(broker, "ssm", BROKER_REGION).terminate_session(SessionId=s["SessionId"])
    proc = broker.aws(
        "ssm",
        "start-session",
        "--target",
        TARGET,
        "--document-name",
        "AWS-StartNonInteractiveCommand",
        "--parameters",
        "command=echo signed-$((6*7))",
    )
    assert proc.returncode == 0, proc.stderr
    assert "signed-42" in proc.stdout
