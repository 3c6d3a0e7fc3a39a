"""Session Manager sessions: StartSession (the seed document's rules), Resume, Terminate,
DescribeSessions, GetConnectionStatus.

A session starts ``Connecting`` with a single-use data-channel token that expires
``token_ttl`` seconds after StartSession/ResumeSession if unused
(hatchway/server/relay/datachannel.py spends it); until a client uses its token, a session
stays Connecting, and one whose tokens all expired unused ends as Terminated. StartSession
also fixes what the node will run: the validated document version, its parameters, the
session preferences and the Run As user.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from hatchway.iam import EXPLICIT_DENY
from hatchway.server.base import crypto
from hatchway.server.base.errors import ServiceError, access_denied
from hatchway.server.control.nodes import close_channel, ping_status
from hatchway.server.front.call import Call, operation
from hatchway.server.front.identity import Caller
from hatchway.server.ops.documents import ResolvedDocument, load_document
from hatchway.server.ops.paging import page
from hatchway.server.runtime.state import ServerState, stream_url
from hatchway.server.store import Conflict, NodeRow, SessionData, SessionRow
from hatchway.server.store import schema as t
from hatchway.ssm import (
    DEFAULT_SESSION_DOCUMENT,
    authorize_start_session,
    session_arn,
    target_arn,
)
from hatchway.ssm.arns import InvalidTarget, document_arn
from hatchway.ssm.documents import (
    DocumentError,
    default_preferences,
    interpolate_inputs,
    is_true,
    parse_content,
    render_content,
    validate_parameters,
)

ACTIVE = ("Connecting", "Connected", "Disconnected", "Terminating")
HISTORY = ("Terminated", "Failed")
_MAX_ID = 96


def new_session_id(name: str) -> str:
    """``<principal name>-<17 hex>``, the name cut so that the id fits in 96 characters."""
    return f"{name[: _MAX_ID - 18]}-{secrets.token_hex(9)[:17]}"


def mint_token(state: ServerState, session_id: str, conn: Any = None) -> str:
    """A fresh single-use token for the session's data channel; only its hash is stored."""
    value = crypto.token(48)
    state.store.insert(
        t.session_tokens,
        {
            "token_hash": crypto.digest(value),
            "session_id": session_id,
            "expires": datetime.now(UTC) + timedelta(seconds=state.config.token_ttl),
            "used": False,
        },
        conn,
        savepoint=False,  # 48 random bytes: a clash would abort the caller's transaction
    )
    return value


def expire_unused(state: ServerState) -> int:
    """End Connecting sessions whose tokens all expired unused; returns how many ended."""
    now = datetime.now(UTC)
    tok = t.session_tokens.c
    live = select(tok.session_id).where(or_(tok.used.is_(True), tok.expires > now))
    stale = state.store.sessions(
        t.sessions.c.status == "Connecting", t.sessions.c.session_id.not_in(live)
    )
    ended = 0
    for row in stale:
        data = row["data"].copy()
        data["details"] = "The session token expired before a client connected."
        ended += state.store.update(
            t.sessions,
            {"session_id": row["session_id"]},
            {"status": "Terminated", "end_date": now, "data": data},
            None,
            t.sessions.c.status == "Connecting",
        )
    return ended


def session_document(state: ServerState, name: str) -> ResolvedDocument | None:
    """The ``$LATEST`` version of ``name``, as on AWS (docs/session-documents.md,
    "Which version a session runs"); ``SSM-SessionManagerRunShell`` falls back to the
    built-in defaults while the account has not created it.

    Cached until a document changes, through any process of any broker
    (see hatchway.server.store.invalidation)."""
    version = (state.store.version(t.documents), state.store.version(t.document_versions))
    hit = state.doc_cache.get(name)
    if hit is not None and hit[0] == version:
        cached = hit[1]
        if cached is None or isinstance(cached, ResolvedDocument):  # what this function stores
            return cached
    doc = load_document(state, name, "$LATEST")
    if doc is None and name == DEFAULT_SESSION_DOCUMENT:
        doc = builtin_preferences(state)
    if len(state.doc_cache) > 1000:
        state.doc_cache.clear()
    state.doc_cache[name] = (version, doc)
    return doc


