"""The session handshake (docs/reference/data-channel.md#handshake) for both ends, sans I/O.

The agent side (:class:`AgentHandshake`) produces the HandshakeRequest, judges the
HandshakeResponse and says when to send HandshakeComplete; the client side
(:class:`ClientHandshake`) answers a HandshakeRequest. Payloads travel as ordinary stream
messages (PayloadType 5 to 9) through :class:`~hatchway.protocol.stream.Stream`. KMS
encryption is left to callables/callers (the crypto and the KMS calls are I/O); this module
only carries their results.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hatchway.protocol.errors import PayloadError, ProtocolError
from hatchway.protocol.frames import PayloadType
from hatchway.protocol.payloads import (
    SUPPORTED_SESSION_TYPES,
    ActionStatus,
    ActionType,
    HandshakeComplete,
    HandshakeRequest,
    HandshakeResponse,
    ProcessedAction,
    RequestedAction,
    SessionType,
    build_challenge,
    build_handshake_complete,
    build_handshake_request,
    build_handshake_response,
    kms_encryption_action,
    kms_result,
    parse_challenge,
    parse_handshake_complete,
    parse_handshake_request,
    parse_handshake_response,
    session_type_action,
)

__all__ = [
    "AGENT_VERSION",
    "CLIENT_VERSION",
    "HANDSHAKE_ERROR",
    "HANDSHAKE_TIMEOUT",
    "HANDSHAKE_TIMEOUT_MESSAGE",
    "AgentHandshake",
    "ChallengeHook",
    "ClientHandshake",
    "HandshakeState",
    "KmsDataKeyHook",
    "KmsParameters",
    "compare_versions",
    "parse_version",
    "requires_handshake",
]

AGENT_VERSION = "3.3.0.0"
"""AgentVersion we announce: four parts (the plugin compares 4-part versions only) and above
every plugin gate (2.3.722.0, 3.0.196.0 smux, 3.1.1511.0 smux keepalive off)."""
CLIENT_VERSION = "1.2.764.0"
"""ClientVersion our client sends: four parts, and above the agent's gates (mux ≥ 1.1.70,
smux keepalive off > 1.2.331.0, no separate-output notice > 1.2.295)."""
HANDSHAKE_TIMEOUT = 15.0
"""Seconds the agent waits for a HandshakeResponse, and again for an EncChallengeResponse."""
HANDSHAKE_ERROR = "Encountered error while initiating handshake."
HANDSHAKE_TIMEOUT_MESSAGE = (
    "Handshake timed out. Please ensure that you have the latest version of the session "
    "manager plugin."
)

KmsDataKeyHook = Callable[[str, str], str]
"""Client KMS hook: ``(kms_key_id, challenge) -> base64 KMSCipherTextKey``; raise to fail."""
ChallengeHook = Callable[[str], str]
"""Client challenge hook: base64 EncChallengeRequest challenge -> base64 response challenge."""


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"3.3.0.0"`` → ``(3, 3, 0, 0)``; ``None`` if not dotted non-negative integers."""
    parts = text.strip().split(".")
    if not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 like ``cmp(a, b)``; ``None`` when not comparable.

    As the official plugin does, versions with a different number of parts (or unparsable
    ones) are not comparable.
    """
    left, right = parse_version(a), parse_version(b)
    if left is None or right is None or len(left) != len(right):
        return None
    return (left > right) - (left < right)


def requires_handshake(session_type: str, encrypted: bool = False) -> bool:
    """Whether the agent handshakes: always for Port and NonInteractiveCommands, else with KMS."""
    return encrypted or session_type in (SessionType.PORT, SessionType.NON_INTERACTIVE_COMMANDS)


@dataclass(frozen=True, slots=True)
class KmsParameters:
    """The KMSEncryption action's parameters (``challenge``: base64 of 16 random bytes)."""

    kms_key_id: str
    challenge: str


