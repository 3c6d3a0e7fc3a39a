"""Builders and parsers of the data-channel payloads (docs/reference/data-channel.md#json-payloads).

``build_*`` return the payload bytes (compact JSON, field names and order exactly as the Go
peers write them); ``parse_*`` accept ``bytes`` or ``str``, are tolerant of the variants real
peers send, and raise only :class:`PayloadError`.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from hatchway.protocol.errors import PayloadError
from hatchway.protocol.frames import Frame, MessageType, PayloadType

__all__ = [
    "ACK_FLAGS",
    "SUPPORTED_SESSION_TYPES",
    "Ack",
    "ActionStatus",
    "ActionType",
    "AgentSessionState",
    "ChannelClosedMessage",
    "HandshakeComplete",
    "HandshakeRequest",
    "HandshakeResponse",
    "OpenDataChannel",
    "PayloadError",
    "ProcessedAction",
    "RequestedAction",
    "SessionType",
    "Size",
    "ack_frame",
    "build_ack",
    "build_agent_session_state",
    "build_challenge",
    "build_channel_closed",
    "build_exit_code",
    "build_flag",
    "build_handshake_complete",
    "build_handshake_request",
    "build_handshake_response",
    "build_open_data_channel",
    "build_size",
    "kms_encryption_action",
    "kms_result",
    "parse_ack",
    "parse_agent_session_state",
    "parse_challenge",
    "parse_channel_closed",
    "parse_exit_code",
    "parse_flag",
    "parse_handshake_complete",
    "parse_handshake_request",
    "parse_handshake_response",
    "parse_open_data_channel",
    "parse_size",
    "session_type_action",
]

ACK_FLAGS = 3
"""Flags of acknowledge and agent control frames."""

_U32 = struct.Struct(">I")


class SessionType(StrEnum):
    """Session types carried by the SessionType handshake action."""

    STANDARD_STREAM = "Standard_Stream"
    INTERACTIVE_COMMANDS = "InteractiveCommands"
    NON_INTERACTIVE_COMMANDS = "NonInteractiveCommands"
    PORT = "Port"


SUPPORTED_SESSION_TYPES = frozenset(SessionType)


class ActionType(StrEnum):
    """ActionType of a handshake action."""

    SESSION_TYPE = "SessionType"
    KMS_ENCRYPTION = "KMSEncryption"


class ActionStatus(IntEnum):
    """ActionStatus of a processed handshake action."""

    SUCCESS = 1
    FAILED = 2
    UNSUPPORTED = 3


# --- JSON helpers --------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _loads(payload: bytes | str, what: str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"{what}: not JSON ({exc})") from None


def _object(payload: bytes | str, what: str) -> dict[str, Any]:
    value = _loads(payload, what)
    if not isinstance(value, dict):
        raise PayloadError(f"{what}: expected a JSON object")
    return value


def _str(obj: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise PayloadError(f"{what}: {key} must be a string")
    return value


def _opt_str(obj: dict[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{what}: {key} must be a string")
    return value


def _int(obj: dict[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = obj.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what}: {key} must be an integer")
    return value


def _list(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{what}: {key} must be a list")
    return value


def _text(payload: bytes | str) -> str:
    if isinstance(payload, str):
        return payload
    return payload.decode("utf-8", errors="replace")


# --- Acknowledge ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """An Acknowledge payload. Receivers match acks on ``sequence_number`` only."""

    message_type: str
    message_id: str
    sequence_number: int
    is_sequential: bool = True


def build_ack(message_type: str, message_id: uuid.UUID | str, sequence_number: int) -> bytes:
    """The Acknowledge JSON for the stream message ``(message_type, message_id, seq)``."""
    return _dumps(
        {
            "AcknowledgedMessageType": str(message_type),
            "AcknowledgedMessageId": str(message_id),
            "AcknowledgedMessageSequenceNumber": sequence_number,
            "IsSequentialMessage": True,
        }
    )


def parse_ack(payload: bytes | str) -> Ack:
    """Parse an Acknowledge JSON; only the sequence number is required."""
    what = "acknowledge"
    obj = _object(payload, what)
    sequential = obj.get("IsSequentialMessage", True)
    return Ack(
        message_type=_str(obj, "AcknowledgedMessageType", what, default=""),
        message_id=_str(obj, "AcknowledgedMessageId", what, default=""),
        sequence_number=_int(obj, "AcknowledgedMessageSequenceNumber", what),
        is_sequential=sequential if isinstance(sequential, bool) else True,
    )


def ack_frame(acked: Frame, message_id: uuid.UUID, created_date: int) -> Frame:
    """The ``acknowledge`` frame for ``acked``: seq 0, flags 3, PayloadType 0."""
    return Frame(
        message_type=MessageType.ACKNOWLEDGE,
        sequence_number=0,
        payload_type=PayloadType.UNDEFINED,
        payload=build_ack(acked.message_type, acked.message_id, acked.sequence_number),
        message_id=message_id,
        created_date=created_date,
        flags=ACK_FLAGS,
    )


# --- channel_closed ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelClosedMessage:
    """A ``channel_closed`` payload. ``output`` is the reason text ("" for a normal end)."""

    session_id: str
    output: str = ""
    message_id: str = ""
    created_date: str = ""
    destination_id: str = ""
    schema_version: int = 1
    exit_code: int | None = None
    """Hatchway's broker adds ``ExitCode`` (the command's exit code, when the node reported
    one); AWS's plugin decodes channel_closed into a struct without it and ignores it."""


