"""Unauthenticated input (issue 16, item 10): the anonymous node-registration endpoint, the
control- and data-channel upgrades before anyone is authenticated, and the router answer bad
input with a 4xx in AWS's JSON error shape (or the websocket's refusal code) and an audit
record, never an exception or aiohttp's plain text."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from harness import ADMIN_KEY, ADMIN_SECRET, REGION, Broker, start_agent, start_broker, stop_broker

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("reginput") / "data")
    yield b
    stop_broker(b)


def register(broker: Broker, body: bytes | dict[str, Any], method: str = "POST") -> Any:
    """POST /hatchway/v1/register as an agent does (anonymous): (status, JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        broker.url + "/hatchway/v1/register",
        data=data if method == "POST" else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ---------------------------------------------- item 10: anonymous registration, bad input


def _audited(
    broker: Broker, error_code: str, event: str = "RegisterManagedInstance", timeout: float = 10
) -> dict[str, Any]:
    path = broker.data_dir / "audit.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        events = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        hits = [e for e in events if e["eventName"] == event and e.get("errorCode") == error_code]
        if hits or time.monotonic() > deadline:
            assert hits, f"no audit record of {event} with {error_code}"
            return hits[-1]
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"[" * 30_000 + b"]" * 30_000, 400, "SerializationException"),
        (b'{"ActivationId": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 400, "SerializationException"),
        (b'{"ComputerName": ' + b"[" * 990 + b"]" * 990 + b"}", 400, "SerializationException"),
        (b"\xff\xfe{", 400, "SerializationException"),
        (b'"just a string"', 400, "SerializationException"),
        (b'{"ActivationId": 7, "ActivationCode": "x"}', 400, "SerializationException"),
        (b'{"ActivationId": "' + b"a" * 10_000 + b'"}', 400, "ValidationException"),
        (b'{"ActivationId": "a", "ActivationCode": "b"}', 400, "InvalidActivation"),
        (b"{" + b" " * (65 * 1024) + b"}", 413, "RequestEntityTooLargeException"),
    ],
    ids=[
        "deep-array",
        "deep-member",
        "just-below-the-parser-limit",
        "not-utf8",
        "not-an-object",
        "wrong-type",
        "too-long",
        "wrong-code",
        "too-large",
    ],
)
def test_bad_registration_input_is_a_4xx_in_aws_shape_and_audited(
    broker: Broker, body: bytes, status: int, code: str
) -> None:
    got, answer = register(broker, body)
    assert (got, answer["__type"]) == (status, code), answer
    assert isinstance(answer["message"], str) and answer["message"]
    event = _audited(broker, code)
    assert event["userIdentity"]["arn"] == "anonymous"
    assert event["decision"] == "error"
    assert "ActivationCode" not in json.dumps(event["requestParameters"])
    with urllib.request.urlopen(broker.url + "/health", timeout=10) as resp:
        assert resp.status == 200  # still serving


def test_unrouted_requests_answer_in_aws_shape(broker: Broker) -> None:
    status, answer = register(broker, b"", method="GET")
    assert status == 405 and answer["__type"] == "MethodNotAllowedException", answer
    req = urllib.request.Request(broker.url + "/no/such/path")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 404
    assert json.loads(err.value.read())["__type"] == "NotFoundException"


def test_unsigned_control_channel_upgrade_is_refused_in_aws_shape_and_audited(
    broker: Broker,
) -> None:
    req = urllib.request.Request(
        broker.url + "/v1/control-channel/mi-0123456789abcdef0?role=subscribe",
        headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
        | {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert 400 <= err.value.code < 500
    code = json.loads(err.value.read())["__type"]
    event = _audited(broker, code, "OpenControlChannel")
    assert event["requestParameters"] == {"instanceId": "mi-0123456789abcdef0"}


def test_bad_data_channel_opens_are_refused_and_audited(broker: Broker, tmp_path: Path) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(broker.url + "/v1/data-channel/nobody-0123456789abcdef0", timeout=10)
    assert err.value.code == 400
    assert json.loads(err.value.read())["__type"] == "DoesNotExistException"
    _audited(broker, "DoesNotExistException", "OpenDataChannel")
    # A session that exists, opened with garbage (deeply nested JSON) or a wrong token:
    ssm = broker.client("ssm")
    node = start_agent(broker, tmp_path / "node")
    session = ssm.start_session(Target=node.instance_id)

    async def refused(first: str) -> int | None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(session["StreamUrl"]) as ws,
        ):
            await ws.send_str(first)
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            return ws.close_code

    assert asyncio.run(refused("[" * 50_000)) == 4401
    _audited(broker, "ValidationException", "OpenDataChannel")
    wrong = json.dumps({"MessageSchemaVersion": "1.0", "TokenValue": "not-the-token"})
    assert asyncio.run(refused(wrong)) == 4403
    _audited(broker, "AccessDeniedException", "OpenDataChannel")
    ssm.terminate_session(SessionId=session["SessionId"])
    node.stop()


def test_deeply_nested_api_body_is_a_serialization_error(broker: Broker) -> None:
    """After authentication too: JSON deeper than the parser goes is the caller's fault."""
    body = b'{"Target": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    req = AWSRequest(
        method="POST",
        url=broker.url + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AmazonSSM.StartSession",
        },
    )
    SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "ssm", REGION).add_auth(req)
    prepared = urllib.request.Request(
        req.url, data=body, headers=dict(req.headers.items()), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(prepared, timeout=30)
    assert err.value.code == 400
    assert json.loads(err.value.read())["__type"] == "SerializationException"
