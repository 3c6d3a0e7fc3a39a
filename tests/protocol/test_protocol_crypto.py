"""KMS session encryption: the block cipher both ends run, nonces, the challenge
(docs/reference/data-channel.md#kms-encryption)."""

from __future__ import annotations

import base64
import itertools
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from hatchway.protocol import (
    AgentHandshake,
    ClientHandshake,
    HandshakeState,
    KmsParameters,
    Role,
    parse_handshake_response,
)
from hatchway.protocol.crypto import (
    OVERHEAD,
    CounterNonce,
    DecryptError,
    SessionCipher,
    answer_challenge,
    encryption_context,
    handshake_challenge,
    new_challenge,
    verify_challenge,
)

KEY = bytes(range(64))


def pair(key: bytes = KEY) -> tuple[SessionCipher, SessionCipher]:
    return SessionCipher(Role.AGENT, key), SessionCipher(Role.CLIENT, key)


def test_agent_to_client_and_back() -> None:
    agent, client = pair()
    assert client.decrypt(agent.encrypt(b"uid=1001(ssm-user)\r\n")) == b"uid=1001(ssm-user)\r\n"
    assert agent.decrypt(client.encrypt(b"id\r")) == b"id\r"


def test_key_halves_by_role_and_wire_layout() -> None:
    """Independently of SessionCipher: agent→client uses bytes 0–31, client→agent 32–63,
    AES-256-GCM without AAD, laid out as nonce ‖ ciphertext ‖ tag."""
    agent, client = pair()
    sent = agent.encrypt(b"hello")
    assert len(sent) == len(b"hello") + OVERHEAD
    assert AESGCM(KEY[:32]).decrypt(sent[:12], sent[12:], None) == b"hello"
    back = client.encrypt(b"world")
    assert AESGCM(KEY[32:]).decrypt(back[:12], back[12:], None) == b"world"
    # And the reverse: what a peer sealed by hand opens here.
    nonce = b"\x07" * 12
    assert client.decrypt(nonce + AESGCM(KEY[:32]).encrypt(nonce, b"x", None)) == b"x"
    assert agent.decrypt(nonce + AESGCM(KEY[32:]).encrypt(nonce, b"y", None)) == b"y"


def test_an_end_cannot_open_its_own_messages() -> None:
    agent, client = pair()
    with pytest.raises(DecryptError):
        agent.decrypt(agent.encrypt(b"echo"))
    with pytest.raises(DecryptError):
        client.decrypt(client.encrypt(b"echo"))


def test_another_sessions_key_does_not_open() -> None:
    agent, _ = pair()
    _, stranger = pair(os.urandom(64))
    with pytest.raises(DecryptError):
        stranger.decrypt(agent.encrypt(b"secret"))


@pytest.mark.parametrize("index", [0, 11, 12, 16, -17, -1])
def test_any_flipped_bit_is_detected(index: int) -> None:
    agent, client = pair()
    sealed = bytearray(agent.encrypt(b"0123456789"))
    sealed[index] ^= 0x01
    with pytest.raises(DecryptError):
        client.decrypt(bytes(sealed))


@pytest.mark.parametrize("cut", [0, 1, 12, 27])
def test_truncated_payloads_are_refused(cut: int) -> None:
    agent, client = pair()
    sealed = agent.encrypt(b"")
    assert len(sealed) == 28 and client.decrypt(sealed) == b""
    with pytest.raises(DecryptError):
        client.decrypt(sealed[:cut])


def test_key_size_is_checked() -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        SessionCipher(Role.AGENT, b"\x00" * 32)


def test_counter_nonce_counts_little_endian_with_carry() -> None:
    start = b"\xfe\xff\xff\xff" + b"\x00" * 8
    nonces = CounterNonce(start)
    assert nonces.next() == start
    assert nonces.next() == b"\xff\xff\xff\xff" + b"\x00" * 8
    # The first u32 word overflows into the second.
    assert nonces.next() == b"\x00\x00\x00\x00\x01\x00\x00\x00" + b"\x00" * 4
    top = CounterNonce(b"\xff" * 12)
    assert top.next() == b"\xff" * 12
    assert top.next() == b"\x00" * 12
    with pytest.raises(ValueError):
        CounterNonce(b"\x00" * 11)


