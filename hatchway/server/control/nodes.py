"""Nodes: registration with an activation, and the always-on control channel.

Registration (``POST /hatchway/v1/register``) is authenticated by the activation id and code,
like AWS's anonymous RegisterManagedInstance; it returns the node's own credentials, which the
agent keeps (mode 0600) and uses from then on. The control channel
(``GET /v1/control-channel/<instance-id>``, a websocket) is opened by the agent with a
SigV4-signed upgrade (service ``ssmmessages``) and authorized by IAM as
``ssmmessages:OpenControlChannel`` + ``ssm:UpdateInstanceInformation``; it carries heartbeats now
and session tasks later. PingStatus is Online while a channel is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from hatchway.iam import Request
from hatchway.server.accounts import iamdata
from hatchway.server.accounts.bootstrap import create_access_key
from hatchway.server.awswire.jsonproto import load_document
from hatchway.server.base import crypto, logs
from hatchway.server.base.errors import ServiceError
from hatchway.server.front import limits, pipeline, sigv4
from hatchway.server.front.identity import credential_lookup, lookup_key, resolve_caller
from hatchway.server.runtime.state import STATE_KEY, ServerState
from hatchway.server.store import Conflict, NodeData, NodeRow, SessionRow, Store
from hatchway.server.store import schema as t
from hatchway.ssm import target_arn

log = logging.getLogger("hatchway.server.nodes")

_INSTANCE_ID = re.compile(r"i-(?:[0-9a-zA-Z]{8}|[0-9a-zA-Z]{17})")


Reconcile = Callable[[ServerState, str, set[str]], Awaitable[int]]
RECONCILE_KEY: web.AppKey[Reconcile] = web.AppKey("reconcile_node")
"""What the control channel calls with the sessions a node says it still runs."""

ChannelHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Dialect = Callable[[ServerState, str], ChannelHandler | None]
DIALECT_KEY: web.AppKey[Dialect] = web.AppKey("control_dialect")
"""Which other control-channel dialect a node speaks: that dialect's handler, or None for
Hatchway's own (AWS's agent's: hatchway.server.control.awsagent_channel, which builds on this
module and so is not imported by it)."""

NodeMessage = Callable[[ServerState, str, dict[str, Any], datetime], None]
NODE_MESSAGE_KEY: web.AppKey[NodeMessage] = web.AppKey("node_message")
"""What the control channel hands a node's hello and its Run Command reports to, with the
time the channel opened (the Run Command duty, a layer above this one:
:func:`hatchway.server.ops.commandduty.on_channel_message`)."""


@dataclass
class NodeChannel:
    """A live control channel."""

    instance_id: str
    ws: web.WebSocketResponse
    connected_at: datetime
    info: dict[str, Any] = field(default_factory=dict)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_json(message)


def _state(request: web.Request) -> ServerState:
    return request.app[STATE_KEY]


def json_error(err: ServiceError) -> web.Response:
    return web.json_response({"__type": err.code, "message": err.message}, status=err.status)


def managed_instance_id() -> str:
    """A managed node's id as AWS shapes it: ``mi-`` and 17 hex digits (68 random bits)."""
    return "mi-" + secrets.token_hex(9)[:17]


def is_ec2_style_id(value: str) -> bool:
    """``i-`` and 8 or 17 letters or digits (Hatchway's nodes may use EC2-style ids)."""
    return _INSTANCE_ID.fullmatch(value) is not None


