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
  session's recording, :mod:`hatchway.server.recordings.keeper`) is kept; neither is forwarded.

When the client or the node goes away the session is ``Disconnected`` and resumable: the client
comes back with a ResumeSession token, the node with a fresh single-use token from
``POST /v1/data-channel/<SessionId>`` (CreateDataChannel, as AWS's agent asks on every
reconnection), and both ends re-send what was not acknowledged. A session nobody comes back to
within ``--resume-window`` ends ``Failed`` with the reason. After a restart the broker waits the
same way for the sessions its previous run had open, and ends those their node no longer runs
(the node's hello lists what it runs). See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from aiohttp import WSCloseCode, WSMsgType, web
from sqlalchemy import and_

from hatchway.protocol import frames, payloads
from hatchway.protocol.sessionlog import AGENT_SESSION_LOG
from hatchway.server.base import crypto, logs, metrics
from hatchway.server.base.errors import ServiceError
from hatchway.server.control.nodes import (
    audit_refusal,
    authenticate_client,
    authenticate_node,
    json_error,
    upgrade_error,
    verify_signed,
)
from hatchway.server.front import limits
from hatchway.server.ops.sessions import close_data_channel, end_session, session_document
from hatchway.server.runtime.state import STATE_KEY, ServerState, stream_url
from hatchway.server.store import SessionRow
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
    clock: Callable[[], float] = time.monotonic
    """The session timers' time source (``ServerState.clock``): ``last_input``, ``started`` and
    ``away_since`` are its readings."""
    last_input: float = 0.0  # the clock's reading when created, then at each input or resume
    started: float = 0.0  # the clock's reading when created
    idle_timeout: float = 20 * 60.0  # seconds (document inputs.idleSessionTimeout, minutes)
    max_duration: float | None = None  # seconds (inputs.maxSessionDuration, minutes)
    away_since: float | None = None
    """When the client or the node went away (monotonic); None while both are here or before
    the node first connected. The session ends once this is older than ``--resume-window``."""
    had_agent: bool = False
    """The node's side was attached once: the node was asked to run the session."""
    restored: bool = False
    """Recreated when the broker started, for a session a previous run had open."""
    agent_tokens: dict[str, float] = field(default_factory=dict)
    """Digests of the node's single-use reconnection tokens (CreateDataChannel) → expiry."""

    def __post_init__(self) -> None:
        self.last_input = self.started = self.clock()

    def take_agent_token(self, token: str) -> bool:
        """Spend one of the node's tokens: the first one (start_session) or a reconnection's."""
        if self.agent_token and hmac.compare_digest(token, self.agent_token):
            self.agent_token = ""  # single use
            return True
        expires = self.agent_tokens.pop(crypto.digest(token), None)
        return expires is not None and expires > time.monotonic()

    def mint_agent_token(self, ttl: float) -> str:
        now = time.monotonic()
        for digest, expires in list(self.agent_tokens.items()):
            if expires <= now:
                del self.agent_tokens[digest]
        value = crypto.token(32)
        self.agent_tokens[crypto.digest(value)] = now + ttl
        return value

    def presence_changed(self) -> None:
        """Start or stop the resume window's clock as the two sides come and go."""
        here = self.client is not None and self.agent is not None
        if here:
            self.away_since = None
        elif self.away_since is None and (self.had_agent or self.restored):
            self.away_since = self.clock()

    async def send_closed(
        self, ws: web.WebSocketResponse | None, output: str = "", exit_code: int | None = None
    ) -> None:
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
                exit_code=exit_code,
            ),
            message_id=uuid.uuid4(),
            created_date=int(time.time() * 1000),
            flags=3,
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(frames.encode(frame))

    async def close(
        self,
        output: str = "",
        *,
        to_agent: bool = True,
        code: int = WSCloseCode.OK,
        exit_code: int | None = None,
    ) -> None:
        """End the channel: channel_closed to the client (and the agent), then close both
        (with ``code``: 1001 Going Away when the broker stops). ``exit_code`` (the node's, at a
        normal end) goes to the client only."""
        self.ended = True
        await self.send_closed(self.client, output, exit_code)
        if to_agent:
            await self.send_closed(self.agent, output)
        for ws in (self.client, self.agent):
            if ws is not None and not ws.closed:
                await ws.close(code=code)


