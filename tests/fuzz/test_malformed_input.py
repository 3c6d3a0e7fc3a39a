"""Malformed input that answered 500 (issue 11, item 5), each now refused with a 4xx in AWS's
shape and the error code AWS gives, through signed requests to a running broker. The same
bodies are kept as ``@example`` cases of the fuzz suite (test_fuzz_broker.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fuzzhelp import DEEP, SignedClient, server_helpers

from hatchway.server.awswire.models import load_service

srv = server_helpers()
SSM = load_service("ssm")
HUGE = "99999999999999999999999"
COMMAND = json.dumps(
    {
        "schemaVersion": "2.2",
        "mainSteps": [
            {"action": "aws:runShellScript", "name": "run", "inputs": {"runCommand": ["true"]}}
        ],
    }
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(tmp_path_factory.mktemp("malformed") / "data")
    yield b
    alive = b.proc.poll() is None
    srv.stop_broker(b)
    assert alive, "the broker died"


@pytest.fixture(scope="module")
def client(broker: Any) -> SignedClient:
    c = SignedClient(broker.url, srv.ADMIN_KEY, srv.ADMIN_SECRET, srv.REGION)
    reply = ssm(
        c, "CreateDocument", {"Name": "fixed-doc", "DocumentType": "Command", "Content": COMMAND}
    )
    assert reply[0] == 200, reply
    return c


def ssm(client: SignedClient, op: str, body: dict[str, Any] | bytes) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = client.json_call("ssm", SSM.operation_model(op), raw)
    return reply.status, json.loads(reply.body)


def iam(client: SignedClient, form: str | bytes) -> tuple[int, str, str]:
    raw = form.encode() if isinstance(form, str) else form
    reply = client.query_call("iam", raw)
    text = reply.body.decode()
    code = re.search(r"<Code>(.*?)</Code>", text)
    message = re.search(r"<Message>(.*?)</Message>", text)
    return reply.status, code.group(1) if code else text, message.group(1) if message else ""


@pytest.mark.parametrize(
    "op",
    ["GetDocument", "DescribeDocument", "UpdateDocumentDefaultVersion", "DeleteDocument"],
)
def test_a_huge_document_version_is_invalid_not_an_overflow(client: SignedClient, op: str) -> None:
    status, body = ssm(client, op, f'{{"Name":"fixed-doc","DocumentVersion":"{HUGE}"}}'.encode())
    assert status == 400, body
    assert body["__type"] in ("InvalidDocumentVersion", "InvalidDocument"), body
    # nothing changed: the document is still there at version 1
    status, body = ssm(client, "DescribeDocument", {"Name": "fixed-doc"})
    assert status == 200 and body["Document"]["DefaultVersion"] == "1"


def test_a_huge_version_in_update_document(client: SignedClient) -> None:
    status, body = ssm(
        client,
        "UpdateDocument",
        {"Name": "fixed-doc", "DocumentVersion": HUGE, "Content": COMMAND.replace("true", "id")},
    )
    assert (status, body["__type"]) == (400, "InvalidDocumentVersion"), body


def test_a_lone_surrogate_is_a_serialization_error(client: SignedClient) -> None:
    status, body = ssm(client, "GetDocument", b'{"Name":"\\ud800"}')
    assert (status, body["__type"]) == (400, "SerializationException"), body


def test_deep_nesting_in_a_body_is_a_serialization_error(client: SignedClient) -> None:
    status, body = ssm(client, "DescribeSessions", ('{"State":' + DEEP + "}").encode())
    assert (status, body["__type"]) == (400, "SerializationException"), body


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        ("JSON", '{"schemaVersion":"2.2","mainSteps":' + DEEP + "}"),
        ("JSON", '{"schemaVersion":"2.2","mainSteps":[],"x":' + "[" * 200 + "]" * 200 + "}"),
        ("JSON", '{"schemaVersion":"2.2","mainSteps":[],"x":1e999}'),
        ("JSON", '{"schemaVersion":"2.2","mainSteps":[],"x":NaN}'),
        ("YAML", "schemaVersion: '2.2'\nmainSteps: []\nx: " + "[" * 3000 + "]" * 3000),
        ("YAML", "schemaVersion: '2.2'\nmainSteps: []\nx: .inf\n"),
    ],
)
def test_deep_or_infinite_document_content_is_invalid_content(
    client: SignedClient, fmt: str, content: str
) -> None:
    status, body = ssm(
        client,
        "CreateDocument",
        {"Name": "deep-doc", "DocumentType": "Command", "DocumentFormat": fmt, "Content": content},
    )
    assert (status, body["__type"]) == (400, "InvalidDocumentContent"), body
    status, body = ssm(client, "DescribeDocument", {"Name": "deep-doc"})
    assert (status, body["__type"]) == (400, "InvalidDocument"), body  # nothing was created


@pytest.mark.parametrize(
    "content",
    [
        {"schemaVersion": "2.2", "mainSteps": "x"},
        {"schemaVersion": "2.2", "mainSteps": ["x"]},
        {"schemaVersion": "2.2", "mainSteps": [{"name": "a"}]},
        {"schemaVersion": "1.2", "runtimeConfig": "x"},
        {"schemaVersion": "2.2", "parameters": [], "mainSteps": []},
    ],
)
def test_a_command_document_with_malformed_steps_is_refused(
    client: SignedClient, content: dict[str, Any]
) -> None:
    status, body = ssm(
        client,
        "CreateDocument",
        {"Name": "steps-doc", "DocumentType": "Command", "Content": json.dumps(content)},
    )
    assert (status, body["__type"]) == (400, "InvalidDocumentContent"), body


def test_a_5mb_iam_form_is_refused_with_413(client: SignedClient) -> None:
    form = "Action=CreateUser&Version=2010-05-08&UserName=big&Path=/" + "a" * (5 << 20)
    status, code, message = iam(client, form)
    assert (status, code) == (413, "RequestEntityTooLarge"), (status, code)
    assert message == "Request must be smaller than 4194304 bytes."
    assert iam(client, "Action=GetUser&Version=2010-05-08&UserName=big")[1] == "NoSuchEntity"


def test_1e999_in_a_policy_is_a_malformed_policy_document(client: SignedClient) -> None:
    assert iam(client, "Action=CreateUser&Version=2010-05-08&UserName=inf-user")[0] == 200
    policy = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*",'
        '"Condition":{"NumericLessThan":{"aws:MultiFactorAuthAge":1e999}}}]}'
    )
    status, code, message = iam(
        client,
        "Action=PutUserPolicy&Version=2010-05-08&UserName=inf-user&PolicyName=p&PolicyDocument="
        + quote(policy),
    )
    assert (status, code, message) == (400, "MalformedPolicyDocument", "Syntax errors in policy.")
    status, code, _ = iam(
        client, "Action=GetUserPolicy&Version=2010-05-08&UserName=inf-user&PolicyName=p"
    )
    assert (status, code) == (404, "NoSuchEntity")  # nothing was stored


def test_tags_member_0_is_a_validation_error(client: SignedClient) -> None:
    status, code, message = iam(
        client,
        "Action=CreateUser&Version=2010-05-08&UserName=tag0&Tags.member.0.Key=a"
        "&Tags.member.0.Value=b",
    )
    assert (status, code) == (400, "ValidationError")
    assert message == (
        "1 validation error detected: Value at 'tags.member.0' failed to satisfy "
        "constraint: Member must be numbered from 1"
    )
    assert iam(client, "Action=GetUser&Version=2010-05-08&UserName=tag0")[1] == "NoSuchEntity"