def allow_instance_ids(store: Store, activation_id: str, instance_ids: list[str]) -> list[str]:
    """Let nodes registering with ``activation_id`` take these ``i-`` ids (else the broker
    chooses an ``mi-`` id). For whoever runs the broker: ``hatchway activation
    allow-instance-id`` calls it with the store itself, no API can. Returns the ids allowed."""
    bad = [i for i in instance_ids if not is_ec2_style_id(i)]
    if bad:
        raise ValueError(f"not an EC2-style instance id (i- and 8 or 17 letters/digits): {bad[0]}")
    with store.transaction() as c:
        act = store.get(t.activations, c, activation_id=activation_id)
        if act is None or act["data"].get("deleted"):
            raise LookupError(f"Activation {activation_id} does not exist.")
        if act["expires"] <= datetime.now(UTC):
            raise LookupError(f"Activation {activation_id} has expired.")
        for iid in instance_ids:
            node = store.node(iid, c)
            if node is not None and not node["deregistered"]:
                raise ValueError(f"{iid} is registered already (deregister it first).")
        allowed = list(dict.fromkeys([*act["data"].get("instance_ids", []), *instance_ids]))
        store.update(
            t.activations,
            {"activation_id": activation_id},
            {"data": {**act["data"], "instance_ids": allowed}},
            c,
        )
    return allowed


_MAX_REGISTRATION_BODY = 64 * 1024
"""Registration bodies are a few hundred bytes; anything far larger is refused unread."""

_REGISTRATION_FIELDS: dict[str, int] = {
    "ActivationId": 36,
    "ActivationCode": 250,
    "InstanceId": 19,
    "ComputerName": 255,
    "PlatformName": 255,
    "PlatformVersion": 255,
    "PlatformType": 64,
    "IPAddress": 255,
    "AgentName": 64,
    "AgentVersion": 64,
}
"""The members a registration may carry (all strings), with their longest accepted length."""


def _registration_body(raw: bytes) -> dict[str, str]:
    """The registration request, checked before anything else reads it: a JSON object of the
    known string members (unknown members are ignored, as AWS's JSON protocol does)."""
    try:  # invalid, too deep, lone surrogates
        body = load_document(raw)
    except ServiceError:
        raise ServiceError("SerializationException", "Invalid JSON body.") from None
    if not isinstance(body, dict):
        raise ServiceError("SerializationException", "Invalid JSON body.")
    fields: dict[str, str] = {}
    for name, longest in _REGISTRATION_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ServiceError(
                "SerializationException", f"{name} must be a string, not {_json_type(value)}."
            )
        if len(value) > longest:
            raise ServiceError(
                "ValidationException",
                f"1 validation error detected: Value at '{name[0].lower()}{name[1:]}' failed "
                f"to satisfy constraint: Member must have length less than or equal to {longest}",
            )
        fields[name] = value
    return fields