def _publication(message_type: str) -> bytes:
    return frames.encode(
        frames.Frame(message_type, 0, 0, b"", uuid.uuid4(), int(time.time() * 1000), flags=3)
    )


def relays(state: ServerState) -> dict[str, Relay]:
    """``state.relays`` as this module, which alone adds to it, knows it: :class:`Relay`s."""
    return cast("dict[str, Relay]", state.relays)


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
    row = state.store.session(session_id)
    if row is not None and row["status"] not in ("Terminated", "Failed", status):
        state.store.update(t.sessions, {"session_id": session_id}, {"status": status})


async def handle_data_channel(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    session_id = request.match_info["session_id"]
    logs.SESSION_ID.set(session_id)  # reset by the access middleware when the channel ends
    row = state.store.session(session_id)
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
        err = upgrade_error(exc)
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
    row: SessionRow,
    ws: web.WebSocketResponse,
    opened: payloads.OpenDataChannel,
    remote: str = "",
) -> bool:
    """The client's side of the relay; True if its token was refused."""
    token = opened.token
    started = session_id not in relays(state) and _was_started(state, row)  # before spending
    if not token or not _spend_token(state, session_id, token):
        log.warning("data channel %s: refused a wrong, reused or expired token", session_id)
        await ws.close(code=4403, message=b"invalid token")
        return True
    table = relays(state)
    relay = table.get(session_id)
    if relay is None and started:
        # Its node was asked to run it before (by a broker that has since restarted): never
        # start a second process under this id; wait for the node's side to come back.
        relay = restore_relay(state, row)
    if relay is None:
        relay = Relay(session_id, row["target"], crypto.token(32), clock=state.clock)
        relay.idle_timeout, relay.max_duration = _timeouts(state, row)
        table[session_id] = relay
        if not state.channels.node_reachable(row["target"]):
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
        log.info("data channel %s: the node is asked to start the session", session_id)
        if not await state.channels.send_to_node(row["target"], start_message(state, row, relay)):
            relay.client = ws
            await relay.close(f"{row['target']} is not connected.")
            table.pop(session_id, None)
            await end_session(state, session_id, "Failed", "The node was not connected.")
            return False
    elif relay.client is not None and not relay.client.closed:
        await relay.client.close(code=4000, message=b"replaced by a resumed connection")
    relay.client = ws
    relay.presence_changed()
    state.recordings.client_seen(session_id, remote)
    relay.last_input = relay.clock()  # a resume counts as activity
    if relay.agent is not None and not relay.agent.closed:
        # A resumed client: tell the agent to re-send what it sent into the gap at once,
        # rather than one frame per retransmission tick.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await relay.agent.send_bytes(_publication(frames.MessageType.START_PUBLICATION))
    _set_status(state, session_id, _status(relay))
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
                relay.last_input = relay.clock()  # acks alone are not activity
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
            relay.presence_changed()
            if not relay.ended:
                _set_status(state, session_id, "Disconnected")
    return False


