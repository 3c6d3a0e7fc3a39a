"""The anonymous node-registration endpoint (issue 16, item 10): bad input of any kind is a
4xx in AWS's JSON error shape with an audit record, never an exception or aiohttp's text."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Broker,
    start_broker,
    stop_broker,
)

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


def _audited(broker: Broker, error_code: str, timeout: float = 10) -> dict[str, Any]:
    path = broker.data_dir / "audit.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        events = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        hits = [
            e
            for e in events
            if e["eventName"] == "RegisterManagedInstance" and e.get("errorCode") == error_code
        ]
        if hits or time.monotonic() > deadline:
            assert hits, f"no audit record with {error_code}"
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