def builtin_preferences(state: ServerState) -> ResolvedDocument:
    """What ``SSM-SessionManagerRunShell`` means before the account creates it: AWS's
    defaults (a shell as ``ssm-user``, 20 minutes idle, no logging)."""
    content = render_content(default_preferences(), "JSON")
    return ResolvedDocument(
        DEFAULT_SESSION_DOCUMENT,
        document_arn(DEFAULT_SESSION_DOCUMENT, state.config.region, state.config.account_id),
        state.config.account_id,
        "Session",
        1,
        content,
        "JSON",
        parse_content(content, "JSON"),
        {},
    )


def find_node(state: ServerState, target: str) -> NodeRow | None:
    """The registered node ``target`` names: the exact id, else the one id that equals it
    ignoring case (ssh's ``%h`` is lowercased, so AWS's ``ProxyCommand`` recipe sends
    ``i-02573cafcfexample`` for ``i-02573cafcfEXAMPLE``; AWS resolves it)."""
    node = state.store.node(target)
    if node is not None:
        return node
    matches = state.store.nodes(func.lower(t.instances.c.instance_id) == target.lower(), limit=2)
    return matches[0] if len(matches) == 1 else None


def _tags(row: NodeRow | None) -> dict[str, str]:
    if row is None:
        return {}
    return {x["Key"]: x["Value"] for x in row["data"].get("tags", [])}


def effective_inputs(
    state: ServerState, doc: ResolvedDocument, parameters: dict[str, list[str]]
) -> dict[str, Any]:
    """The session preferences a session runs with, parameters filled in.

    A document with its own ``inputs`` uses them; one without (AWS's Port and command
    documents, most custom ones) inherits the account's preferences, the ``inputs`` of
    ``SSM-SessionManagerRunShell`` (docs/session-documents.md).
    """
    raw = doc.document.get("inputs")
    if not isinstance(raw, dict):
        prefs = session_document(state, DEFAULT_SESSION_DOCUMENT)
        raw = prefs.document.get("inputs") if prefs is not None else None
    if not isinstance(raw, dict):
        return {}
    out = interpolate_inputs(raw, parameters)
    return out if isinstance(out, dict) else {}


RUN_AS_TAG = "SSMSessionRunAs"


def run_as_user(caller: Caller, inputs: dict[str, Any]) -> str | None:
    """The OS user a Run As session runs as (docs/reference/session-manager.md#run-as), ``None``
    when Run As is off.

    The caller's ``SSMSessionRunAs`` tag wins: an IAM user's tag, or for an assumed role the
    role's tag, where a session tag of the same key (AssumeRole ``Tags``) overrides the
    role's. Without a tag, the preferences' ``runAsDefaultUser``. When neither names a user
    the result is ``""``: the session still starts and the node fails it with the reason,
    as on AWS.
    """
    if not is_true(inputs.get("runAsEnabled")):
        return None
    tagged = ""
    # Caller.tags lists the role's tags before the session's; the last match wins.
    for key, value in caller.tags.items():
        if key.lower() == RUN_AS_TAG.lower() and value.strip():
            tagged = value.strip()
    return tagged or str(inputs.get("runAsDefaultUser") or "").strip()