async def _agent_side(
    state: ServerState, session_id: str, ws: web.WebSocketResponse, opened: payloads.OpenDataChannel
) -> bool:
    """The node's side of the relay; True if its token was refused."""
    relay = relays(state).get(session_id)
    token = opened.token
    if relay is None or relay.ended or not token or not relay.take_agent_token(token):
        await ws.close(code=4403, message=b"invalid token")
        return True
    if relay.agent is not None and not relay.agent.closed:
        previous = relay.agent  # the node reconnected before its old socket timed out
        relay.agent = None
        await previous.close(code=4000, message=b"replaced by a resumed connection")
    resumed = relay.had_agent or relay.restored
    relay.agent = ws
    relay.had_agent = True
    relay.presence_changed()
    relay.agent_ready.set()
    _set_status(state, session_id, _status(relay))
    if resumed and relay.client is not None and not relay.client.closed:
        # The node resumed: it re-sends its unacknowledged output at once; the client's
        # input is re-sent as the client's retransmission timer fires.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(_publication(frames.MessageType.START_PUBLICATION))
    clean = False
    failed: str | None = None
    exit_code: int | None = None
    from hatchway.server.control.awsagent_channel import broker_log

    aws_log = broker_log(state, session_id, relay.target)  # AWS's agent streams no log
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
                    exit_code = st.exit_code
                    if aws_log is not None:
                        aws_log.end(exit_code)
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
                if aws_log is not None:
                    aws_log.output(data, payload_type)
            client = relay.client
            if client is not None and not client.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await client.send_bytes(data)
                    metrics.relayed("to_client", len(data))
    finally:
        if relay.agent is ws:
            relay.agent = None
            relay.agent_ready.clear()
            if not relay.ended and not clean and failed is None:
                # The node's link dropped: it reconnects (CreateDataChannel) and re-sends what
                # was not acknowledged; the session waits, Disconnected, for --resume-window.
                relay.presence_changed()
                _set_status(state, session_id, "Disconnected")
                log.info("data channel %s: the node's side dropped; waiting", session_id)
            elif not relay.ended:
                if relays(state).get(session_id) is relay:
                    relays(state).pop(session_id, None)
                await end_session(
                    state, session_id, "Terminated" if failed is None else "Failed", failed
                )
                await relay.close(
                    failed or "", to_agent=False, exit_code=exit_code if failed is None else None
                )
                await state.recordings.finish(session_id)
            else:
                await state.recordings.finish(session_id)
    return False


SHUTDOWN_MESSAGE = "The broker is shutting down."


async def close_all(state: ServerState, output: str = SHUTDOWN_MESSAGE) -> int:
    """The broker stops: every live session ends (Terminated, with ``output`` as its reason),
    its client gets ``channel_closed`` saying why, and both websockets close with 1001 (Going
    Away). Returns how many sessions ended."""
    table = relays(state)
    ending = list(table.values())
    table.clear()
    for relay in ending:
        relay.ended = True  # the sides' handlers leave the session's row alone
        try:
            await end_session(state, relay.session_id, "Terminated", output)
        except Exception:  # the store may be what fails: the channels still close
            log.exception("session %s: could not record its end", relay.session_id)
    await asyncio.gather(
        *(relay.close(output, code=WSCloseCode.GOING_AWAY) for relay in ending),
        return_exceptions=True,
    )
    return len(ending)


def _status(relay: Relay) -> str:
    if relay.agent is not None and relay.client is not None:
        return "Connected"
    return "Disconnected" if relay.had_agent or relay.restored else "Connecting"


STARTED = ("Connected", "Disconnected", "Terminating")
OPEN = (*STARTED, "Connecting")


def _was_started(state: ServerState, row: SessionRow) -> bool:
    """Whether the session's node was asked to run it: past Connecting, or one of its tokens
    spent (a client connected, and the broker then sends ``start_session``)."""
    if row["status"] in STARTED:
        return True
    if row["status"] != "Connecting":
        return False
    tokens = state.store.select(t.session_tokens, session_id=row["session_id"])
    return any(tok["used"] for tok in tokens)


def restore_relay(state: ServerState, row: SessionRow) -> Relay:
    """A relay for a session a previous run of the broker had open: no socket on either side
    yet; the node re-attaches with a CreateDataChannel token, the client with ResumeSession.
    It ends with a reason if neither comes back within ``--resume-window``."""
    relay = Relay(row["session_id"], row["target"], "", restored=True, clock=state.clock)
    relay.idle_timeout, relay.max_duration = _timeouts(state, row)
    relay.away_since = relay.clock()
    # The max duration counts from the session's start, not from this restore (a broker's
    # restart or a move to another broker of the cluster must not lengthen a session).
    relay.started -= session_age(row)
    relays(state)[row["session_id"]] = relay
    return relay