def test_agent_nonces_follow_the_counter_from_a_random_start() -> None:
    starts = iter([b"\x01" + b"\x00" * 11])
    agent = SessionCipher(Role.AGENT, KEY, random=lambda n: next(starts)[:n])
    first, second = agent.encrypt(b"a"), agent.encrypt(b"b")
    assert first[:12] == b"\x01" + b"\x00" * 11
    assert second[:12] == b"\x02" + b"\x00" * 11


def test_nonces_never_repeat() -> None:
    agent, client = pair()
    agent_nonces = {agent.encrypt(b"x")[:12] for _ in range(5000)}
    client_nonces = {client.encrypt(b"x")[:12] for _ in range(5000)}
    assert len(agent_nonces) == 5000
    assert len(client_nonces) == 5000


def test_agent_counters_start_at_random_values() -> None:
    starts = {SessionCipher(Role.AGENT, KEY).encrypt(b"")[:12] for _ in range(50)}
    assert len(starts) == 50


@given(st.binary(max_size=4096), st.binary(min_size=64, max_size=64))
def test_round_trip_any_payload(data: bytes, key: bytes) -> None:
    agent, client = pair(key)
    assert client.decrypt(agent.encrypt(data)) == data
    assert agent.decrypt(client.encrypt(data)) == data


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data: bytes) -> None:
    _, client = pair()
    with pytest.raises(DecryptError):
        client.decrypt(data)


def test_challenge_round() -> None:
    agent, client = pair()
    secret, challenge = new_challenge(agent)
    assert len(secret) == 64
    assert secret not in base64.b64decode(challenge)
    response = answer_challenge(client, challenge)
    assert verify_challenge(agent, secret, response)
    assert not verify_challenge(agent, os.urandom(64), response)


def test_challenge_with_the_wrong_key_fails_both_ways() -> None:
    agent, _ = pair()
    _, impostor = pair(os.urandom(64))
    secret, challenge = new_challenge(agent)
    with pytest.raises(DecryptError):
        answer_challenge(impostor, challenge)
    # An impostor that echoes or re-seals under its own key does not pass.
    assert not verify_challenge(agent, secret, challenge)
    assert not verify_challenge(agent, secret, base64.b64encode(impostor.encrypt(secret)).decode())
    assert not verify_challenge(agent, secret, "not base64!")
    with pytest.raises(DecryptError):
        answer_challenge(impostor, "%%%")


def test_context_and_handshake_challenge() -> None:
    assert encryption_context("alice-0123", "mi-0abc") == {
        "aws:ssm:SessionId": "alice-0123",
        "aws:ssm:TargetId": "mi-0abc",
    }
    assert encryption_context("s", "t", "Y2g=")["aws:ssm:RandomChallenge"] == "Y2g="
    counter = itertools.count()
    text = handshake_challenge(lambda n: bytes(next(counter) for _ in range(n)))
    assert base64.b64decode(text) == bytes(range(16))


@pytest.mark.parametrize(
    ("acknowledge", "challenge", "expected"),
    [(True, "Y2g=", True), (False, "Y2g=", False), (True, "", False)],
)
def test_client_acknowledges_the_challenge_only_when_asked(
    acknowledge: bool, challenge: str, expected: bool
) -> None:
    agent = AgentHandshake("Standard_Stream", kms=KmsParameters("alias/k", challenge))
    client = ClientHandshake(kms_data_key=lambda k, c: "a2V5", acknowledge_challenge=acknowledge)
    response = client.receive_request(agent.request(0.0))
    result = parse_handshake_response(response).actions[1].result
    assert isinstance(result, dict)
    assert (result.get("ChallengeAcknowledgement") is True) is expected
    assert agent.receive_response(response) is HandshakeState.CHALLENGE_DUE
    assert agent.challenge_acknowledged is expected
