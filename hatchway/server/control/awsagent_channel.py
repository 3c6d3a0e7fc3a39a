"""The control channel in AWS's dialect (amazon-ssm-agent's MGS protocol).

AWS's agent asks for its control channel with ``POST /v1/control-channel/<instance-id>``
(CreateControlChannel, SigV4 ``ssmmessages``; answered 201 with an XML token) and opens
``GET /v1/control-channel/<instance-id>?role=subscribe&stream=input``, first sending
``OpenControlChannelInput`` (a text frame with the token).
From then on both ways carry binary AgentMessages (the data channel's framing):

* broker → agent: ``interactive_shell`` to start a session (the session document with the
  inputs StartSession resolved, its parameters, Run As user and owner), ``channel_closed`` to
  end one (TerminateSession);
* agent → broker: ``agent_task_complete`` (recorded, answered with ``agent_task_acknowledge``);
  Run Command's ``agent_job_*`` and telemetry are not served and are ignored.

The channel is registered in ``state.nodes`` like Hatchway's (:class:`AwsAgentChannel`
translates the broker's messages), so PingStatus, deregistration and the sessions' relay are
shared; the same IAM applies (``ssmmessages:OpenControlChannel`` and
``ssm:UpdateInstanceInformation`` on the node's ARN). See docs/aws-agent.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import WSMsgType, web

from hatchway.protocol import frames
from hatchway.protocol.sessionlog import AGENT_SESSION_LOG, OutputRef, build_session_log
from hatchway.server.base import crypto
from hatchway.server.base.errors import ServiceError
from hatchway.server.control.nodes import (
    DIALECT_KEY,
    ChannelHandler,
    NodeChannel,
    audit_refusal,
    authenticate_node,
    json_error,
)
from hatchway.server.front import limits
from hatchway.server.recordings.keeper import Recordings
from hatchway.server.runtime.state import STATE_KEY, ServerState
from hatchway.server.store import schema as t

AGENT_KIND = "amazon-ssm-agent"
"""``agent_kind`` of a node that runs AWS's amazon-ssm-agent (registered by
:mod:`hatchway.server.ops.awsagent`)."""

log = logging.getLogger("hatchway.server.ops.awsagent")

CONTROL_TOKEN_TTL = timedelta(minutes=5)
"""How long a CreateControlChannel token may wait for its websocket (single use)."""
OPEN_TIMEOUT = 10.0
_MAX_CREATE_BODY = 64 * 1024
_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<CreateControlChannelResponse>'
    "<MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>{}</TokenValue>"
    "</CreateControlChannelResponse>"
)
START_SESSION_TOPIC = "aws.ssm.startSession"


def _state(request: web.Request) -> ServerState:
    return request.app[STATE_KEY]


def speaks_aws_dialect(state: ServerState, instance_id: str) -> bool:
    """Whether the node registered through RegisterManagedInstance (AWS's agent): its control
    channel speaks AWS's dialect. Both agents ask for ``?role=subscribe&stream=input``."""
    row = state.store.get(t.instances, instance_id=instance_id[:64])
    return row is not None and row["data"].get("agent_kind") == AGENT_KIND


def agent_message(message_type: str, payload: dict[str, Any], sequence: int = 0) -> bytes:
    """One AgentMessage as MGS sends it: JSON payload (PayloadType 1), fresh id and time."""
    return frames.encode(
        frames.Frame(
            message_type=message_type,
            sequence_number=sequence,
            payload_type=1,
            payload=json.dumps(payload).encode(),
            message_id=uuid.uuid4(),
            created_date=int(time.time() * 1000),
            flags=3,
        )
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value) if value is not None else ""


def _agent_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The session preferences in the agent's ``SessionInputs`` types. Session logs are the
    broker's (recordings), so the agent is given no S3 bucket or log group to write to."""
    profile = inputs.get("shellProfile")
    profile = profile if isinstance(profile, dict) else {}
    return {
        "s3BucketName": "",
        "s3KeyPrefix": "",
        "s3EncryptionEnabled": False,
        "cloudWatchLogGroupName": "",
        "cloudWatchStreamingEnabled": False,
        "cloudWatchEncryptionEnabled": False,
        "kmsKeyId": _text(inputs.get("kmsKeyId")),
        "runAsEnabled": str(inputs.get("runAsEnabled", False)).lower() == "true",
        "runAsDefaultUser": _text(inputs.get("runAsDefaultUser")),
        "shellProfile": {
            "linux": _text(profile.get("linux")),
            "windows": _text(profile.get("windows")),
        },
    }


def _agent_parameters(document: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """StartSession's parameters (lists of strings) as the agent's parameter check wants
    them: a String parameter's single value as a string, a StringList as a list."""
    declared = document.get("parameters")
    declared = declared if isinstance(declared, dict) else {}
    out: dict[str, Any] = {}
    for name, value in given.items():
        kind = (declared.get(name) or {}).get("type", "String")
        if isinstance(value, list) and kind != "StringList":
            out[name] = value[0] if len(value) == 1 else " ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def interactive_shell(start: dict[str, Any]) -> bytes:
    """The broker's ``start_session`` as AWS's ``interactive_shell``: an MGSPayload whose
    Content is the AgentTaskPayload (JSON in a string, as MGS sends it)."""
    content = dict(start.get("documentContent") or {})
    content["inputs"] = _agent_inputs(content.get("inputs") or {})
    content.setdefault("schemaVersion", "1.0")
    content.setdefault("description", "")
    content.setdefault("parameters", {})
    task = {
        "DocumentName": start.get("documentName", ""),
        "DocumentContent": content,
        "SessionId": start["sessionId"],
        "Parameters": _agent_parameters(content, start.get("parameters") or {}),
        "RunAsUser": start.get("runAsUser") or "",
        "SessionOwner": start.get("sessionOwner") or "",
    }
    return agent_message(
        frames.MessageType.INTERACTIVE_SHELL,
        {
            "Content": json.dumps(task),
            "TaskId": start["sessionId"],
            "Topic": START_SESSION_TOPIC,
            "SchemaVersion": 1,
        },
    )


def channel_closed(instance_id: str, session_id: str) -> bytes:
    """TerminateSession for the agent: ``channel_closed`` naming the session."""
    message_id = str(uuid.uuid4())
    return agent_message(
        frames.MessageType.CHANNEL_CLOSED,
        {
            "MessageType": "channel_closed",
            "MessageId": message_id,
            "DestinationId": instance_id,
            "SessionId": session_id,
            "SchemaVersion": 1,
            "CreatedDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        },
    )


class AwsAgentChannel(NodeChannel):
    """A control channel to AWS's agent: the broker's messages in AWS's dialect."""

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "start_session":
            await self.ws.send_bytes(interactive_shell(message))
        elif kind == "terminate_session":
            await self.ws.send_bytes(channel_closed(self.instance_id, str(message["sessionId"])))
        else:  # nothing else has a counterpart in AWS's agent
            log.debug("not sent to AWS's agent on %s: %s", self.instance_id, kind)


async def handle_create_control_channel(request: web.Request) -> web.StreamResponse:
    """``POST /v1/control-channel/<instance-id>`` (CreateControlChannel): the node itself,
    ``ssmmessages:CreateControlChannel``; 201 with a single-use token in AWS's XML."""
    state = _state(request)
    instance_id = request.match_info["instance_id"][:64]
    try:
        body = await request.content.read(_MAX_CREATE_BODY + 1)
        if len(body) > _MAX_CREATE_BODY:
            raise ServiceError(
                "RequestEntityTooLargeException", "The request body is too large.", 413
            )
        authenticate_node(
            state,
            request,
            instance_id,
            (("ssmmessages:CreateControlChannel", "*"),),
            body=body,
        )
        token = crypto.token(32)
        row = state.store.get(t.instances, instance_id=instance_id)
        if row is None:
            raise ServiceError("AccessDeniedException", f"{instance_id} is not registered.")
        expires = datetime.now(UTC) + CONTROL_TOKEN_TTL
        tokens = {
            h: e
            for h, e in (row["data"].get("control_tokens") or {}).items()
            if datetime.fromisoformat(e) > datetime.now(UTC)
        }
        tokens[crypto.digest(token)] = expires.isoformat()
        state.store.update(
            t.instances,
            {"instance_id": instance_id},
            {"data": {**row["data"], "control_tokens": dict(list(tokens.items())[-8:])}},
        )
        await state.store.settled()  # any broker can take the websocket
    except Exception as exc:
        err = exc if isinstance(exc, ServiceError) else _internal(exc)
        audit_refusal(state, request, "CreateControlChannel", err, {"instanceId": instance_id})
        return json_error(err)
    return web.Response(status=201, text=_XML.format(token), content_type="application/xml")


def _internal(exc: BaseException) -> ServiceError:
    log.error("internal error in CreateControlChannel", exc_info=exc)
    return ServiceError("InternalServerError", "An internal error occurred.", 500)


def _spend_control_token(state: ServerState, instance_id: str, token: str) -> bool:
    row = state.store.get(t.instances, instance_id=instance_id)
    if row is None or not token:
        return False
    tokens = dict(row["data"].get("control_tokens") or {})
    digest = crypto.digest(token)
    match = next((h for h in tokens if hmac.compare_digest(h, digest)), None)
    if match is None:
        return False
    expires = tokens.pop(match)
    state.store.update(
        t.instances,
        {"instance_id": instance_id},
        {"data": {**row["data"], "control_tokens": tokens}},
    )
    return datetime.fromisoformat(expires) > datetime.now(UTC)


def _set_connected(state: ServerState, instance_id: str, connected: bool) -> None:
    row = state.store.get(t.instances, instance_id=instance_id)
    if row is None:
        return
    state.store.update(
        t.instances,
        {"instance_id": instance_id},
        {"last_ping": datetime.now(UTC), "data": {**row["data"], "connected": connected}},
    )


async def _first_text(ws: web.WebSocketResponse) -> dict[str, Any] | None:
    try:
        msg = await asyncio.wait_for(ws.receive(), OPEN_TIMEOUT)
    except TimeoutError:
        return None
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        data = json.loads(msg.data)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _keep_fresh(state: ServerState, instance_id: str, channel: NodeChannel) -> None:
    """AWS's agent sends websocket pings only: last_ping is kept fresh here so that other
    brokers on the same database see the node Online (as a Hatchway agent's heartbeats do)."""
    while state.nodes.get(instance_id) is channel:
        await asyncio.sleep(max(1.0, state.config.ping_interval))
        if state.nodes.get(instance_id) is channel:
            _set_connected(state, instance_id, True)


async def handle_aws_control_channel(request: web.Request) -> web.StreamResponse:
    """``GET /v1/control-channel/<id>?…&stream=input``: AWS's agent's control channel."""
    state = _state(request)
    instance_id = request.match_info["instance_id"]
    where = {"instanceId": instance_id}
    try:
        authenticate_node(state, request, instance_id)
    except Exception as exc:  # refused: AWS's JSON error, audited
        err = exc if isinstance(exc, ServiceError) else _internal(exc)
        audit_refusal(state, request, "OpenControlChannel", err, where)
        return json_error(err)
    ws = web.WebSocketResponse(heartbeat=state.config.ping_interval * 2)
    await ws.prepare(request)
    opened = await _first_text(ws)
    token = str((opened or {}).get("TokenValue") or "")
    if not _spend_control_token(state, instance_id, token):
        err = ServiceError("AccessDeniedException", "invalid token")
        audit_refusal(state, request, "OpenControlChannel", err, where)
        await ws.close(code=4403, message=b"invalid token")
        return ws
    limits.channel_opened(request)
    channel = AwsAgentChannel(
        instance_id, ws, datetime.now(UTC), {"AgentVersion": (opened or {}).get("AgentVersion")}
    )
    previous = state.nodes.get(instance_id)
    state.nodes[instance_id] = channel
    if previous is not None:
        await previous.ws.close(code=4000, message=b"replaced by a newer channel")
    _set_connected(state, instance_id, True)
    log.info("control channel open (AWS's agent): %s", instance_id)
    fresh = asyncio.create_task(_keep_fresh(state, instance_id, channel))
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            try:
                frame = frames.decode(msg.data)
            except frames.FrameError:
                log.warning("bad AgentMessage from %s", instance_id)
                continue
            if frame.message_type == frames.MessageType.AGENT_TASK_COMPLETE:
                await _task_complete(state, instance_id, ws, frame)
            else:
                log.debug("ignored %s from %s", frame.message_type, instance_id)
    finally:
        fresh.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fresh
        if state.nodes.get(instance_id) is channel:
            del state.nodes[instance_id]
            _set_connected(state, instance_id, False)
        log.info("control channel closed (AWS's agent): %s", instance_id)
    return ws


async def _task_complete(
    state: ServerState, instance_id: str, ws: web.WebSocketResponse, frame: frames.Frame
) -> None:
    """``agent_task_complete``: the session's final status is kept (only for the node's own
    sessions) and the message acknowledged, else the agent re-sends it for ever."""
    try:
        done = json.loads(frame.payload)
    except ValueError:
        return
    if not isinstance(done, dict):
        return
    sid = str(done.get("TaskId", ""))
    row = state.store.get(t.sessions, session_id=sid) if sid else None
    if row is not None and row["target"] == instance_id:
        status = str(done.get("FinalTaskStatus", ""))[:64]
        state.store.update(
            t.sessions,
            {"session_id": sid},
            {"data": {**row["data"], "agent_final_status": status}},
        )
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_bytes(
            agent_message(
                frames.MessageType.AGENT_TASK_ACKNOWLEDGE,
                {
                    "SchemaVersion": 1,
                    "MessageId": str(frame.message_id),
                    "TaskId": sid,
                    "Topic": str(done.get("Topic", "")),
                },
            )
        )


def dialect(state: ServerState, instance_id: str) -> ChannelHandler | None:
    """The control-channel handler of nodes that run AWS's agent (None for any other)."""
    return handle_aws_control_channel if speaks_aws_dialect(state, instance_id) else None


def add_routes(app: web.Application) -> None:
    app.router.add_post(
        "/v1/control-channel/{instance_id}",
        handle_create_control_channel,
        name="ssmmessages:CreateControlChannel",
    )
    app[DIALECT_KEY] = dialect


class BrokerLog:
    """A recording for a session on AWS's agent, which streams no ``agent_session_log`` (it
    uploads its own logs to S3/CloudWatch, which Hatchway does not give it): the broker writes
    the batches itself from the output it relays, referring to the relayed frames
    (:class:`hatchway.protocol.sessionlog.OutputRef`), so recordings, ``hatchway sessions
    replay`` and S3/CloudWatch delivery work as for Hatchway's agent. Keystrokes are not
    recorded, nor the output of KMS-encrypted sessions (the broker cannot read it)."""

    def __init__(self, state: ServerState, session_id: str) -> None:
        self.state = state
        self.session_id = session_id
        self.start = time.time()
        self.batches = 0
        self.last = 0  # the highest output sequence number recorded (re-sent frames skipped)

    def _ingest(self, events: list[tuple[float, str, Any]]) -> None:
        payload = build_session_log(self.session_id, self.batches, self.start, events)
        frame = frames.Frame(
            AGENT_SESSION_LOG, 0, 0, payload, uuid.uuid4(), int(time.time() * 1000)
        )
        self.state.recordings.ingest(self.session_id, frames.encode(frame))
        self.batches += 1

    def _live(self) -> Any:
        """The session's live recording state, if it is being recorded here."""
        recordings = self.state.recordings
        return recordings.live.get(self.session_id) if isinstance(recordings, Recordings) else None

    def output(self, data: bytes, payload_type: int) -> None:
        live = self._live()
        if live is None or not live.capture or payload_type not in (1, 11):
            return
        seq = frames.decode(data).sequence_number
        if seq <= self.last and self.batches:
            return
        self.last = seq
        self._ingest([(time.time() - self.start, "o", OutputRef(seq, seq))])

    def end(self, exit_code: int | None) -> None:
        if self._live() is not None:
            self._ingest([(time.time() - self.start, "end", exit_code)])


def broker_log(state: ServerState, session_id: str, instance_id: str) -> BrokerLog | None:
    """The broker-made recording of a session whose node runs AWS's agent, else None."""
    return BrokerLog(state, session_id) if speaks_aws_dialect(state, instance_id) else None