def _json_type(value: object) -> str:
    kinds = {dict: "an object", list: "an array", bool: "a boolean", int: "a number"}
    return next((k for t_, k in kinds.items() if isinstance(value, t_)), "a number")


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refused (413) beyond ``limit`` bytes whatever Content-Length claims."""
    if request.content_length is not None and request.content_length > limit:
        raise ServiceError("RequestEntityTooLargeException", "The request body is too large.", 413)
    data = await request.content.read(limit + 1)
    if len(data) > limit:
        raise ServiceError("RequestEntityTooLargeException", "The request body is too large.", 413)
    return data


async def handle_register(request: web.Request) -> web.Response:
    """Anonymous (the activation authenticates it): every answer, good or bad, is audited and
    in AWS's JSON shape; bad input is a 4xx, never an exception. The pipeline
    (:mod:`hatchway.server.front.pipeline`) commits the credentials before the node holds
    them, then writes the audit record."""
    state = _state(request)
    outcome = pipeline.outcome_of(request)
    outcome.internal = ServiceError("InternalServerError", "An internal error occurred.", 500)
    entry = pipeline.AuditEntry(
        "ssm",
        "RegisterManagedInstance",
        "anonymous",
        "anonymous",
        limits.client_of(request).address,
        logs.request_id(),
    )
    outcome.audit = entry
    body = _registration_body(await _read_limited(request, _MAX_REGISTRATION_BODY))
    entry.params = {k: v for k, v in body.items() if k != "ActivationCode"}
    return web.json_response(register_node(state, body))


def register_node(
    state: ServerState, body: dict[str, Any], key_auth: NodeData | None = None
) -> dict[str, Any]:
    """Check the activation, create the node and its credentials (all or nothing). With
    ``key_auth`` (AWS's agent: its public key and fingerprint, hatchway.server.ops.awsagent) the
    node gets no access key: it is kept in the node's data, and only the id is returned."""
    activation_id = str(body.get("ActivationId", ""))
    code = str(body.get("ActivationCode", ""))
    invalid = ServiceError(
        "InvalidActivation", "Activation ID or activation code is invalid or expired."
    )
    act = state.store.get(t.activations, activation_id=activation_id)
    if act is None or not hmac.compare_digest(act["code_hash"], crypto.digest(code)):
        raise invalid
    now = datetime.now(UTC)
    if act["expires"] <= now or act["data"].get("deleted"):
        raise invalid
    limit = int(act["data"].get("registration_limit", 1))
    full = ServiceError(
        "InvalidActivation", "The registration limit of this activation has been reached."
    )
    if act["registrations"] >= limit:
        raise full
    requested = body.get("InstanceId")
    if requested and requested not in act["data"].get("instance_ids", []):
        # The broker chooses the id (mi-…): a node holding an activation code must not pick
        # an EC2-style id that policies may already name. An administrator allows one.
        raise ServiceError(
            "InvalidInstanceId",
            f"Activation {activation_id} does not allow registering as {requested}; "
            "the broker chooses the node's mi- id.",
        )
    instance_id = str(requested) if requested else managed_instance_id()
    role_name, role_id = _activation_role(state, act)
    if role_id is None:
        raise invalid  # the activation's role was deleted: it can register no node
    role = act["data"]["iam_role"]
    with state.store.transaction() as c:
        existing = state.store.node(instance_id, c)
        if existing is not None and not existing["deregistered"]:
            raise ServiceError(
                "InvalidInstanceId", f"Instance {instance_id} is already registered."
            )
        if existing is not None:
            state.store.delete(t.instances, c, instance_id=instance_id)
        data: NodeData = {
            "name": act["data"].get("default_instance_name") or body.get("ComputerName") or "",
            "iam_role": role,
            "tags": act["data"].get("tags", []),
            "computer_name": body.get("ComputerName", ""),
            "platform_name": body.get("PlatformName", ""),
            "platform_version": body.get("PlatformVersion", ""),
            "ip_address": body.get("IPAddress", ""),
            "agent_name": body.get("AgentName", ""),
            "agent_version": body.get("AgentVersion", ""),
        }
        if key_auth is not None:
            data.update(key_auth)
            data["role_name"], data["role_id"] = role_name, role_id
        try:
            state.store.insert(
                t.instances,
                {
                    "instance_id": instance_id,
                    "activation_id": activation_id,
                    "registered": now,
                    "last_ping": None,
                    "deregistered": False,
                    "data": data,
                },
                c,
            )
        except Conflict as exc:
            raise ServiceError(
                "InvalidInstanceId", f"Instance {instance_id} is already registered."
            ) from exc
        # Take a slot in the database itself: concurrent registrations (through other
        # brokers on the same database too) each get one until the limit, none fails
        # because another counted first.
        changed = state.store.update(
            t.activations,
            {"activation_id": activation_id},
            {"registrations": t.activations.c.registrations + 1},
            c,
            t.activations.c.registrations < limit,
        )
        if changed != 1:
            raise full  # concurrent registrations took the last slots
    if key_auth is not None:
        return {"InstanceId": instance_id}
    akid, secret = create_access_key(
        state,
        "node",
        instance_id,
        data={
            "role_name": role_name,
            "role_id": role_id,
            "session_name": instance_id,
            "instance_id": instance_id,
        },
    )
    return {
        "InstanceId": instance_id,
        "AccessKeyId": akid,
        "SecretAccessKey": secret,
        "Region": state.config.region,
        "AccountId": state.config.account_id,
    }


def _activation_role(state: ServerState, act: dict[str, Any]) -> tuple[str, str | None]:
    """The role (name, unique id) nodes of an activation act as; id None if it is gone.

    CreateActivation records the role's unique id; an activation without one (written by an
    administrator's tool, or before ids were recorded) binds the role of that name now, if it
    trusts ssm.amazonaws.com.
    """
    data = act["data"]
    name = str(data.get("role_name") or str(data.get("iam_role", "")).rsplit("/", 1)[-1])
    role = iamdata.get_entity(state.store, "role", name)
    if role is None:
        return name, None
    if "role_id" in data:
        return name, role["entity_id"] if role["entity_id"] == data["role_id"] else None
    return name, role["entity_id"] if iamdata.trusts_service(
        role, state.config.account_id
    ) else None


def verify_signed(state: ServerState, request: web.Request, body: bytes = b"") -> Any:
    """SigV4 (service ``ssmmessages``) of a websocket upgrade (GET, empty body) or of a REST
    call with ``body``; the caller behind it (None: an unknown key)."""
    raw_path, _, raw_query = request.raw_path.partition("?")
    incoming = sigv4.IncomingRequest(request.method, raw_path, raw_query, request.headers, body)
    try:
        verified = sigv4.verify(
            incoming,
            credential_lookup(state),
            datetime.now(UTC),
            regions=(state.config.region,),
            service="ssmmessages",
        )
    except sigv4.AuthError as exc:
        code, status = sigv4.error_code(exc.kind, "json")
        raise ServiceError(code, exc.message, status) from exc
    entry = lookup_key(state, verified.access_key_id)
    return resolve_caller(state, entry.row) if entry else None


def authenticate_client(state: ServerState, request: web.Request, session: SessionRow) -> Any:
    """A signed client upgrade: the signer needs ``ssmmessages:OpenDataChannel`` on the
    session's ARN (AWS's 2025 policies grant it on ``session/${aws:userid}-*`` or ``*``)."""
    caller = verify_signed(state, request)
    if caller is None:
        raise ServiceError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    ctx = caller.context()
    client = limits.client_of(request)
    ctx["aws:sourceip"] = client.address
    ctx["aws:securetransport"] = "true" if client.secure else "false"
    for k, v in session["data"].get("tags", {}).items():
        ctx[f"ssm:resourcetag/{k}".lower()] = v
    arn = (
        f"arn:aws:ssm:{state.config.region}:{state.config.account_id}:session/"
        f"{session['session_id']}"
    )
    d = caller.policies.evaluate(
        Request("ssmmessages:OpenDataChannel", arn, caller.principal, ctx, state.config.account_id)
    )
    if not d.allowed:
        raise ServiceError("AccessDeniedException", d.message or "Access denied")
    return caller


def authenticate_node(
    state: ServerState,
    request: web.Request,
    instance_id: str,
    actions: tuple[tuple[str, str], ...] | None = None,
    body: bytes = b"",
) -> Any:
    """A node's signed upgrade (or REST call with ``body``): its own credentials, registered,
    and allowed ``actions``."""
    caller = verify_signed(state, request, body)
    if caller is None or caller.kind != "node" or caller.name != instance_id:
        raise ServiceError(
            "AccessDeniedException", f"These credentials do not belong to {instance_id}."
        )
    row = state.store.node(instance_id)
    if row is None or row["deregistered"]:
        raise ServiceError("AccessDeniedException", f"{instance_id} is not registered.")
    ctx = caller.context()
    client = limits.client_of(request)
    ctx["aws:sourceip"] = client.address
    ctx["aws:securetransport"] = "true" if client.secure else "false"
    arn = target_arn(instance_id, state.config.region, state.config.account_id)
    wanted = actions or (
        ("ssmmessages:OpenControlChannel", "*"),
        ("ssm:UpdateInstanceInformation", arn),
    )
    for action, resource in wanted:
        d = caller.policies.evaluate(
            Request(action, resource, caller.principal, ctx, state.config.account_id)
        )
        if not d.allowed:
            raise ServiceError("AccessDeniedException", d.message or "Access denied")
    return caller


def audit_refusal(
    state: ServerState,
    request: web.Request,
    operation: str,
    error: ServiceError,
    params: dict[str, Any],
    service: str = "ssmmessages",
) -> None:
    """A request refused before anyone was authenticated, audited like any call (by the
    pipeline, once the answer is settled)."""
    pipeline.outcome_of(request).audit = pipeline.AuditEntry(
        service,
        operation,
        "anonymous",
        "anonymous",
        limits.client_of(request).address,
        logs.request_id(),
        params={k: v[:256] for k, v in params.items()},
        error=error,
    )


def upgrade_error(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    log.error("internal error authenticating an upgrade", exc_info=exc)
    return ServiceError("InternalServerError", "An internal error occurred.", 500)


async def handle_control_channel(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    dialect = request.app.get(DIALECT_KEY)
    other = dialect(state, request.match_info["instance_id"]) if dialect is not None else None
    if other is not None:  # a node of AWS's agent (control/awsagent_channel.py)
        return await other(request)
    instance_id = request.match_info["instance_id"]
    try:
        authenticate_node(state, request, instance_id)
    except Exception as exc:  # refused: AWS's JSON error, audited
        err = upgrade_error(exc)
        audit_refusal(state, request, "OpenControlChannel", err, {"instanceId": instance_id})
        return json_error(err)
    ws = web.WebSocketResponse(heartbeat=state.config.ping_interval * 2)
    await ws.prepare(request)
    channel = NodeChannel(instance_id, ws, datetime.now(UTC))
    previous = state.nodes.get(instance_id)
    state.nodes[instance_id] = channel
    if previous is not None:
        await previous.ws.close(code=4000, message=b"replaced by a newer channel")
    _mark(state, instance_id, connected=True)
    log.info("control channel open: %s", instance_id)
    try:
        await ws.send_json(
            {
                "type": "welcome",
                "instanceId": instance_id,
                "pingInterval": state.config.ping_interval,
            }
        )
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                log.warning("bad control message from %s", instance_id)
                continue
            if not isinstance(data, dict):
                continue
            kind = data.get("type")
            if kind == "hello":
                channel.info = {
                    k: data.get(k)
                    for k in (
                        "AgentName",
                        "AgentVersion",
                        "PlatformName",
                        "PlatformVersion",
                        "PlatformType",
                        "ComputerName",
                        "IPAddress",
                    )
                }
                _mark(state, instance_id, connected=True, info=channel.info)
                running = data.get("sessions")
                if isinstance(running, list):  # the sessions the node still runs
                    reconcile = request.app[RECONCILE_KEY]
                    await reconcile(state, instance_id, {str(s) for s in running})
                request.app[NODE_MESSAGE_KEY](state, instance_id, data, channel.connected_at)
            elif kind in ("command_started", "command_result"):  # Run Command reports
                request.app[NODE_MESSAGE_KEY](state, instance_id, data, channel.connected_at)
            elif kind == "session_exit":
                _record_exit(state, instance_id, data)
            elif kind == "heartbeat":
                _mark(state, instance_id, connected=True)
                await ws.send_json({"type": "pong"})
    finally:
        if state.nodes.get(instance_id) is channel:
            del state.nodes[instance_id]
            _mark(state, instance_id, connected=False)
        log.info("control channel closed: %s", instance_id)
    return ws


def _mark(
    state: ServerState, instance_id: str, *, connected: bool, info: dict[str, Any] | None = None
) -> None:
    row = state.store.node(instance_id)
    if row is None:
        return
    data = dict(row["data"])
    data["connected"] = connected
    if info:
        mapping = {
            "AgentName": "agent_name",
            "AgentVersion": "agent_version",
            "PlatformName": "platform_name",
            "PlatformVersion": "platform_version",
            "ComputerName": "computer_name",
            "IPAddress": "ip_address",
        }
        for k, v in info.items():
            if v and k in mapping:
                data[mapping[k]] = v
    state.store.update(
        t.instances, {"instance_id": instance_id}, {"last_ping": datetime.now(UTC), "data": data}
    )


_COMMAND_TYPES = ("InteractiveCommands", "NonInteractiveCommands")


def _record_exit(state: ServerState, instance_id: str, data: dict[str, Any]) -> None:
    """The exit code of a session's shell, as the node reports it (kept in Details)."""
    sid = str(data.get("sessionId", ""))
    row = state.store.session(sid)
    if row is None or row["target"] != instance_id:
        return  # a node can only speak for its own sessions
    details = row["data"].copy()
    details["exit_code"] = data.get("exitCode")
    if not details.get("details"):  # a reason the broker ended it with (idle, max…) stays
        what = "command" if row["data"].get("session_type") in _COMMAND_TYPES else "shell"
        details["details"] = f"The {what} exited with code {data.get('exitCode')}."
    state.store.update(t.sessions, {"session_id": sid}, {"data": details})


def ping_status(state: ServerState, row: NodeRow) -> str:
    """Online while a control channel is open (here, or on another broker that pinged lately)."""
    if row["deregistered"]:
        return "Inactive"
    if row["instance_id"] in state.nodes:
        return "Online"
    last = row["last_ping"]
    fresh = (
        last is not None
        and (datetime.now(UTC) - last).total_seconds() < state.config.ping_interval * 2 + 5
    )
    return "Online" if fresh and row["data"].get("connected") else "ConnectionLost"


async def close_channel(state: ServerState, instance_id: str) -> None:
    """Close the node's control channel wherever it lives (hatchway.server.runtime.channels)."""
    await state.channels.close_channel(instance_id)


async def close_held_channel(state: ServerState, instance_id: str) -> None:
    """Close the node's control channel if this process holds it."""
    channel = state.nodes.pop(instance_id, None)
    if channel is not None:
        _mark(state, instance_id, connected=False)  # the handler no longer owns the entry
        await channel.ws.close(code=4001, message=b"deregistered")


async def close_all(state: ServerState) -> int:
    """The broker stops: close every control channel with 1001 (Going Away), which tells the
    agent to reconnect at once (to another broker, where there is one). Returns how many."""
    channels = list(state.nodes.values())
    await asyncio.gather(
        *(
            channel.ws.close(code=WSCloseCode.GOING_AWAY, message=b"broker shutting down")
            for channel in channels
        ),
        return_exceptions=True,
    )
    return len(channels)


async def close_deregistered(state: ServerState) -> None:
    """Close the control channels held here of nodes deregistered elsewhere (another broker
    on the database: see ``follow_deregistrations``)."""
    for instance_id in list(state.nodes):
        row = state.store.node(instance_id)
        if row is None or row["deregistered"]:
            log.info("%s was deregistered through another broker", instance_id)
            await close_held_channel(state, instance_id)


def follow_deregistrations(state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
    """When another broker deregisters a node (the ``nodes`` cache domain), this process
    closes the node's control channel if it holds it."""
    flags = {"busy": False, "again": False}
    tasks: set[asyncio.Task[None]] = set()

    async def sweep() -> None:
        flags["busy"] = True
        try:
            while True:
                flags["again"] = False
                try:
                    await close_deregistered(state)
                except Exception:
                    log.exception("could not close the channels of deregistered nodes")
                if not flags["again"]:
                    return
        finally:
            flags["busy"] = False

    def kick() -> None:  # on the loop
        if flags["busy"]:
            flags["again"] = True
            return
        task = asyncio.ensure_future(sweep())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def changed() -> None:  # on the store's follower thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to do
            loop.call_soon_threadsafe(kick)

    state.store.invalidation.subscribe("nodes", changed)


def add_routes(app: web.Application, reconcile: Reconcile, on_message: NodeMessage) -> None:
    """Registration and the control channel. ``reconcile(state, instance_id, running)`` ends
    the relays of sessions a reconnecting node no longer runs (the data-channel relay's
    ``reconcile_node``); ``on_message`` takes the node's hello and Run Command reports. Both
    sit a layer above this one: passed in, not imported."""
    app[RECONCILE_KEY] = reconcile
    app[NODE_MESSAGE_KEY] = on_message
    app.router.add_post(
        "/hatchway/v1/register", handle_register, name="ssm:RegisterManagedInstance"
    )
    app.router.add_get(
        "/v1/control-channel/{instance_id}",
        handle_control_channel,
        name="ssmmessages:OpenControlChannel",
    )