def build_channel_closed(
    session_id: str,
    output: str = "",
    *,
    message_id: uuid.UUID | str,
    created_date: str = "",
    destination_id: str = "",
    exit_code: int | None = None,
) -> bytes:
    """The ``channel_closed`` JSON sent by the service to a client or an agent."""
    obj: dict[str, Any] = {
        "MessageId": str(message_id),
        "CreatedDate": created_date,
        "DestinationId": destination_id,
        "SessionId": session_id,
        "MessageType": MessageType.CHANNEL_CLOSED.value,
        "SchemaVersion": 1,
        "Output": output,
    }
    if exit_code is not None:
        obj["ExitCode"] = exit_code
    return _dumps(obj)


def parse_channel_closed(payload: bytes | str) -> ChannelClosedMessage:
    """Parse a ``channel_closed`` payload; bare (non-JSON-object) text becomes ``output``."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        return ChannelClosedMessage(session_id="", output=_text(payload))

    def text(key: str) -> str:
        item = value.get(key)
        return item if isinstance(item, str) else "" if item is None else str(item)

    schema = value.get("SchemaVersion")
    return ChannelClosedMessage(
        session_id=text("SessionId"),
        output=text("Output"),
        message_id=text("MessageId"),
        created_date=text("CreatedDate"),
        destination_id=text("DestinationId"),
        schema_version=schema if isinstance(schema, int) and not isinstance(schema, bool) else 1,
        exit_code=_exit_code_field(value.get("ExitCode")),
    )


# --- Size, Flag, ExitCode, challenge -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Size:
    """A terminal size (PayloadType 3)."""

    cols: int
    rows: int


def build_size(cols: int, rows: int) -> bytes:
    """The Size JSON ``{"cols":..,"rows":..}``."""
    for name, value in (("cols", cols), ("rows", rows)):
        if not 0 <= value <= 2**32 - 1:
            raise PayloadError(f"size: {name} {value} is not a u32")
    return _dumps({"cols": cols, "rows": rows})


def parse_size(payload: bytes | str) -> Size:
    """Parse a Size JSON (extra whitespace and members allowed)."""
    obj = _object(payload, "size")
    cols, rows = _int(obj, "cols", "size"), _int(obj, "rows", "size")
    if cols < 0 or rows < 0:
        raise PayloadError("size: negative cols or rows")
    return Size(cols, rows)


def build_flag(flag: int) -> bytes:
    """A Flag payload: the value as a 4-byte big-endian u32 (not JSON)."""
    if not 0 <= flag <= 2**32 - 1:
        raise PayloadError(f"flag {flag} is not a u32")
    return _U32.pack(flag)


def parse_flag(payload: bytes) -> int:
    """Parse a Flag payload (exactly 4 bytes); compare the result with :class:`Flag`."""
    if len(payload) != 4:
        raise PayloadError(f"flag payload must be 4 bytes, got {len(payload)}")
    value: int = _U32.unpack(payload)[0]
    return value


def build_exit_code(code: int) -> bytes:
    """The ExitCode payload ``EXIT_CODE: <n>`` (PayloadType 12)."""
    return f"EXIT_CODE: {code}".encode()


def parse_exit_code(payload: bytes | str) -> int:
    """Parse ``EXIT_CODE: <n>`` (surrounding whitespace allowed) or a bare integer."""
    text = _text(payload).strip()
    if text.startswith("EXIT_CODE:"):
        text = text.removeprefix("EXIT_CODE:").strip()
    try:
        return int(text)
    except ValueError:
        raise PayloadError(f"not an exit code: {text[:60]!r}") from None


def build_challenge(challenge: str) -> bytes:
    """An EncChallengeRequest/Response JSON ``{"Challenge":"<base64>"}`` (PayloadType 8/9)."""
    return _dumps({"Challenge": challenge})


def parse_challenge(payload: bytes | str) -> str:
    """The base64 ``Challenge`` of an EncChallengeRequest/Response."""
    return _str(_object(payload, "challenge"), "Challenge", "challenge")


# --- Handshake -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestedAction:
    """One entry of ``RequestedClientActions``; ``parameters`` is the decoded JSON value."""

    action_type: str
    parameters: Any = None


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """A HandshakeRequest (PayloadType 5, agent → client)."""

    agent_version: str
    actions: tuple[RequestedAction, ...]


@dataclass(frozen=True, slots=True)
class ProcessedAction:
    """One entry of ``ProcessedClientActions``."""

    action_type: str
    status: int
    result: Any = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """A HandshakeResponse (PayloadType 6, client → agent)."""

    client_version: str
    actions: tuple[ProcessedAction, ...]
    errors: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """A HandshakeComplete (PayloadType 7, agent → client)."""

    time_to_complete_ns: int
    customer_message: str = ""


def session_type_action(session_type: str, properties: Any = None) -> RequestedAction:
    """The SessionType action; ``properties`` is ``None`` except for Port sessions."""
    return RequestedAction(
        ActionType.SESSION_TYPE, {"SessionType": str(session_type), "Properties": properties}
    )


def kms_encryption_action(kms_key_id: str, challenge: str) -> RequestedAction:
    """The KMSEncryption action (``challenge``: base64 of 16 random bytes)."""
    return RequestedAction(
        ActionType.KMS_ENCRYPTION, {"KMSKeyId": kms_key_id, "Challenge": challenge}
    )


def kms_result(ciphertext_key: str, *, challenge_acknowledgement: bool = False) -> dict[str, Any]:
    """The ``ActionResult`` of a successful KMSEncryption action (base64 ciphertext key)."""
    result: dict[str, Any] = {"KMSCipherTextKey": ciphertext_key, "KMSCipherTextHash": None}
    if challenge_acknowledgement:
        result["ChallengeAcknowledgement"] = True
    return result


def build_handshake_request(request: HandshakeRequest) -> bytes:
    """Serialize a HandshakeRequest."""
    return _dumps(
        {
            "AgentVersion": request.agent_version,
            "RequestedClientActions": [
                {"ActionType": str(a.action_type), "ActionParameters": a.parameters}
                for a in request.actions
            ],
        }
    )


def parse_handshake_request(payload: bytes | str) -> HandshakeRequest:
    """Parse a HandshakeRequest (actions without ActionType are skipped)."""
    what = "handshake request"
    obj = _object(payload, what)
    actions = tuple(
        RequestedAction(item["ActionType"], item.get("ActionParameters"))
        for item in _list(obj, "RequestedClientActions", what)
        if isinstance(item, dict) and isinstance(item.get("ActionType"), str)
    )
    return HandshakeRequest(_str(obj, "AgentVersion", what, default=""), actions)


def build_handshake_response(response: HandshakeResponse) -> bytes:
    """Serialize a HandshakeResponse (``Errors`` is ``null`` when there are none)."""
    return _dumps(
        {
            "ClientVersion": response.client_version,
            "ProcessedClientActions": [
                {
                    "ActionType": str(a.action_type),
                    "ActionStatus": int(a.status),
                    "ActionResult": a.result,
                    "Error": a.error,
                }
                for a in response.actions
            ],
            "Errors": list(response.errors) if response.errors else None,
        }
    )


def parse_handshake_response(payload: bytes | str) -> HandshakeResponse:
    """Parse a HandshakeResponse; a missing ActionStatus counts as Failed."""
    what = "handshake response"
    obj = _object(payload, what)
    actions: list[ProcessedAction] = []
    for item in _list(obj, "ProcessedClientActions", what):
        if not isinstance(item, dict) or not isinstance(item.get("ActionType"), str):
            raise PayloadError(f"{what}: malformed ProcessedClientActions entry")
        status = item.get("ActionStatus")
        error = item.get("Error")
        actions.append(
            ProcessedAction(
                action_type=item["ActionType"],
                status=status if isinstance(status, int) else ActionStatus.FAILED,
                result=item.get("ActionResult"),
                error=error if isinstance(error, str) else "",
            )
        )
    errors = obj.get("Errors")
    return HandshakeResponse(
        client_version=_str(obj, "ClientVersion", what, default=""),
        actions=tuple(actions),
        errors=tuple(str(e) for e in errors) if isinstance(errors, list) and errors else None,
    )


def build_handshake_complete(time_to_complete_ns: int, customer_message: str = "") -> bytes:
    """Serialize a HandshakeComplete."""
    return _dumps(
        {"HandshakeTimeToComplete": time_to_complete_ns, "CustomerMessage": customer_message}
    )


def parse_handshake_complete(payload: bytes | str) -> HandshakeComplete:
    """Parse a HandshakeComplete."""
    what = "handshake complete"
    obj = _object(payload, what)
    message = obj.get("CustomerMessage")
    return HandshakeComplete(
        time_to_complete_ns=_int(obj, "HandshakeTimeToComplete", what, default=0),
        customer_message=message if isinstance(message, str) else "",
    )


# --- agent_session_state -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentSessionState:
    """An ``agent_session_state`` payload (agent → service only; never forward to clients)."""

    session_state: str
    session_id: str
    schema_version: int = 1
    reason: str | None = None
    """Hatchway's agent adds ``Reason`` to a ``Failed`` state (why the session could not run)."""
    exit_code: int | None = None
    """Hatchway's agent adds ``ExitCode`` to ``Terminating`` when the session's process
    exited (the broker passes it on in ``channel_closed``)."""


