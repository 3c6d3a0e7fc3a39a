"""When the agent asks for KMS encryption, and what it offers
(docs/reference/data-channel.md#handshake, docs/reference/data-channel.md#kms-encryption)."""

from __future__ import annotations

import base64

import pytest

from hatchway.agent.registration import Registration
from hatchway.agent.session import AgentSession, SessionSettings

REG = Registration("mi-0123456789abcdef0", "us-east-1", "123456789012", "http://b", "AK", "SK")


def _session(inputs: object) -> AgentSession:
    session = AgentSession(REG, {"sessionId": "alice-0123456789abcdef0"}, SessionSettings())
    session.document = {"schemaVersion": "1.0", "sessionType": "Standard_Stream"}
    if inputs is not None:
        session.document["inputs"] = inputs
    return session


@pytest.mark.parametrize("session_type", ["Standard_Stream", "InteractiveCommands"])
def test_a_key_in_the_inputs_asks_for_encryption(session_type: str) -> None:
    kms = _session({"kmsKeyId": " alias/sessions "})._kms_parameters(session_type)
    assert kms is not None and kms.kms_key_id == "alias/sessions"
    assert len(base64.b64decode(kms.challenge, validate=True)) == 16


def test_challenges_differ_per_session() -> None:
    first = _session({"kmsKeyId": "k"})._kms_parameters("Standard_Stream")
    second = _session({"kmsKeyId": "k"})._kms_parameters("Standard_Stream")
    assert first is not None and second is not None and first.challenge != second.challenge


@pytest.mark.parametrize(
    ("inputs", "session_type"),
    [
        (None, "Standard_Stream"),
        ({}, "Standard_Stream"),
        ({"kmsKeyId": ""}, "Standard_Stream"),
        ({"kmsKeyId": "   "}, "Standard_Stream"),
        ({"kmsKeyId": 42}, "Standard_Stream"),
        ("not an object", "Standard_Stream"),
        ({"kmsKeyId": "alias/sessions"}, "Port"),  # never for Port, as AWS's agent
    ],
)
def test_no_encryption_without_a_key_or_for_port(inputs: object, session_type: str) -> None:
    assert _session(inputs)._kms_parameters(session_type) is None