def session_age(row: SessionRow, now: datetime | None = None) -> float:
    """Seconds since the session started (its row's ``start_date``), never negative."""
    start = row["start_date"]
    if start.tzinfo is None:  # SQLite gives naive datetimes back: they are UTC
        start = start.replace(tzinfo=UTC)
    return max(0.0, ((now or datetime.now(UTC)) - start).total_seconds())


def restore_relays(state: ServerState) -> int:
    """At start: every session a previous run had open gets a relay to resume into (or to end
    with a reason), so that none stays Connected for ever. Returns how many."""
    count = 0
    for row in state.store.sessions(t.sessions.c.status.in_(OPEN)):
        sid = row["session_id"]
        if sid in relays(state) or not _was_started(state, row):
            continue
        if not state.channels.orphaned(sid):  # another broker of the cluster relays it
            continue
        restore_relay(state, row)
        _set_status(state, sid, "Disconnected")
        count += 1
    if count:
        log.info("%d session(s) of a previous run wait for their node and client", count)
    return count


GONE_MESSAGE = (
    "The session ended because its node no longer runs it (the node or the broker restarted)."
)
AWAY_MESSAGE = "The session ended because its {side} did not reconnect within {window:g} seconds."


async def _end_relay(state: ServerState, relay: Relay, status: str, reason: str) -> None:
    log.info("session %s: %s", relay.session_id, reason)
    await end_session(state, relay.session_id, status, reason)
    await close_data_channel(state, relay.session_id, relay.target, reason)


async def reconcile_node(state: ServerState, instance_id: str, running: set[str]) -> int:
    """The node's control channel (re)connected and says which sessions it still runs: each
    session it was asked to run whose node side is not attached here and that the node no
    longer runs ends, Failed, with the reason. Returns how many ended."""
    ended = 0
    for relay in list(relays(state).values()):
        if relay.target != instance_id or relay.ended or relay.agent is not None:
            continue
        if not (relay.had_agent or relay.restored) or relay.session_id in running:
            continue
        await _end_relay(state, relay, "Failed", GONE_MESSAGE)
        ended += 1
    return ended


IDLE_MESSAGE = "Your session timed out due to inactivity and has been terminated."
MAX_MESSAGE = "Your session has reached its maximum duration and has been terminated."


def _minutes(value: object, unit: float) -> float | None:
    try:
        return float(str(value)) * unit if value not in (None, "") else None
    except ValueError:
        return None


def _timeouts(state: ServerState, row: SessionRow) -> tuple[float, float | None]:
    """(idle, max) in seconds; the documents give minutes (``--timeout-unit`` scales them)."""
    data = row["data"]
    unit = state.config.timeout_unit
    idle = _minutes(data.get("idle_session_timeout"), unit) or 20 * unit
    return idle, _minutes(data.get("max_session_duration"), unit)


async def enforce_timeouts(state: ServerState, interval: float = 1.0) -> None:
    """End sessions idle longer than their idleSessionTimeout (no client input, resize or
    resume) or older than their maxSessionDuration: the agent does not enforce either."""
    ticker = metrics.Ticker("session_timeouts", interval)
    while True:
        await ticker.sleep()
        await sweep_timeouts(state)