@operation("ssm", "StartSession")
async def start_session(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    target: str = params["Target"]
    doc_name: str | None = params.get("DocumentName")
    try:
        arn = target_arn(target, call.region, call.account)
    except InvalidTarget:
        arn = None
    node = find_node(call.state, target) if arn else None
    if node is not None and node["instance_id"] != target:
        # ssh lowercases %h: every decision is taken on the registered id's ARN.
        target = node["instance_id"]
        arn = target_arn(target, call.region, call.account)
    shown = doc_name if doc_name is not None else DEFAULT_SESSION_DOCUMENT
    doc = session_document(call.state, shown)
    # 1. IAM: the target and (when named) the document, each with its own tags
    # (docs/reference/session-manager.md#startsession-authorization).
    if arn is not None:
        result = authorize_start_session(
            call.caller.policies,
            call.caller.principal,
            target_arn=arn,
            region=call.region,
            account=call.account,
            document_name=doc_name,
            target_tags=_tags(node),
            document_tags=doc.tags if doc else {},
            context=call.base_context(),
            mode=call.state.config.start_session_mode,
        )
        call.decisions.extend(e.decision for e in result.evaluations)
        if not result.allowed:
            raise access_denied(result.message or "Access denied")
    # 2. The node must be registered and online.
    if (
        arn is None
        or node is None
        or node["deregistered"]
        or ping_status(call.state, node) != "Online"
    ):
        raise ServiceError("TargetNotConnected", f"{target} is not connected.")
    # 3. The document must be a Session document; its parameters must fit it.
    if doc is None:
        raise ServiceError("InvalidDocument", "No matching value was found for Name.")
    if doc.document_type != "Session":
        raise ServiceError(
            "InvalidDocument",
            f"Document type: '{doc.document_type}' is not "
            "supported. Only type: 'Session' is supported for Session Manager.",
        )
    try:
        parameters = validate_parameters(doc.document, params.get("Parameters"))
        inputs = effective_inputs(call.state, doc, parameters)  # inherited shellProfile too
    except DocumentError as exc:
        raise ServiceError(exc.code, exc.message) from exc
    max_duration = str(inputs.get("maxSessionDuration") or "") or None
    now = datetime.now(UTC)
    tags = {"aws:ssmmessages:session-id": call.caller.user_id, "aws:ssmmessages:target-id": target}
    data: SessionData = {
        "reason": params.get("Reason"),
        "owner_userid": call.caller.user_id,
        "parameters": parameters,
        "inputs": inputs,
        "document_version": doc.version,
        "max_session_duration": max_duration,
        "idle_session_timeout": str(inputs.get("idleSessionTimeout") or "20"),
        "run_as_user": run_as_user(call.caller, inputs),
        "session_type": doc.document.get("sessionType"),
        # The version StartSession validated is the one the node runs.
        "document": doc.document,
        "tags": tags,
    }
    for _ in range(3):
        session_id = new_session_id(call.caller.name)
        refuse_denied_data_channel(call, session_id, tags)
        record: SessionRow = {
            "session_id": session_id,
            "target": target,
            "status": "Connecting",
            "owner": call.caller.arn,
            "start_date": now,
            "end_date": None,
            "document_name": doc.name,
            "data": data,
        }
        try:
            with call.store.transaction() as c:
                # A clashing id aborts this attempt (no savepoint); the loop retries.
                call.store.insert(t.sessions, record, c, savepoint=False)
                token = mint_token(call.state, session_id, c)
            break
        except Conflict:
            continue
    else:
        raise ServiceError(
            "InternalServerError", "Could not allocate a session id.", 500, sender=False
        )
    return {
        "SessionId": session_id,
        "TokenValue": token,
        "StreamUrl": stream_url(call.state.config, session_id, secure=call.secure),
    }


def _session_context(row: SessionRow) -> dict[str, object]:
    return _tag_context(row["data"].get("tags", {}))


def _tag_context(tags: dict[str, str]) -> dict[str, object]:
    return {f"ssm:resourceTag/{k}": v for k, v in tags.items()}


def refuse_denied_data_channel(call: Call, session_id: str, tags: dict[str, str]) -> None:
    """An explicit deny of ``ssmmessages:OpenDataChannel`` on the session refuses the token.

    The data-channel token is the only credential an unsigned websocket upgrade carries (AWS's
    plugin before 1.2.688, presigned StreamUrls, third-party clients), so the caller's right to
    open the channel is decided here, when StartSession/ResumeSession issue it, with the
    context a signed upgrade would be evaluated in (the session ARN and its tags). Only an
    explicit deny refuses: without any statement about the action the session still starts
    (older clients never needed it); a signed upgrade is then refused unless it is allowed,
    and ``--require-signed-data-channel`` makes every client sign.
    """
    d = call.decide(
        "ssmmessages:OpenDataChannel",
        session_arn(session_id, call.region, call.account),
        _tag_context(tags),
    )
    if d.decision == EXPLICIT_DENY:
        raise call.deny(d)
    if not d.allowed:
        call.decisions.remove(d)  # refuses nothing: not the audit record's deciding denial


def _authorize_session(call: Call, action: str, session_id: str) -> SessionRow | None:
    row = call.store.session(session_id)
    call.authorize(
        action,
        session_arn(session_id, call.region, call.account),
        _session_context(row) if row else None,
    )
    return row


@operation("ssm", "ResumeSession")
async def resume_session(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    sid = params["SessionId"]
    row = _authorize_session(call, "ssm:ResumeSession", sid)
    if row is None:
        raise ServiceError("DoesNotExistException", f"Session with Id {sid} does not exist.")
    expire_unused(call.state)
    row = call.store.session(sid)
    if row is None or row["status"] in HISTORY or row["status"] == "Terminating":
        return {"SessionId": sid}  # cannot be resumed: no token (the plugin says "timed out")
    refuse_denied_data_channel(call, sid, row["data"].get("tags", {}))
    token = mint_token(call.state, sid)
    return {
        "SessionId": sid,
        "TokenValue": token,
        "StreamUrl": stream_url(call.state.config, sid, secure=call.secure),
    }


async def end_session(
    state: ServerState,
    session_id: str,
    status: str = "Terminated",
    details: str | None = None,
    row: SessionRow | None = None,
) -> bool | None:
    """Move an active session to History and spend its tokens.

    Returns None if the session was not active, else whether a client had connected (one of
    its tokens was spent already). The tokens are read locked (``Store.locked_rows``), so that
    answer is final: a client spending a token at the same moment either did so first and is
    seen, or finds the token spent after this and is refused.
    """
    if row is None:
        row = state.store.session(session_id)
    if row is None or row["status"] in HISTORY:
        return None
    values: dict[str, Any] = {"status": status, "end_date": datetime.now(UTC)}
    if details:
        data = row["data"].copy()
        data["details"] = details
        values["data"] = data
    with state.store.transaction() as c:
        tokens = state.store.locked_rows(t.session_tokens, c, session_id=session_id)
        state.store.update(t.sessions, {"session_id": session_id}, values, c)
        state.store.update(t.session_tokens, {"session_id": session_id}, {"used": True}, c)
    return any(token["used"] for token in tokens)


async def close_data_channel(
    state: ServerState, session_id: str, target: str, output: str = "", *, started: bool = True
) -> None:
    """channel_closed to both ends of a live data channel, and the node told to stop.

    ``started=False`` says no client ever connected (no token of the session was spent): then
    there is no relay, the node was never asked to start the session and is not told to stop
    it, and an API worker need not ask the primary.
    Wherever the channels live (this process, the primary, another broker): see
    hatchway.server.runtime.channels.
    """
    await state.channels.close_data_channel(session_id, target, output, started=started)


async def end_sessions(
    state: ServerState, rows: list[SessionRow], reason: str, status: str = "Terminated"
) -> int:
    """End each of these sessions still active with ``reason`` (History, tokens spent, both
    ends told through :func:`close_data_channel`). Returns how many ended."""
    ended = 0
    for row in rows:
        connected = await end_session(state, row["session_id"], status, reason, row=row)
        if connected is None:
            continue
        ended += 1
        await close_data_channel(state, row["session_id"], row["target"], reason, started=connected)
    return ended


async def end_role_sessions(state: ServerState, role_id: str, role_name: str) -> int:
    """End, with the reason, every active session opened under a deleted role: those its
    role sessions started (owner ``AROA…:<session name>``) and those on nodes acting as it.
    Returns how many ended; the nodes' control channels are closed too."""
    nodes = {
        k["owner_name"]
        for k in state.store.select(t.access_keys, owner_kind="node")
        if k["data"].get("role_id") == role_id
    }
    reason = f"The session was terminated because its IAM role {role_name} was deleted."
    rows = [
        row
        for row in state.store.sessions(t.sessions.c.status.in_(ACTIVE))
        if str(row["data"].get("owner_userid", "")).startswith(f"{role_id}:")
        or row["target"] in nodes
    ]
    ended = await end_sessions(state, rows, reason)
    for instance_id in sorted(nodes):
        await close_channel(state, instance_id)
    return ended


@operation("ssm", "TerminateSession")
async def terminate_session(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    sid = params["SessionId"]
    row = _authorize_session(call, "ssm:TerminateSession", sid)
    if row is not None:
        connected = await end_session(call.state, sid, row=row)
        await close_data_channel(call.state, sid, row["target"], started=connected is not False)
    return {"SessionId": sid}


def _session_out(row: SessionRow) -> dict[str, Any]:
    d = row["data"]
    return {
        "SessionId": row["session_id"],
        "Target": row["target"],
        "Status": row["status"],
        "StartDate": row["start_date"],
        "EndDate": row["end_date"],
        "DocumentName": row["document_name"],
        "Owner": row["owner"],
        "Reason": d.get("reason"),
        "Details": d.get("details"),
        "OutputUrl": d.get("output_url") or {},
        "MaxSessionDuration": d.get("max_session_duration"),
        "AccessType": "Standard",
    }


def _parse_time(value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ServiceError("InvalidFilterValue", f"Invalid date value: {value}") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


_FILTERS: dict[str, Any] = {
    "InvokedAfter": lambda r, v: r["start_date"] >= _parse_time(v),
    "InvokedBefore": lambda r, v: r["start_date"] <= _parse_time(v),
    "Target": lambda r, v: r["target"] == v,
    "Owner": lambda r, v: r["owner"] == v,
    "Status": lambda r, v: r["status"] == v,
    "SessionId": lambda r, v: r["session_id"] == v,
    "AccessType": lambda r, v: v == "Standard",
}


@operation("ssm", "DescribeSessions")
async def describe_sessions(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:DescribeSessions", "*")
    expire_unused(call.state)
    statuses = ACTIVE if params["State"] == "Active" else HISTORY
    rows = call.store.sessions(
        t.sessions.c.status.in_(statuses), order_by=[t.sessions.c.start_date.desc()]
    )
    for f in params.get("Filters") or []:
        test = _FILTERS.get(f["key"])
        if test is None:
            raise ServiceError("InvalidFilterKey", f"Invalid filter key {f['key']}.")
        rows = [r for r in rows if test(r, f["value"])]
    chunk, nxt = page(rows, params, 20)
    return {"Sessions": [_session_out(r) for r in chunk], "NextToken": nxt}


@operation("ssm", "GetConnectionStatus")
async def get_connection_status(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    target = params["Target"]
    try:
        arn = target_arn(target, call.region, call.account)
    except InvalidTarget:
        arn = "*"
    node = call.store.node(target)
    call.authorize(
        "ssm:GetConnectionStatus",
        arn,
        {f"ssm:resourceTag/{k}": v for k, v in _tags(node).items()}
        | {f"aws:ResourceTag/{k}": v for k, v in _tags(node).items()},
    )
    online = node is not None and ping_status(call.state, node) == "Online"
    return {"Target": target, "Status": "connected" if online else "notconnected"}
