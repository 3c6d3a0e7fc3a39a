"""The handshake, agent side and client side, wired directly and through two Streams."""

from __future__ import annotations

import json

import pytest

from hatchway.protocol import (
    AGENT_VERSION,
    CLIENT_VERSION,
    HANDSHAKE_TIMEOUT_MESSAGE,
    ActionStatus,
    AgentHandshake,
    ClientHandshake,
    Deliver,
    HandshakeState,
    KmsParameters,
    PayloadType,
    ProtocolError,
    Role,
    SendBytes,
    Stream,
    compare_versions,
    parse_handshake_request,
    parse_handshake_response,
    parse_version,
    requires_handshake,
)

PORT_PROPS = {"portNumber": "80", "localPortNumber": "9999", "type": "LocalPortForwarding"}


def test_versions() -> None:
    assert AGENT_VERSION == "3.3.0.0" and parse_version(AGENT_VERSION) == (3, 3, 0, 0)
    assert len(CLIENT_VERSION.split(".")) == 4
    for gate in ("2.3.722.0", "3.0.196.0", "3.1.1511.0"):
        assert compare_versions(AGENT_VERSION, gate) == 1
    assert compare_versions(CLIENT_VERSION, "1.2.331.0") == 1
    assert compare_versions("3.3", "3.3.0.0") is None  # the plugin: length mismatch
    assert compare_versions("1.2.0.0", "1.2.0.0") == 0
    assert parse_version("1.x") is None


def test_requires_handshake() -> None:
    assert requires_handshake("Port") and requires_handshake("NonInteractiveCommands")
    assert not requires_handshake("Standard_Stream")
    assert not requires_handshake("InteractiveCommands")
    assert requires_handshake("Standard_Stream", encrypted=True)


def test_port_handshake_end_to_end() -> None:
    agent = AgentHandshake("Port", PORT_PROPS)
    client = ClientHandshake()
    request = agent.request(now=100.0)
    assert agent.state is HandshakeState.AWAITING_RESPONSE
    parsed = parse_handshake_request(request)
    assert parsed.agent_version == "3.3.0.0"
    assert parsed.actions[0].parameters == {"SessionType": "Port", "Properties": PORT_PROPS}
    reply = client.handle(PayloadType.HANDSHAKE_REQUEST, request)
    assert reply is not None and reply[0] == PayloadType.HANDSHAKE_RESPONSE
    assert json.loads(reply[1]) == {
        "ClientVersion": CLIENT_VERSION,
        "ProcessedClientActions": [
            {"ActionType": "SessionType", "ActionStatus": 1, "ActionResult": None, "Error": ""}
        ],
        "Errors": None,
    }
    assert (client.session_type, client.properties) == ("Port", PORT_PROPS)
    assert client.agent_version == "3.3.0.0"
    assert agent.receive_response(reply[1]) is HandshakeState.COMPLETE_DUE
    assert agent.client_version == CLIENT_VERSION
    complete = agent.complete(now=100.25, customer_message="hi")
    assert agent.done
    assert json.loads(complete) == {"HandshakeTimeToComplete": 250_000_000, "CustomerMessage": "hi"}
    assert not client.done
    assert client.handle(PayloadType.HANDSHAKE_COMPLETE, complete) is None
    assert client.done and client.customer_message == "hi"
    assert client.handle(PayloadType.OUTPUT, b"data") is None


def test_agent_fails_on_a_failed_action_with_its_error_text() -> None:
    agent = AgentHandshake("FancyType")
    client = ClientHandshake()
    response = client.receive_request(agent.request(0.0))
    (action,) = parse_handshake_response(response).actions
    assert action.status == ActionStatus.FAILED and "FancyType" in action.error
    assert client.session_type is None
    assert agent.receive_response(response) is HandshakeState.FAILED
    assert agent.failed and agent.error is not None
    assert agent.error.startswith("Encountered error while initiating handshake.")
    assert "SessionType failed on client with status 2" in agent.error
    with pytest.raises(ProtocolError):
        agent.complete(1.0)


def test_garbled_response_fails_the_handshake() -> None:
    agent = AgentHandshake("Port", PORT_PROPS)
    agent.request(0.0)
    assert agent.receive_response(b"{nope") is HandshakeState.FAILED


def test_unknown_actions_are_unsupported_and_fail_the_agent() -> None:
    request = json.dumps(
        {
            "AgentVersion": "3.3.0.0",
            "RequestedClientActions": [
                {
                    "ActionType": "SessionType",
                    "ActionParameters": {"SessionType": "Standard_Stream", "Properties": None},
                },
                {"ActionType": "Teleport", "ActionParameters": {}},
            ],
        }
    ).encode()
    response = parse_handshake_response(ClientHandshake().receive_request(request))
    assert [(a.action_type, a.status) for a in response.actions] == [
        ("SessionType", ActionStatus.SUCCESS),
        ("Teleport", ActionStatus.UNSUPPORTED),
    ]
    agent = AgentHandshake("Standard_Stream")
    agent.request(0.0)
    raw = ClientHandshake().receive_request(request)
    assert agent.receive_response(raw) is HandshakeState.FAILED
    assert agent.error is not None and "status 3" in agent.error