async def sweep_timeouts(state: ServerState) -> None:
    """One pass of :func:`enforce_timeouts`, at ``state.clock``'s time: end every session
    past its max duration, its idle timeout or (a side away) the resume window."""
    from hatchway.server.ops.sessions import close_data_channel

    now = state.clock()
    for relay in list(relays(state).values()):
        if relay.ended:
            continue
        reason = None
        status = "Terminated"
        window = state.config.resume_window
        if relay.max_duration is not None and now - relay.started >= relay.max_duration:
            reason = MAX_MESSAGE
        elif now - relay.last_input >= relay.idle_timeout:
            reason = IDLE_MESSAGE
        elif relay.away_since is not None and now - relay.away_since >= window:
            side = "node" if relay.agent is None else "client"
            reason, status = AWAY_MESSAGE.format(side=side, window=window), "Failed"
        if reason is None:
            continue
        log.info("session %s: %s", relay.session_id, reason)
        await end_session(state, relay.session_id, status, reason)
        await close_data_channel(state, relay.session_id, relay.target, reason)


def start_message(state: ServerState, row: SessionRow, relay: Relay) -> dict[str, Any]:
    """What the node needs to run the session (the role of AWS's ``interactive_shell``)."""
    data = row["data"]
    stored = data.get("document")
    if isinstance(stored, dict):
        content = dict(stored)  # the version StartSession authorized and validated
    else:
        doc = session_document(state, row["document_name"])  # sessions started before it was kept
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
        "resumeWindow": state.config.resume_window,
    }


def _session_type(state: ServerState, row: SessionRow) -> str:
    doc = session_document(state, row["document_name"])
    return str((doc.document if doc else {}).get("sessionType", "Standard_Stream"))


_MAX_CREATE_BODY = 64 * 1024
_XML_TOKEN = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<CreateDataChannelResponse>'
    "<MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>{}</TokenValue>"
    "</CreateDataChannelResponse>"
)


async def handle_create_data_channel(request: web.Request) -> web.StreamResponse:
    """``POST /v1/data-channel/<SessionId>`` (ssmmessages CreateDataChannel), SigV4-signed by
    the session's node: a fresh single-use token for the node's side of the data channel,
    201 with AWS's XML body. The node asks again on every reconnection (as AWS's agent does),
    and after a broker restart, for a session the broker had open (reconciled)."""
    state = request.app[STATE_KEY]
    session_id = request.match_info["session_id"][:256]
    where = {"sessionId": session_id}
    try:
        body = await request.content.read(_MAX_CREATE_BODY + 1)
        if len(body) > _MAX_CREATE_BODY:
            raise ServiceError(
                "RequestEntityTooLargeException", "The request body is too large.", 413
            )
        row = state.store.session(session_id)
        caller = _verify_node_post(state, request, body)
        if row is None or row["target"] != caller.name:
            raise ServiceError("DoesNotExistException", f"Session {session_id} does not exist.")
        authenticate_node(
            state, request, caller.name, (("ssmmessages:CreateDataChannel", "*"),), body=body
        )
        if row["status"] not in OPEN:
            raise ServiceError("DoesNotExistException", f"Session {session_id} has ended.")
        relay = relays(state).get(session_id)
        if relay is None and _was_started(state, row):
            relay = restore_relay(state, row)
            _set_status(state, session_id, "Disconnected")
        if relay is None or relay.ended:
            raise ServiceError("DoesNotExistException", f"Session {session_id} is not open here.")
        token = relay.mint_agent_token(max(state.config.token_ttl, 10.0))
    except Exception as exc:
        err = upgrade_error(exc)
        audit_refusal(state, request, "CreateDataChannel", err, where)
        return json_error(err)
    return web.Response(status=201, text=_XML_TOKEN.format(token), content_type="application/xml")


def _verify_node_post(state: ServerState, request: web.Request, body: bytes) -> Any:
    caller = verify_signed(state, request, body)
    if caller is None or caller.kind != "node":
        raise ServiceError(
            "AccessDeniedException", "Only a node's own credentials may create its data channel."
        )
    return caller


def add_routes(app: web.Application) -> None:
    app.router.add_get(
        "/v1/data-channel/{session_id}", handle_data_channel, name="ssmmessages:OpenDataChannel"
    )
    app.router.add_post(
        "/v1/data-channel/{session_id}",
        handle_create_data_channel,
        name="ssmmessages:CreateDataChannel",
    )
