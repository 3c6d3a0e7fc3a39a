"""Payloads: exact JSON as the Go peers write it, tolerant parsing, only PayloadError."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hatchway.protocol import (
    Ack,
    ActionStatus,
    Flag,
    Frame,
    HandshakeRequest,
    HandshakeResponse,
    MessageType,
    PayloadError,
    PayloadType,
    ProcessedAction,
    RequestedAction,
    ack_frame,
    build_ack,
    build_agent_session_state,
    build_challenge,
    build_channel_closed,
    build_exit_code,
    build_flag,
    build_handshake_complete,
    build_handshake_request,
    build_handshake_response,
    build_open_data_channel,
    build_size,
    decode,
    encode,
    kms_encryption_action,
    kms_result,
    parse_ack,
    parse_agent_session_state,
    parse_challenge,
    parse_channel_closed,
    parse_exit_code,
    parse_flag,
    parse_handshake_complete,
    parse_handshake_request,
    parse_handshake_response,
    parse_open_data_channel,
    parse_size,
    session_type_action,
)

MID = uuid.UUID("00010203-0405-0607-0809-0a0b0c0d0e0f")


def test_ack_json_is_exact() -> None:
    assert build_ack(MessageType.OUTPUT_STREAM_DATA, MID, 42) == (
        b'{"AcknowledgedMessageType":"output_stream_data",'
        b'"AcknowledgedMessageId":"00010203-0405-0607-0809-0a0b0c0d0e0f",'
        b'"AcknowledgedMessageSequenceNumber":42,"IsSequentialMessage":true}'
    )
    ack = parse_ack(build_ack("input_stream_data", MID, 3))
    assert (ack.message_type, ack.message_id, ack.sequence_number) == (
        "input_stream_data",
        str(MID),
        3,
    )


def test_ack_parse_needs_only_the_sequence_number() -> None:
    assert parse_ack('{"AcknowledgedMessageSequenceNumber": 9}').sequence_number == 9
    with pytest.raises(PayloadError):
        parse_ack('{"AcknowledgedMessageType":"output_stream_data"}')
    with pytest.raises(PayloadError):
        parse_ack('{"AcknowledgedMessageSequenceNumber": "9"}')


def test_ack_frame_header() -> None:
    acked = Frame("input_stream_data", 5, 1, b"x", MID, 1)
    ack = decode(encode(ack_frame(acked, uuid.UUID(int=1), 1_700_000_000_000)))
    assert ack.message_type == MessageType.ACKNOWLEDGE
    assert (ack.sequence_number, ack.flags, ack.payload_type) == (0, 3, 0)
    assert ack.created_date == 1_700_000_000_000
    assert parse_ack(ack.payload) == Ack("input_stream_data", str(MID), 5)


def test_channel_closed_round_trip_and_bare_text() -> None:
    payload = build_channel_closed(
        "alice-0123", "bye", message_id=MID, created_date="2026-11-27T00:00:00Z"
    )
    assert json.loads(payload) == {
        "MessageId": str(MID),
        "CreatedDate": "2026-11-27T00:00:00Z",
        "DestinationId": "",
        "SessionId": "alice-0123",
        "MessageType": "channel_closed",
        "SchemaVersion": 1,
        "Output": "bye",
    }
    closed = parse_channel_closed(payload)
    assert (closed.session_id, closed.output) == ("alice-0123", "bye")
    assert parse_channel_closed(b"Session terminated").output == "Session terminated"
    assert parse_channel_closed(b"\xff\xfe").output  # never raises


def test_size_flag_exit_code() -> None:
    assert build_size(80, 24) == b'{"cols":80,"rows":24}'
    assert parse_size(b'{"cols": 80, "rows": 24}') == parse_size(build_size(80, 24))
    assert parse_size('{"cols":300,"rows":100,"x":1}').cols == 300
    for bad in ('{"cols":1}', '{"cols":-1,"rows":1}', "[1,2]", "nope", '{"cols":true,"rows":1}'):
        with pytest.raises(PayloadError):
            parse_size(bad)
    with pytest.raises(PayloadError):
        build_size(-1, 1)
    assert build_flag(Flag.TERMINATE_SESSION) == b"\x00\x00\x00\x02"
    assert parse_flag(b"\x00\x00\x00\x03") == Flag.CONNECT_TO_PORT_ERROR
    for bad_flag in (b"", b"\x00\x00\x01", b"\x00" * 5):
        with pytest.raises(PayloadError):
            parse_flag(bad_flag)
    assert build_exit_code(3) == b"EXIT_CODE: 3"
    assert parse_exit_code(b"EXIT_CODE: 3") == 3
    assert parse_exit_code("EXIT_CODE: -1\n") == -1
    assert parse_exit_code(b"0") == 0
    with pytest.raises(PayloadError):
        parse_exit_code(b"EXIT_CODE: x")


def test_handshake_request_json_matches_the_spec() -> None:
    request = HandshakeRequest(
        "3.3.1142.0",
        (
            session_type_action(
                "Port",
                {"portNumber": "80", "localPortNumber": "9999", "type": "LocalPortForwarding"},
            ),
            kms_encryption_action("arn:aws:kms:k", "Y2hhbGxlbmdl"),
        ),
    )
    payload = build_handshake_request(request)
    assert payload == (
        b'{"AgentVersion":"3.3.1142.0","RequestedClientActions":['
        b'{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":'
        b'{"portNumber":"80","localPortNumber":"9999","type":"LocalPortForwarding"}}},'
        b'{"ActionType":"KMSEncryption","ActionParameters":'
        b'{"KMSKeyId":"arn:aws:kms:k","Challenge":"Y2hhbGxlbmdl"}}]}'
    )
    assert parse_handshake_request(payload) == request
    shell = build_handshake_request(
        HandshakeRequest("3.3.0.0", (session_type_action("Standard_Stream"),))
    )
    assert b'"Properties":null' in shell


def test_handshake_response_json_matches_the_probe() -> None:
    response = HandshakeResponse("1.2.0.0", (ProcessedAction("SessionType", ActionStatus.SUCCESS),))
    payload = build_handshake_response(response)
    assert payload == (
        b'{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType",'
        b'"ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}'
    )
    assert parse_handshake_response(payload) == response
    kms = build_handshake_response(
        HandshakeResponse("1.2.0.0", (ProcessedAction("KMSEncryption", 1, kms_result("a2V5")),))
    )
    assert json.loads(kms)["ProcessedClientActions"][0]["ActionResult"] == {
        "KMSCipherTextKey": "a2V5",
        "KMSCipherTextHash": None,
    }


def test_handshake_response_parse_is_tolerant() -> None:
    parsed = parse_handshake_response(
        '{"ClientVersion":"x","ProcessedClientActions":[{"ActionType":"SessionType"}],'
        '"Errors":["boom"]}'
    )
    assert parsed.actions[0].status == ActionStatus.FAILED
    assert parsed.errors == ("boom",)
    assert parse_handshake_response("{}").actions == ()


def test_handshake_complete_and_challenge() -> None:
    payload = build_handshake_complete(1234, "This session is encrypted using AWS KMS.")
    assert payload == (
        b'{"HandshakeTimeToComplete":1234,'
        b'"CustomerMessage":"This session is encrypted using AWS KMS."}'
    )
    assert parse_handshake_complete(payload).customer_message.startswith("This session")
    assert parse_challenge(build_challenge("abc=")) == "abc="


def test_agent_session_state() -> None:
    payload = build_agent_session_state("Connected", "alice-1")
    assert payload == b'{"SchemaVersion":1,"SessionState":"Connected","SessionId":"alice-1"}'
    state = parse_agent_session_state(payload)
    assert (state.session_state, state.session_id, state.schema_version) == (
        "Connected",
        "alice-1",
        1,
    )


def test_open_data_channel_build_and_variants() -> None:
    text = build_open_data_channel(
        "tok", request_id=MID, client_id="cid", client_version="1.2.764.0"
    )
    assert json.loads(text) == {
        "MessageSchemaVersion": "1.0",
        "RequestId": str(MID),
        "TokenValue": "tok",
        "ClientId": "cid",
        "ClientVersion": "1.2.764.0",
    }
    parsed = parse_open_data_channel(text)
    assert (parsed.token, parsed.client_id, parsed.client_version, parsed.is_agent) == (
        "tok",
        "cid",
        "1.2.764.0",
        False,
    )
    pyssm = parse_open_data_channel(
        '{"MessageSchemaVersion": 1, "RequestId": "r", "TokenValue": "t",'
        ' "ClientId": "pyssm-client", "ClientVersion": "pyssm-client/0.1.0"}'
    )
    assert pyssm.schema_version == "1.0"
    ssm_session = parse_open_data_channel(
        b'{"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"t"}'
    )
    assert ssm_session.client_id is None and ssm_session.client_version is None
    agent = parse_open_data_channel(
        build_open_data_channel("t", request_id="r", client_id="c", client_instance_id="i-0abc")
    )
    assert agent.is_agent and agent.client_instance_id == "i-0abc"
    assert "ClientVersion" not in json.loads(build_open_data_channel("t", request_id="r"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"MessageSchemaVersion":"1.0"}',
        '{"TokenValue":""}',
        '{"TokenValue":5}',
        '{"TokenValue":"t","MessageSchemaVersion":true}',
        '{"TokenValue":"t","MessageSchemaVersion":{}}',
        '{"TokenValue":"t","ClientId":7}',
    ],
)
def test_open_data_channel_rejects(text: str) -> None:
    with pytest.raises(PayloadError):
        parse_open_data_channel(text)


PARSERS: list[Callable[[Any], object]] = [
    parse_ack,
    parse_size,
    parse_exit_code,
    parse_challenge,
    parse_handshake_request,
    parse_handshake_response,
    parse_handshake_complete,
    parse_agent_session_state,
    parse_open_data_channel,
    parse_channel_closed,
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "TokenValue",
                    "MessageSchemaVersion",
                    "ClientId",
                    "cols",
                    "rows",
                    "AcknowledgedMessageSequenceNumber",
                    "RequestedClientActions",
                    "ProcessedClientActions",
                    "ActionType",
                    "ActionStatus",
                    "Errors",
                    "SessionState",
                    "Challenge",
                    "HandshakeTimeToComplete",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v).encode())))
def test_parsers_raise_only_payload_error(payload: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(PayloadError):
            parse(payload)
    with contextlib.suppress(PayloadError):
        parse_flag(payload)


def test_payload_type_constants() -> None:
    assert PayloadType.HANDSHAKE_REQUEST.value == 5
    assert RequestedAction("X").parameters is None