def test_kms_without_hook_is_failed_like_pyssm() -> None:
    agent = AgentHandshake("Standard_Stream", kms=KmsParameters("alias/k", "Y2g="))
    client = ClientHandshake()
    response = client.receive_request(agent.request(0.0))
    kms = parse_handshake_response(response).actions[1]
    assert (kms.action_type, kms.status) == ("KMSEncryption", ActionStatus.FAILED)
    assert not client.encrypted
    assert agent.receive_response(response) is HandshakeState.FAILED


def test_kms_hooks_and_challenge_round() -> None:
    calls: list[tuple[str, str]] = []

    def data_key(key_id: str, challenge: str) -> str:
        calls.append((key_id, challenge))
        return "Y2lwaGVy"

    agent = AgentHandshake("Standard_Stream", kms=KmsParameters("alias/k", "Y2g="))
    client = ClientHandshake(kms_data_key=data_key, kms_challenge=lambda c: c[::-1])
    request = agent.request(0.0)
    assert parse_handshake_request(request).actions[1].parameters == {
        "KMSKeyId": "alias/k",
        "Challenge": "Y2g=",
    }
    response = client.receive_request(request)
    assert calls == [("alias/k", "Y2g=")] and client.encrypted
    assert agent.receive_response(response) is HandshakeState.CHALLENGE_DUE
    assert agent.kms_ciphertext_key == "Y2lwaGVy"
    challenge = agent.challenge_request("QUJD", now=1.0)
    reply = client.handle(PayloadType.ENC_CHALLENGE_REQUEST, challenge)
    assert reply is not None and reply[0] == PayloadType.ENC_CHALLENGE_RESPONSE
    assert agent.receive_challenge_response(reply[1]) == "DJUQ"
    assert agent.challenge_verified(True) is HandshakeState.COMPLETE_DUE
    agent.complete(2.0, "This session is encrypted using AWS KMS.")
    assert agent.done


def test_kms_hook_failure_and_challenge_mismatch() -> None:
    def broken(key_id: str, challenge: str) -> str:
        raise RuntimeError("no credentials")

    response = ClientHandshake(kms_data_key=broken).receive_request(
        AgentHandshake("Standard_Stream", kms=KmsParameters("k", "c")).request(0.0)
    )
    kms = parse_handshake_response(response).actions[1]
    assert kms.status == ActionStatus.FAILED and "no credentials" in kms.error
    agent = AgentHandshake("Standard_Stream", kms=KmsParameters("k", "c"))
    client = ClientHandshake(kms_data_key=lambda k, c: "a2V5")
    agent.receive_response(client.receive_request(agent.request(0.0)))
    agent.challenge_request("x", 0.0)
    assert agent.challenge_verified(False) is HandshakeState.FAILED
    with pytest.raises(ProtocolError):
        ClientHandshake().receive_challenge(b'{"Challenge":"x"}')


def test_timeouts() -> None:
    agent = AgentHandshake("Port", PORT_PROPS)
    assert not agent.check_timeout(1000.0)  # not started
    agent.request(0.0)
    assert not agent.check_timeout(15.0)
    assert agent.check_timeout(15.01)
    assert agent.failed and agent.error == HANDSHAKE_TIMEOUT_MESSAGE


def test_handshake_over_two_streams() -> None:
    agent_stream, client_stream = Stream(Role.AGENT), Stream(Role.CLIENT)
    agent, client = AgentHandshake("NonInteractiveCommands"), ClientHandshake()
    wire_to_client = [agent_stream.send(PayloadType.HANDSHAKE_REQUEST, agent.request(0.0), 0.0)]
    wire_to_agent: list[bytes] = []
    for _ in range(4):
        for data in wire_to_client:
            for event in client_stream.receive(data, 0.01):
                if isinstance(event, SendBytes):
                    wire_to_agent.append(event.data)
                elif isinstance(event, Deliver) and (
                    reply := client.handle(event.payload_type, event.payload)
                ):
                    wire_to_agent.append(client_stream.send(*reply, 0.01))
        wire_to_client = []
        for data in wire_to_agent:
            for event in agent_stream.receive(data, 0.02):
                if isinstance(event, SendBytes):
                    wire_to_client.append(event.data)
                elif isinstance(event, Deliver):
                    assert event.payload_type == PayloadType.HANDSHAKE_RESPONSE
                    agent.receive_response(event.payload)
                    complete = agent.complete(0.02)
                    wire_to_client.append(
                        agent_stream.send(PayloadType.HANDSHAKE_COMPLETE, complete, 0.02)
                    )
        wire_to_agent = []
    assert agent.done and client.done
    assert agent_stream.unacked_count == client_stream.unacked_count == 0
    assert agent_stream.next_sequence_number == 2 and client_stream.next_sequence_number == 1