def build_agent_session_state(
    session_state: str,
    session_id: str,
    reason: str | None = None,
    exit_code: int | None = None,
) -> bytes:
    """``{"SchemaVersion":1,"SessionState":"Connected"|"Terminating","SessionId":...}``."""
    obj: dict[str, Any] = {
        "SchemaVersion": 1,
        "SessionState": session_state,
        "SessionId": session_id,
    }
    if reason is not None:
        obj["Reason"] = reason
    if exit_code is not None:
        obj["ExitCode"] = exit_code
    return _dumps(obj)


def parse_agent_session_state(payload: bytes | str) -> AgentSessionState:
    """Parse an ``agent_session_state`` payload."""
    what = "agent_session_state"
    obj = _object(payload, what)
    return AgentSessionState(
        session_state=_str(obj, "SessionState", what),
        session_id=_str(obj, "SessionId", what, default=""),
        schema_version=_int(obj, "SchemaVersion", what, default=1),
        reason=_opt_str(obj, "Reason", what),
        exit_code=_exit_code_field(obj.get("ExitCode")),
    )


def _exit_code_field(value: Any) -> int | None:
    """An optional ``ExitCode`` member: an int in a process's range, else ignored."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -(2**31) <= value < 2**31 else None


# --- OpenDataChannelInput (first WebSocket text frame) -------------------------------------


@dataclass(frozen=True, slots=True)
class OpenDataChannel:
    """The ``OpenDataChannelInput`` text frame that opens a data channel.

    ``schema_version`` is normalized to a string (``1`` → ``"1.0"``); ``client_instance_id``
    is set only by agents (see :attr:`is_agent`).
    """

    token: str
    request_id: str = ""
    schema_version: str = "1.0"
    client_id: str | None = None
    client_version: str | None = None
    client_instance_id: str | None = None

    @property
    def is_agent(self) -> bool:
        """True when the sender is a node agent (it carries ``ClientInstanceId``)."""
        return bool(self.client_instance_id)


def build_open_data_channel(
    token: str,
    *,
    request_id: uuid.UUID | str,
    client_id: str | None = None,
    client_version: str | None = None,
    client_instance_id: str | None = None,
) -> str:
    """The first (text) frame of a data channel, as the official plugin or agent sends it."""
    body: dict[str, Any] = {
        "MessageSchemaVersion": "1.0",
        "RequestId": str(request_id),
        "TokenValue": token,
    }
    for key, value in (
        ("ClientId", client_id),
        ("ClientVersion", client_version),
        ("ClientInstanceId", client_instance_id),
    ):
        if value is not None:
            body[key] = value
    return json.dumps(body, separators=(",", ":"))


def _schema_version(value: Any) -> str:
    if value is None:
        return "1.0"
    if isinstance(value, bool):
        raise PayloadError("open data channel: MessageSchemaVersion must be a string or number")
    if isinstance(value, int):
        return f"{value}.0"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value
    raise PayloadError("open data channel: MessageSchemaVersion must be a string or number")


def parse_open_data_channel(text: bytes | str) -> OpenDataChannel:
    """Parse the first text frame tolerantly (server side).

    ``TokenValue`` is required; ``MessageSchemaVersion`` may be a string or a number;
    ``RequestId``, ``ClientId``, ``ClientVersion`` and ``ClientInstanceId`` are optional.
    """
    what = "open data channel"
    obj = _object(text, what)
    token = obj.get("TokenValue")
    if not isinstance(token, str) or not token:
        raise PayloadError(f"{what}: TokenValue missing")
    return OpenDataChannel(
        token=token,
        request_id=_opt_str(obj, "RequestId", what) or "",
        schema_version=_schema_version(obj.get("MessageSchemaVersion")),
        client_id=_opt_str(obj, "ClientId", what),
        client_version=_opt_str(obj, "ClientVersion", what),
        client_instance_id=_opt_str(obj, "ClientInstanceId", what),
    )
