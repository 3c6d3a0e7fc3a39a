"""Property-based fuzzing of one running broker (issue 16, "Also"): every SSM, KMS, IAM and STS
operation it serves gets random and mutated bodies signed with valid admin credentials; the
node-registration endpoint random bodies; the data-channel websocket random frames. Nothing
may answer 5xx, and the broker must still answer ``/health`` (and the admin's calls) at the
end.

``make test`` runs a bounded number of examples; ``HATCHWAY_FUZZ_EXAMPLES=5000`` runs that
many per test. Every case the suite found is kept as an ``@example``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from botocore.model import OperationModel
from fuzzhelp import (
    DEEP,
    SignedClient,
    examples,
    json_bodies,
    operations,
    query_bodies,
    server_helpers,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hatchway.protocol import frames
from hatchway.protocol.payloads import build_open_data_channel
from hatchway.server.front.call import OPERATIONS
from hatchway.server.ops import register_all

srv = server_helpers()
HUGE = b"99999999999999999999999"
TARGET = "i-0f0220f0220f02200"

register_all()
SERVED = set(OPERATIONS)
JSON_OPS: dict[str, OperationModel] = {
    f"{svc}:{op.name}": op for svc in ("ssm", "kms") for op in operations(svc, SERVED)
}
QUERY_OPS: dict[str, OperationModel] = {
    f"{svc}:{op.name}": op for svc in ("iam", "sts") for op in operations(svc, SERVED)
}
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # each run explores afresh; found cases live on as @example
)


def fuzz(default: int) -> settings:
    """The suite's settings: ``default`` examples (``HATCHWAY_FUZZ_EXAMPLES`` overrides)."""
    return settings(FUZZ, max_examples=examples(default))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(tmp_path_factory.mktemp("fuzz") / "data")
    yield b
    alive = b.proc.poll() is None
    srv.stop_broker(b)
    assert alive, "the broker died during the fuzz run"


@pytest.fixture(scope="module")
def client(broker: Any) -> SignedClient:
    return SignedClient(broker.url, srv.ADMIN_KEY, srv.ADMIN_SECRET, srv.REGION)


