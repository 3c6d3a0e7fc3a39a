"""The data channel: ``/v1/data-channel/<SessionId>``, relayed between client and node.

Both peers open the same websocket path and identify themselves with their first text frame
(``OpenDataChannelInput``): the client with the single-use token StartSession/ResumeSession
returned, the agent (``ClientInstanceId`` set, SigV4-signed upgrade with its node credentials)
with the token the broker handed it over the control channel. From then on binary frames pass
through unchanged, so sequence numbers, digests and ciphertext stay end to end:

* client → agent: forwarded if the header decodes (digests are not checked: some third-party
  clients write garbage there); undecodable frames are dropped and logged;
* agent → client: only frames that decode, carry a correct digest and a message type a client
  knows; ``agent_session_state`` updates the session's state and ``agent_session_log`` (the
  session's recording, :mod:`hatchway.server.recordings`) is kept; neither is forwarded.

When the client goes away the session is ``Disconnected`` and resumable (both ends retransmit
what was not acknowledged); when the agent goes away unexpectedly the session ``Failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web
from sqlalchemy import and_

from hatchway.protocol import frames, payloads
from hatchway.protocol.sessionlog import AGENT_SESSION_LOG
from hatchway.server import crypto, limits, logs, metrics
from hatchway.server.errors import ServiceError
from hatchway.server.nodes import (
    _state,
    _upgrade_error,
    audit_refusal,
    authenticate_client,
    authenticate_node,
    json_error,
)
from hatchway.server.ops.sessions import end_session
from hatchway.server.state import ServerState, stream_url
from hatchway.server.store import schema as t

log = logging.getLogger("hatchway.server.datachannel")

OPEN_TIMEOUT = 10.0
# Message types a client may receive (anything else from the agent stays in the broker).
TO_CLIENT = frozenset(
    {
        frames.MessageType.OUTPUT_STREAM_DATA,
        frames.MessageType.ACKNOWLEDGE,
        frames.MessageType.CHANNEL_CLOSED,
        frames.MessageType.START_PUBLICATION,
        frames.MessageType.PAUSE_PUBLICATION,
    }
)

FROM_CLIENT = frozenset({frames.MessageType.INPUT_STREAM_DATA, frames.MessageType.ACKNOWLEDGE})
"""What a client may send toward the node: stream data and acks. Flow-control messages
(start/pause_publication) and channel_closed come from the broker itself, never a client."""


@dataclass
class Relay:
    """The two halves of one session's data channel."""

    session_id: str
    target: str
    agent_token: str
    client: web.WebSocketResponse | None = None
    agent: web.WebSocketResponse | None = None
    agent_ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    last_input: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    idle_timeout: float = 20 * 60.0  # seconds (document inputs.idleSessionTimeout, minutes)
    max_duration: float | None = None  # seconds (inputs.maxSessionDuration, minutes)

    async def send_closed(self, ws: web.WebSocketResponse | None, output: str = "") -> None:
        if ws is None or ws.closed:
            return
        frame = frames.Frame(
            message_type=frames.MessageType.CHANNEL_CLOSED,
            sequence_number=0,
            payload_type=0,
            payload=payloads.build_channel_closed(
                self.session_id,
                output,
                message_id=str(uuid.uuid4()),
                created_date=datetime.now(UTC).isoformat(),
                destination_id=self.target,
            ),
            message_id=uuid.uuid4(),
            created_date=int(time.time() * 1000),
            flags=3,
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(frames.encode(frame))

    async def close(self, output: str = "", *, to_agent: bool = True) -> None:
        """End the channel: channel_closed to the client (and the agent), then close both."""
        self.ended = True
        await self.send_closed(self.client, output)
        if to_agent:
            await self.send_closed(self.agent, output)
        for ws in (self.client, self.agent):
            if ws is not None and not ws.closed:
                await ws.close()


def _publication(message_type: str) -> bytes:
    return frames.encode(
        frames.Frame(message_type, 0, 0, b"", uuid.uuid4(), int(time.time() * 1000), flags=3)
    )


def relays(state: ServerState) -> dict[str, Relay]:
    table: dict[str, Relay] = state.relays
    return table


def _spend_token(state: ServerState, session_id: str, token: str) -> bool:
    """Single use: the token must be this session's, unexpired and unused; using it spends it."""
    digest = crypto.digest(token)
    now = datetime.now(UTC)
    row = state.store.get(t.session_tokens, token_hash=digest)
    if row is None or not hmac.compare_digest(row["session_id"], session_id):
        return False
    if row["used"] or row["expires"] <= now:
        return False
    changed = state.store.update(
        t.session_tokens,
        {"token_hash": digest},
        {"used": True},
        None,
        and_(t.session_tokens.c.used.is_(False), t.session_tokens.c.expires > now),
    )
    return changed == 1


async def _first_text(ws: web.WebSocketResponse) -> payloads.OpenDataChannel | None:
    try:
        msg = await asyncio.wait_for(ws.receive(), OPEN_TIMEOUT)
    except TimeoutError:
        return None
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        return payloads.parse_open_data_channel(msg.data)
    except payloads.PayloadError:
        return None


def _set_status(state: ServerState, session_id: str, status: str) -> None:
    row = state.store.get(t.sessions, session_id=session_id)
    if row is not None and row["status"] not in ("Terminated", "Failed", status):
        state.store.update(t.sessions, {"session_id": session_id}, {"status": status})


async def handle_data_channel(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    session_id = request.match_info["session_id"]
    logs.SESSION_ID.set(session_id)  # reset by the access middleware when the channel ends
    row = state.store.get(t.sessions, session_id=session_id)
    where = {"sessionId": session_id}
    if row is None:
        err = ServiceError("DoesNotExistException", f"Session {session_id[:128]} does not exist.")
        audit_refusal(state, request, "OpenDataChannel", err, where)
        return json_error(err)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=8 * 1024 * 1024)
    await ws.prepare(request)
    opened = await _first_text(ws)
    if opened is None:
        err = ServiceError("ValidationException", "expected OpenDataChannelInput")
        audit_refusal(state, request, "OpenDataChannel", err, where)
        await ws.close(code=4401, message=b"expected OpenDataChannelInput")
        return ws
    try:
        if opened.is_agent:  # the node's side: SigV4 with its own credentials
            authenticate_node(
                state, request, row["target"], (("ssmmessages:OpenDataChannel", "*"),)
            )
        elif "Authorization" in request.headers:  # newer plugins sign the upgrade
            authenticate_client(state, request, row)
        elif state.config.require_signed_data_channel:
            # The token alone proves StartSession/ResumeSession was allowed (and that
            # ssmmessages:OpenDataChannel was not explicitly denied then); this broker also
            # wants the upgrade's own signature, so that the allow is checked at open time.
            raise ServiceError(
                "MissingAuthenticationTokenException", "Request is missing Authentication Token"
            )
    except Exception as exc:  # refused: audited, closed with the error's code
        err = _upgrade_error(exc)
        log.warning("data channel %s: %s", session_id, err.message)
        audit_refusal(state, request, "OpenDataChannel", err, where)
        await ws.close(code=4403, message=err.code.encode())
        return ws
    # From here the token is checked at once: the wait for the first message is over, and
    # the channel no longer holds a place of its address (docs/broker.md, "Limits").
    limits.channel_opened(request)
    if opened.is_agent:
        refused = await _agent_side(state, session_id, ws, opened)
    else:
        refused = await _client_side(
            state, session_id, row, ws, opened, limits.client_of(request).address
        )
    if refused:
        err = ServiceError("AccessDeniedException", "invalid token")
        audit_refusal(state, request, "OpenDataChannel", err, where)
    return ws


async def _client_side(
    state: ServerState,
    session_id: str,
    row: dict[str, Any],
    ws: web.WebSocketResponse,
    opened: payloads.OpenDataChannel,
    remote: str = "",
) -> bool:
    """The client's side of the relay; True if its token was refused."""
    token = opened.token
    if not token or not _spend_token(state, session_id, token):
        log.warning("data channel %s: refused a wrong, reused or expired token", session_id)
        await ws.close(code=4403, message=b"invalid token")
        return True
    table = relays(state)
    relay = table.get(session_id)
    if relay is None:
        relay = Relay(session_id, row["target"], crypto.token(32))
        relay.idle_timeout, relay.max_duration = _timeouts(state, row)
        table[session_id] = relay
        node = state.nodes.get(row["target"])
        if node is None:
            await relay.close(f"{row['target']} is not connected.")
            table.pop(session_id, None)
            await end_session(state, session_id, "Failed", "The node was not connected.")
            return False
        failure = await state.recordings.prepare(row, _session_type(state, row))
        if failure is not None:  # AWS's encryption checks of the log destinations
            relay.client = ws
            await relay.close(failure)
            table.pop(session_id, None)
            await end_session(state, session_id, "Failed", failure)
            return False
        await node.send(start_message(state, row, relay))
    elif relay.client is not None and not relay.client.closed:
        await relay.client.close(code=4000, message=b"replaced by a resumed connection")
    relay.client = ws
    state.recordings.client_seen(session_id, remote)
    relay.last_input = time.monotonic()  # a resume counts as activity
    if relay.agent is not None and not relay.agent.closed:
        # A resumed client: tell the agent to re-send what it sent into the gap at once,
        # rather than one frame per retransmission tick.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await relay.agent.send_bytes(_publication(frames.MessageType.START_PUBLICATION))
    _set_status(state, session_id, "Connected" if relay.agent is not None else "Connecting")
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            data = msg.data
            kind = frames.peek_type(data)  # the header must be sound; digests are not checked
            if kind is None:
                log.warning("data channel %s: dropped a malformed client frame", session_id)
                continue
            if kind not in FROM_CLIENT:
                log.warning("data channel %s: dropped a client %s frame", session_id, kind)
                continue
            if kind == frames.MessageType.INPUT_STREAM_DATA:
                relay.last_input = time.monotonic()  # acks alone are not activity
            if not relay.agent_ready.is_set():
                try:
                    await asyncio.wait_for(relay.agent_ready.wait(), OPEN_TIMEOUT)
                except TimeoutError:
                    continue  # the client retransmits what we could not deliver
            agent = relay.agent
            if agent is not None and not agent.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await agent.send_bytes(data)
                    metrics.relayed("to_node", len(data))
    finally:
        if relay.client is ws:
            relay.client = None
            if not relay.ended:
                _set_status(state, session_id, "Disconnected")
    return False


async def _agent_side(
    state: ServerState, session_id: str, ws: web.WebSocketResponse, opened: payloads.OpenDataChannel
) -> bool:
    """The node's side of the relay; True if its token was refused."""
    relay = relays(state).get(session_id)
    token = opened.token
    if relay is None or not hmac.compare_digest(token, relay.agent_token):
        await ws.close(code=4403, message=b"invalid token")
        return True
    relay.agent = ws
    relay.agent_ready.set()
    _set_status(state, session_id, "Connected")
    clean = False
    failed: str | None = None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            data = msg.data
            kind = frames.peek_type(data)
            if kind == frames.MessageType.AGENT_SESSION_STATE:
                try:
                    st = payloads.parse_agent_session_state(frames.decode(data).payload)
                except (frames.FrameError, payloads.PayloadError):
                    continue
                if st.session_state == "Failed":
                    failed = st.reason or "The session could not start on the node."
                elif st.session_state == "Terminating":
                    clean = True
                    break
                continue
            if kind == AGENT_SESSION_LOG:
                state.recordings.ingest(session_id, data)
                continue
            if kind not in TO_CLIENT:
                continue
            payload_type = frames.forwardable(data)
            if payload_type is None or payload_type > 12:
                log.warning("data channel %s: dropped an invalid agent frame", session_id)
                continue
            if kind == frames.MessageType.OUTPUT_STREAM_DATA:
                state.recordings.capture(session_id, data, payload_type)  # the log names it
            client = relay.client
            if client is not None and not client.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await client.send_bytes(data)
                    metrics.relayed("to_client", len(data))
    finally:
        relay.agent = None
        relay.agent_ready.clear()
        if not relay.ended:
            relays(state).pop(session_id, None)
            if not clean:
                failed = "The session ended because the node's data channel closed unexpectedly."
            await end_session(
                state, session_id, "Terminated" if failed is None else "Failed", failed
            )
            await relay.close(failed or "", to_agent=False)
        await state.recordings.finish(session_id)
    return False


IDLE_MESSAGE = "Your session timed out due to inactivity and has been terminated."
MAX_MESSAGE = "Your session has reached its maximum duration and has been terminated."


def _minutes(value: object, unit: float) -> float | None:
    try:
        return float(str(value)) * unit if value not in (None, "") else None
    except ValueError:
        return None


def _timeouts(state: ServerState, row: dict[str, Any]) -> tuple[float, float | None]:
    """(idle, max) in seconds; the documents give minutes (``--timeout-unit`` scales them)."""
    data = row["data"]
    unit = state.config.timeout_unit
    idle = _minutes(data.get("idle_session_timeout"), unit) or 20 * unit
    return idle, _minutes(data.get("max_session_duration"), unit)


async def enforce_timeouts(state: ServerState, interval: float = 1.0) -> None:
    """End sessions idle longer than their idleSessionTimeout (no client input, resize or
    resume) or older than their maxSessionDuration: the agent does not enforce either."""
    from hatchway.server.ops.sessions import close_data_channel

    ticker = metrics.Ticker("session_timeouts", interval)
    while True:
        await ticker.sleep()
        now = time.monotonic()
        for relay in list(relays(state).values()):
            if relay.ended:
                continue
            reason = None
            if relay.max_duration is not None and now - relay.started >= relay.max_duration:
                reason = MAX_MESSAGE
            elif now - relay.last_input >= relay.idle_timeout:
                reason = IDLE_MESSAGE
            if reason is None:
                continue
            log.info("session %s: %s", relay.session_id, reason)
            await end_session(state, relay.session_id, "Terminated", reason)
            await close_data_channel(state, relay.session_id, relay.target, reason)


def start_message(state: ServerState, row: dict[str, Any], relay: Relay) -> dict[str, Any]:
    """What the node needs to run the session (the role of AWS's ``interactive_shell``)."""
    from hatchway.server.ops.sessions import _document

    data = row["data"]
    stored = data.get("document")
    if isinstance(stored, dict):
        content = dict(stored)  # the version StartSession authorized and validated
    else:
        doc = _document(state, row["document_name"])  # sessions started before it was kept
        content = dict(doc.document) if doc else {}
    if "inputs" in data:
        content["inputs"] = data["inputs"]  # the preferences StartSession resolved
    return {
        "type": "start_session",
        "sessionId": row["session_id"],
        "token": relay.agent_token,
        "streamUrl": stream_url(state.config, row["session_id"]),
        "documentName": row["document_name"],
        "documentContent": content,
        "parameters": data.get("parameters") or {},
        "inputsResolved": "inputs" in data,
        "runAsUser": data.get("run_as_user"),
        "sessionOwner": row["owner"],
        "target": row["target"],
        "sessionLog": state.recordings.start_request(),
    }


def _session_type(state: ServerState, row: dict[str, Any]) -> str:
    from hatchway.server.ops.sessions import _document

    doc = _document(state, row["document_name"])
    return str((doc.document if doc else {}).get("sessionType", "Standard_Stream"))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/data-channel/{session_id}", handle_data_channel)