class HandshakeState(StrEnum):
    """Where an :class:`AgentHandshake` stands; the name says what the caller does next."""

    NEW = "new"
    """Send :meth:`AgentHandshake.request` (PayloadType 5)."""
    AWAITING_RESPONSE = "awaiting_response"
    """Waiting for the HandshakeResponse (PayloadType 6)."""
    CHALLENGE_DUE = "challenge_due"
    """KMS: decrypt ``kms_ciphertext_key``, then send :meth:`AgentHandshake.challenge_request`."""
    AWAITING_CHALLENGE = "awaiting_challenge"
    """KMS: waiting for the EncChallengeResponse (PayloadType 9)."""
    COMPLETE_DUE = "complete_due"
    """Send :meth:`AgentHandshake.complete` (PayloadType 7); the session may then start."""
    DONE = "done"
    FAILED = "failed"
    """See ``error``; the agent ends the session."""


class AgentHandshake:
    """The agent's half of the handshake.

    ``properties`` is ``None`` except for Port sessions (the resolved document properties);
    ``kms`` adds the KMSEncryption action. Drive it with the ``now`` of the caller's clock.
    """

    def __init__(
        self,
        session_type: str,
        properties: Any = None,
        kms: KmsParameters | None = None,
        *,
        agent_version: str = AGENT_VERSION,
    ) -> None:
        self.session_type = session_type
        self.properties = properties
        self.kms = kms
        self.agent_version = agent_version
        self.state = HandshakeState.NEW
        self.error: str | None = None
        self.response: HandshakeResponse | None = None
        self.client_version: str | None = None
        self.kms_ciphertext_key: str | None = None
        """Base64 KMSCipherTextKey from the client's KMSEncryption result."""
        self.challenge_acknowledged = False
        self._started = 0.0
        self._phase_started = 0.0

    @property
    def done(self) -> bool:
        """True once HandshakeComplete has been produced."""
        return self.state is HandshakeState.DONE

    @property
    def failed(self) -> bool:
        """True when the handshake failed (``error`` says why)."""
        return self.state is HandshakeState.FAILED

    def _expect(self, *states: HandshakeState) -> None:
        if self.state not in states:
            raise ProtocolError(f"handshake is {self.state}, not {'/'.join(states)}")

    def _fail(self, detail: str) -> HandshakeState:
        self.state = HandshakeState.FAILED
        self.error = f"{HANDSHAKE_ERROR} {detail}".strip()
        return self.state

    def request(self, now: float) -> bytes:
        """The HandshakeRequest payload (PayloadType 5); starts the 15 s response timer."""
        self._expect(HandshakeState.NEW)
        actions: list[RequestedAction] = [session_type_action(self.session_type, self.properties)]
        if self.kms is not None:
            actions.append(kms_encryption_action(self.kms.kms_key_id, self.kms.challenge))
        self.state = HandshakeState.AWAITING_RESPONSE
        self._started = self._phase_started = now
        return build_handshake_request(HandshakeRequest(self.agent_version, tuple(actions)))

    def receive_response(self, payload: bytes) -> HandshakeState:
        """Judge the HandshakeResponse (PayloadType 6); returns the new :attr:`state`.

        Any action with ActionStatus ≠ 1 (or an unreadable response, or a missing KMS result
        when KMS was requested) fails the handshake with the agent's error text in ``error``.
        """
        self._expect(HandshakeState.AWAITING_RESPONSE)
        try:
            response = parse_handshake_response(payload)
        except PayloadError as exc:
            return self._fail(str(exc))
        self.response = response
        self.client_version = response.client_version
        for action in response.actions:
            if action.status != ActionStatus.SUCCESS:
                return self._fail(
                    f"{action.action_type} failed on client with status {action.status} "
                    f"error: {action.error}"
                )
            if action.action_type == ActionType.KMS_ENCRYPTION:
                result = action.result if isinstance(action.result, dict) else {}
                key = result.get("KMSCipherTextKey")
                if isinstance(key, str) and key:
                    self.kms_ciphertext_key = key
                self.challenge_acknowledged = result.get("ChallengeAcknowledgement") is True
        if self.kms is None:
            self.state = HandshakeState.COMPLETE_DUE
        elif self.kms_ciphertext_key is None:
            return self._fail("KMSEncryption result without KMSCipherTextKey")
        else:
            self.state = HandshakeState.CHALLENGE_DUE
        return self.state

    def challenge_request(self, challenge: str, now: float) -> bytes:
        """The EncChallengeRequest payload (PayloadType 8) for the caller's encrypted challenge."""
        self._expect(HandshakeState.CHALLENGE_DUE)
        self.state = HandshakeState.AWAITING_CHALLENGE
        self._phase_started = now
        return build_challenge(challenge)

    def receive_challenge_response(self, payload: bytes) -> str:
        """The base64 challenge of an EncChallengeResponse (PayloadType 9), for the caller to
        decrypt and compare; report the verdict with :meth:`challenge_verified`."""
        self._expect(HandshakeState.AWAITING_CHALLENGE)
        return parse_challenge(payload)

    def challenge_verified(self, ok: bool) -> HandshakeState:
        """Record whether the client's challenge matched; returns the new :attr:`state`."""
        self._expect(HandshakeState.AWAITING_CHALLENGE)
        if not ok:
            return self._fail("KMS challenge mismatch")
        self.state = HandshakeState.COMPLETE_DUE
        return self.state

    def complete(self, now: float, customer_message: str = "") -> bytes:
        """The HandshakeComplete payload (PayloadType 7), with the time since :meth:`request`."""
        self._expect(HandshakeState.COMPLETE_DUE)
        self.state = HandshakeState.DONE
        elapsed_ns = max(0, round((now - self._started) * 1e9))
        return build_handshake_complete(elapsed_ns, customer_message)

    def check_timeout(self, now: float, timeout: float = HANDSHAKE_TIMEOUT) -> bool:
        """Fail the handshake (and return True) if the client took longer than ``timeout``."""
        waiting = self.state in (
            HandshakeState.AWAITING_RESPONSE,
            HandshakeState.AWAITING_CHALLENGE,
        )
        if waiting and now - self._phase_started > timeout:
            self.state = HandshakeState.FAILED
            self.error = HANDSHAKE_TIMEOUT_MESSAGE
            return True
        return False