@pytest.fixture(scope="module")
def node(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    a = srv.start_agent(broker, tmp_path_factory.mktemp("node") / "state", TARGET)
    yield a
    a.stop()


def _check(reply: Any, what: str) -> None:
    assert reply.status < 500, f"{what} answered {reply.status}: {reply.body[:500]!r}"


def _case(ops: dict[str, OperationModel], bodies: Any) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.sampled_from(sorted(ops)).flatmap(
        lambda name: bodies(ops[name]).map(lambda body: (name, body))
    )


# --------------------------------------------------------------------------- JSON 1.1 (SSM, KMS)


@fuzz(200)
@given(case=_case(JSON_OPS, json_bodies))
@example(case=("ssm:DescribeSessions", b'{"State":"Active","MaxResults":99999999999999999999999}'))
@example(case=("ssm:DescribeSessions", b'{"State":"Active","MaxResults":1e999}'))
@example(case=("ssm:GetDocument", b'{"Name":"\\ud800"}'))
@example(case=("ssm:StartSession", b'{"Target":"i-0\\udfff","Parameters":{"\\ud800":["x"]}}'))
@example(case=("ssm:DescribeSessions", ('{"State":' + DEEP + "}").encode()))
@example(
    case=(
        "ssm:CreateDocument",
        json.dumps(
            {
                "Name": "fuzz-main-steps",
                "DocumentType": "Command",
                "Content": '{"schemaVersion":"2.2","mainSteps":"x"}',
            }
        ).encode(),
    )
)
@example(
    case=("kms:Encrypt", b'{"KeyId":"alias/aws/ssm","Plaintext":"QQ==","EncryptionContext":[]}')
)
# issue 11, item 5 (exact codes in test_malformed_input.py)
@example(
    case=("ssm:GetDocument", b'{"Name":"AWS-StartSSHSession","DocumentVersion":"' + HUGE + b'"}')
)
@example(
    case=(
        "ssm:DescribeDocument",
        b'{"Name":"AWS-StartSSHSession","DocumentVersion":"' + HUGE + b'"}',
    )
)
@example(
    case=(
        "ssm:UpdateDocumentDefaultVersion",
        b'{"Name":"AWS-StartSSHSession","DocumentVersion":"' + HUGE + b'"}',
    )
)
@example(
    case=("ssm:DeleteDocument", b'{"Name":"AWS-StartSSHSession","DocumentVersion":"' + HUGE + b'"}')
)
@example(
    case=(
        "ssm:CreateDocument",
        json.dumps(
            {
                "Name": "fuzz-deep-content",
                "DocumentType": "Command",
                "Content": '{"schemaVersion":"2.2","mainSteps":' + DEEP + "}",
            }
        ).encode(),
    )
)
def test_json_operations_never_answer_5xx(client: SignedClient, case: tuple[str, bytes]) -> None:
    name, body = case
    service = name.partition(":")[0]
    _check(client.json_call(service, JSON_OPS[name], body), name)


# --------------------------------------------------------------------------- Query (IAM, STS)


@fuzz(200)
@given(case=_case(QUERY_OPS, query_bodies))
@example(
    case=(
        "iam:CreateUser",
        b"Action=CreateUser&Version=2010-05-08&UserName=fuzz0&Tags.member.0.Key=a"
        b"&Tags.member.0.Value=b",
    )
)
@example(case=("iam:ListUsers", b"Action=ListUsers&Version=2010-05-08&MaxItems=1e999"))
@example(
    case=("iam:ListUsers", b"Action=ListUsers&Version=2010-05-08&MaxItems=99999999999999999999999")
)
@example(case=("iam:GetUser", b"Action=GetUser&Version=2010-05-08&UserName=%ED%A0%80"))
@example(
    case=(
        "iam:CreateUser",
        b"Action=CreateUser&Version=2010-05-08&UserName=fuzz1&Tags.member.99999999999999999999.Key=a",
    )
)
@example(
    case=(
        "sts:AssumeRole",
        b"Action=AssumeRole&Version=2011-06-15&RoleSessionName=s&DurationSeconds=1e999"
        b"&RoleArn=arn:aws:iam::123456789012:role/SSMServiceRole",
    )
)
@example(
    case=(
        "iam:CreatePolicy",
        b"Action=CreatePolicy&Version=2010-05-08&PolicyName=deep&PolicyDocument="
        + b"%5B" * 3000
        + b"%5D" * 3000,
    )
)
@example(
    case=(
        "iam:CreateUser",
        b"Action=CreateUser&Version=2010-05-08&UserName=fuzz2&"
        + b"&".join(b"Junk%d.member.%d=x" % (i, i) for i in range(5000)),
    )
)
@example(
    case=(
        "iam:CreateUser",
        b"Action=CreateUser&Version=2010-05-08&UserName=fuzz3&Path=/" + b"a" * (5 << 20),
    )
)
@example(
    case=(
        "iam:CreatePolicy",
        b"Action=CreatePolicy&Version=2010-05-08&PolicyName=inf&PolicyDocument="
        + quote(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*",'
            '"Condition":{"NumericLessThan":{"aws:MultiFactorAuthAge":1e999}}}]}'
        ).encode(),
    )
)
def test_query_operations_never_answer_5xx(client: SignedClient, case: tuple[str, bytes]) -> None:
    name, body = case
    service = name.partition(":")[0]
    _check(client.query_call(service, body), name)


# --------------------------------------------------------------------------- registration


_REGISTRATION_FIELDS = {
    "ActivationId": st.one_of(st.uuids().map(str), st.text(max_size=40), st.integers()),
    "ActivationCode": st.one_of(st.text(max_size=40), st.none(), st.lists(st.text())),
    "InstanceId": st.one_of(
        st.sampled_from(("i-0123456789abcdef0", "mi-0123456789abcdef0", "", "\ud800")),
        st.text(max_size=30),
    ),
    "Tags": st.one_of(st.text(), st.lists(st.dictionaries(st.text(), st.text()), max_size=3)),
}
_REGISTRATION = st.one_of(
    st.fixed_dictionaries({}, optional=_REGISTRATION_FIELDS).map(
        lambda d: json.dumps(d).encode("utf-8", "surrogatepass")
    ),
    st.binary(max_size=200),
    st.sampled_from((b"", b"null", b"[]", b"{", b"1e999", DEEP.encode(), b'{"a":' * 5000)),
)


@fuzz(100)
@given(body=_REGISTRATION)
@example(body=DEEP.encode())  # item 10: nested JSON raised RecursionError (plain-text 500)
@example(body=b'{"ActivationId":"\\ud800","ActivationCode":"x","InstanceId":"i-0"}')
def test_registration_never_answers_5xx(client: SignedClient, body: bytes) -> None:
    _check(client.unsigned("POST", "/hatchway/v1/register", body), "registration")


# --------------------------------------------------------------------------- data channel


@st.composite
def _frame(draw: Any) -> bytes | str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return bytes(draw(st.binary(max_size=300)))
    if kind == 1:
        return str(draw(st.text(max_size=100)))
    try:
        return frames.encode(
            frames.Frame(
                message_type=draw(
                    st.sampled_from(
                        (
                            frames.MessageType.INPUT_STREAM_DATA,
                            frames.MessageType.ACKNOWLEDGE,
                            frames.MessageType.CHANNEL_CLOSED,
                            frames.MessageType.START_PUBLICATION,
                            frames.MessageType.PAUSE_PUBLICATION,
                            "agent_session_state",
                            "",
                        )
                    )
                    | st.text(max_size=40)
                ),
                sequence_number=draw(st.integers(-(2**63), 2**63 - 1)),
                payload_type=draw(st.integers(0, 2**32 - 1)),
                payload=draw(
                    st.binary(max_size=200)
                    | st.sampled_from((b"{", b'{"AcknowledgedMessageSequenceNumber":1e999}'))
                ),
                message_id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
                created_date=draw(st.integers(0, 2**64 - 1)),
                flags=draw(st.integers(0, 2**64 - 1)),
            )
        )
    except frames.FrameError:
        return b"\x00"


async def _throw(stream_url: str, first: str | bytes, sent: list[bytes | str]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(stream_url) as ws:
        for item in [first, *sent]:
            if ws.closed:
                break
            if isinstance(item, str):
                await ws.send_str(item)
            else:
                await ws.send_bytes(item)
        await ws.close()


@fuzz(20)
@given(opening=st.integers(0, 3), sent=st.lists(_frame(), max_size=8))
def test_data_channel_survives_random_frames(
    broker: Any, client: SignedClient, node: Any, opening: int, sent: list[bytes | str]
) -> None:
    ssm = broker.client("ssm")
    s = ssm.start_session(Target=TARGET)
    first: str | bytes = (
        build_open_data_channel(s["TokenValue"], request_id=str(uuid.uuid4()))
        if opening < 2
        else ('{"TokenValue": 1e999, "ClientInstanceId": []}' if opening == 2 else b"\xff")
    )
    asyncio.run(_throw(s["StreamUrl"], first, sent))
    ssm.terminate_session(SessionId=s["SessionId"])
    _check(client.unsigned("GET", "/health"), "health")


# --------------------------------------------------------------------------- afterwards


def test_the_broker_still_serves_afterwards(broker: Any, client: SignedClient) -> None:
    reply = client.unsigned("GET", "/health")
    assert reply.status == 200
    assert broker.client("sts").get_caller_identity()["Arn"].endswith(":user/admin")
    assert broker.proc.poll() is None
