"""Who is calling: an access key resolved to a principal, its policies and its context keys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hatchway.iam import Policy, PolicyKind, PolicySet, Principal, compile_policy
from hatchway.iam.context import Context
from hatchway.server.accounts import iamdata
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import Record
from hatchway.server.store import schema as t


@dataclass
class Caller:
    """An authenticated principal."""

    principal: Principal
    kind: str  # "user" | "session" | "node"
    name: str  # user name, role-session name, or instance id
    user_id: str  # aws:userid
    policies: PolicySet
    tags: dict[str, str] = field(default_factory=dict)
    temporary: bool = False
    issued: datetime | None = None
    access_key_id: str = ""
    entity: Record | None = None  # the IAM user or role behind the caller
    session_token: bool = False  # credentials from STS GetSessionToken (AWS limits them)
    mfa_time: datetime | None = None  # when MFA was used to obtain these credentials
    _context: Context | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def arn(self) -> str:
        return self.principal.arn

    def context(self) -> Context:
        """Principal-derived global condition keys (lower-cased); a fresh dict each time."""
        if self._context is None:
            self._context = self._build_context()
        return dict(self._context)

    def _build_context(self) -> Context:
        ctx = self.principal.context()
        ctx["aws:userid"] = self.user_id
        for k, v in self.tags.items():
            ctx[f"aws:principaltag/{k}".lower()] = v
        if self.temporary:
            ctx["aws:multifactorauthpresent"] = "true" if self.mfa_time else "false"
            if self.issued is not None:
                ctx["aws:tokenissuetime"] = self.issued.strftime("%Y-%m-%dT%H:%M:%SZ")
        return ctx


def _compile(docs: list[dict[str, Any]], kind: PolicyKind) -> list[Policy]:
    out = []
    for d in docs:
        try:
            out.append(compile_policy(json.loads(d["text"]), kind, name=d["name"], arn=d["arn"]))
        except (ValueError, TypeError):
            continue  # stored documents were validated on write; never fail open on one
    return out


def _boundary(state: ServerState, entity: Record | None) -> list[Policy] | None:
    if entity is None:
        return None
    arn = entity["data"].get("boundary")
    if not arn:
        return None
    text = iamdata.policy_document(state.store, arn)
    docs = [{"name": arn.rsplit("/", 1)[-1], "arn": arn, "text": text}] if text else []
    return _compile(docs, PolicyKind.BOUNDARY)  # a missing boundary policy allows nothing


def resolve_caller(state: ServerState, key: Record) -> Caller | None:
    """The caller behind an access key row, with its compiled policies (cached)."""
    cache_key = (key["access_key_id"], state.generation)
    cached = state.policy_cache.get(cache_key)
    if isinstance(cached, Caller):  # what this function stores there
        return cached
    caller = _resolve(state, key)
    if caller is not None:
        if len(state.policy_cache) > 10_000:  # entries of older generations pile up
            state.policy_cache.clear()
        state.policy_cache[cache_key] = caller
    return caller


def _role_parts(state: ServerState, role_name: str) -> tuple[Record | None, list[Policy]]:
    role = iamdata.get_entity(state.store, "role", role_name)
    if role is None:
        return None, []
    return role, _compile(
        iamdata.identity_documents(state.store, "role", role_name), PolicyKind.IDENTITY
    )


def _resolve(state: ServerState, key: Record) -> Caller | None:
    account = state.config.account_id
    kind = key["owner_kind"]
    data = key["data"]
    if kind in ("user", "user_session"):
        user = iamdata.get_entity(state.store, "user", key["owner_name"])
        if user is None:
            return None
        # STS GetSessionToken ("user_session"): the IAM user's own permissions, as temporary
        # credentials bound to the user's unique id (a user deleted and created again does not
        # inherit them).
        session = kind == "user_session"
        if session and user["entity_id"] != data.get("user_id"):
            return None
        identity = _compile(
            iamdata.identity_documents(state.store, "user", user["name"]), PolicyKind.IDENTITY
        )
        ps = PolicySet(identity, boundary=_boundary(state, user), scps=state.scps)
        mfa_time = data.get("mfa_time") if session else None
        return Caller(
            Principal.from_arn(user["arn"]),
            "user",
            user["name"],
            user["entity_id"],
            ps,
            iamdata.tags_dict(user),
            temporary=session,
            issued=key["created"] if session else None,
            access_key_id=key["access_key_id"],
            entity=user,
            session_token=session,
            mfa_time=datetime.fromisoformat(mfa_time) if mfa_time else None,
        )
    if kind in ("session", "node"):
        role_name = data["role_name"]
        session_name = data["session_name"]
        role, identity = _role_parts(state, role_name)
        if role is None or role["entity_id"] != data.get("role_id"):
            # Credentials follow the role they were issued for (its unique id), not its name:
            # once that role is deleted they are refused for good, whatever is created since.
            return None
        role_arn = role["arn"]
        arn = f"arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}"
        session_docs = (
            [{"name": "session-policy", "arn": None, "text": data["session_policy"]}]
            if data.get("session_policy")
            else []
        )
        for parn in data.get("policy_arns", []):
            text = iamdata.policy_document(state.store, parn)
            if text:
                session_docs.append({"name": parn.rsplit("/", 1)[-1], "arn": parn, "text": text})
        # A session that was given session policies stays scoped by them: one deleted since
        # (or any that no longer compiles) allows nothing, as a missing boundary does.
        scoped = bool(data.get("session_policy") or data.get("policy_arns"))
        session = _compile(session_docs, PolicyKind.SESSION) if scoped else None
        ps = PolicySet(identity, boundary=_boundary(state, role), session=session, scps=state.scps)
        tags = {**iamdata.tags_dict(role), **data.get("session_tags", {})}
        role_id = role["entity_id"]
        return Caller(
            Principal.from_arn(arn, role_arn),
            kind,
            session_name,
            f"{role_id}:{session_name}",
            ps,
            tags,
            temporary=kind == "session",
            issued=key["created"],
            access_key_id=key["access_key_id"],
            entity=role,
            mfa_time=datetime.fromisoformat(data["mfa_time"]) if data.get("mfa_time") else None,
        )
    return None


def session_token_refusal(caller: Caller, service: str, operation: str) -> tuple[str, str] | None:
    """AWS's limits on GetSessionToken credentials: no IAM call unless MFA was used, and on
    STS only AssumeRole and GetCallerIdentity. Returns (error kind, message) or None, where
    the kind is ``unknown_key`` (IAM answers as for an invalid token) or ``denied``."""
    if not caller.session_token:
        return None
    if service == "iam" and caller.mfa_time is None:
        return "unknown_key", "The security token included in the request is invalid"
    if service == "sts" and operation not in ("AssumeRole", "GetCallerIdentity"):
        return "denied", f"Cannot call {operation} with session credentials"
    return None


@dataclass(frozen=True)
class KeyEntry:
    """An access key as authentication needs it: the row and its unsealed secret/token."""

    row: Record
    secret: str
    session_token: str | None


def lookup_key(state: ServerState, access_key_id: str) -> KeyEntry | None:
    """The key's row and unsealed secret, cached until the next IAM change or key write."""
    version = (state.generation, state.store.version(t.access_keys))
    hit = state.key_cache.get(access_key_id)
    if hit is not None and hit[0] == version:
        cached = hit[1]
        if cached is None or isinstance(cached, KeyEntry):  # what this function stores
            return cached
    row = state.store.get(t.access_keys, access_key_id=access_key_id)
    entry = None
    if row is not None:
        token = row["data"].get("session_token")
        entry = KeyEntry(
            row,
            state.box.open(row["secret"], access_key_id),
            state.box.open(token, access_key_id) if token else None,
        )
    if len(state.key_cache) > 10_000:
        state.key_cache.clear()
    state.key_cache[access_key_id] = (version, entry)
    return entry


def credential_lookup(state: ServerState, *, active_only: bool = True) -> Any:
    """The ``lookup`` SigV4 verification needs, backed by :func:`lookup_key`."""
    from hatchway.server.front import sigv4

    def lookup(access_key_id: str) -> sigv4.Credential | None:
        entry = lookup_key(state, access_key_id)
        if entry is None or (active_only and entry.row["status"] != "Active"):
            return None
        return sigv4.Credential(entry.secret, entry.session_token, entry.row["expires"])

    return lookup