class ClientHandshake:
    """The client's half of the handshake.

    Accepts the session types in ``session_types`` (the plugin's four by default) and fails
    the others; answers unknown ActionTypes with Unsupported. KMS: ``kms_data_key`` is called
    with ``(kms_key_id, challenge)`` and returns the base64 KMSCipherTextKey (it may raise to
    fail the action); without it the KMSEncryption action is Failed. ``kms_challenge`` turns
    the agent's EncChallengeRequest challenge into the response challenge. With
    ``acknowledge_challenge`` a non-empty ``Challenge`` is acknowledged
    (``ChallengeAcknowledgement: true``): the agent then adds it to the encryption context as
    ``aws:ssm:RandomChallenge``, so the hook must have put it in the data key's context too.
    """

    def __init__(
        self,
        *,
        client_version: str = CLIENT_VERSION,
        kms_data_key: KmsDataKeyHook | None = None,
        kms_challenge: ChallengeHook | None = None,
        session_types: Collection[str] = SUPPORTED_SESSION_TYPES,
        acknowledge_challenge: bool = False,
    ) -> None:
        self.client_version = client_version
        self.kms_data_key = kms_data_key
        self.kms_challenge = kms_challenge
        self.acknowledge_challenge = acknowledge_challenge
        self.session_types = frozenset(str(t) for t in session_types)
        self.request: HandshakeRequest | None = None
        self.agent_version: str | None = None
        self.session_type: str | None = None
        """The accepted session type (None until a request accepted one)."""
        self.properties: Any = None
        self.encrypted = False
        """True once the KMSEncryption action succeeded."""
        self.complete: HandshakeComplete | None = None
        self._actions: dict[str, Callable[[Any], ProcessedAction]] = {
            ActionType.SESSION_TYPE: self._session_type,
            ActionType.KMS_ENCRYPTION: self._kms_encryption,
        }
        self._payloads: dict[int, Callable[[bytes], tuple[int, bytes] | None]] = {
            PayloadType.HANDSHAKE_REQUEST: lambda p: (
                PayloadType.HANDSHAKE_RESPONSE,
                self.receive_request(p),
            ),
            PayloadType.ENC_CHALLENGE_REQUEST: lambda p: (
                PayloadType.ENC_CHALLENGE_RESPONSE,
                self.receive_challenge(p),
            ),
            PayloadType.HANDSHAKE_COMPLETE: self._on_complete,
        }

    @property
    def done(self) -> bool:
        """True once HandshakeComplete arrived (the session may start)."""
        return self.complete is not None

    @property
    def customer_message(self) -> str:
        """The CustomerMessage of HandshakeComplete ("" before), for the user to see."""
        return self.complete.customer_message if self.complete else ""

    def handle(self, payload_type: int, payload: bytes) -> tuple[int, bytes] | None:
        """Feed one delivered stream payload; return ``(payload_type, payload)`` to send back.

        Payload types that are not handshake messages are ignored (``None``).
        """
        handler = self._payloads.get(payload_type)
        return handler(payload) if handler is not None else None

    def receive_request(self, payload: bytes) -> bytes:
        """Answer a HandshakeRequest (PayloadType 5) with the HandshakeResponse payload (6)."""
        request = parse_handshake_request(payload)
        self.request = request
        self.agent_version = request.agent_version
        processed = [self._process(action) for action in request.actions]
        return build_handshake_response(HandshakeResponse(self.client_version, tuple(processed)))

    def receive_challenge(self, payload: bytes) -> bytes:
        """Answer an EncChallengeRequest (8) with the EncChallengeResponse payload (9)."""
        if self.kms_challenge is None:
            raise ProtocolError("EncChallengeRequest received but no kms_challenge hook is set")
        return build_challenge(self.kms_challenge(parse_challenge(payload)))

    def receive_complete(self, payload: bytes) -> HandshakeComplete:
        """Record a HandshakeComplete (PayloadType 7)."""
        self.complete = parse_handshake_complete(payload)
        return self.complete

    def _on_complete(self, payload: bytes) -> None:
        self.receive_complete(payload)

    def _process(self, action: RequestedAction) -> ProcessedAction:
        handler = self._actions.get(action.action_type)
        if handler is None:
            return ProcessedAction(
                action.action_type,
                ActionStatus.UNSUPPORTED,
                error=f"Unsupported action {action.action_type}",
            )
        return handler(action.parameters)

    def _session_type(self, parameters: Any) -> ProcessedAction:
        params = parameters if isinstance(parameters, dict) else {}
        session_type = params.get("SessionType")
        if not isinstance(session_type, str) or session_type not in self.session_types:
            return ProcessedAction(
                ActionType.SESSION_TYPE,
                ActionStatus.FAILED,
                error=f"Unknown session type {session_type}",
            )
        self.session_type = session_type
        self.properties = params.get("Properties")
        return ProcessedAction(ActionType.SESSION_TYPE, ActionStatus.SUCCESS)

    def _kms_encryption(self, parameters: Any) -> ProcessedAction:
        params = parameters if isinstance(parameters, dict) else {}
        key_id, challenge = params.get("KMSKeyId"), params.get("Challenge", "")
        if self.kms_data_key is None:
            error = "KMS encryption is not supported by this client"
        elif not isinstance(key_id, str) or not isinstance(challenge, str):
            error = "KMSEncryption action without KMSKeyId"
        else:
            try:
                ciphertext_key = self.kms_data_key(key_id, challenge)
            except Exception as exc:
                error = f"Failed to generate a KMS data key: {exc}"
            else:
                self.encrypted = True
                acknowledged = self.acknowledge_challenge and bool(challenge)
                return ProcessedAction(
                    ActionType.KMS_ENCRYPTION,
                    ActionStatus.SUCCESS,
                    kms_result(ciphertext_key, challenge_acknowledgement=acknowledged),
                )
        return ProcessedAction(ActionType.KMS_ENCRYPTION, ActionStatus.FAILED, error=error)
