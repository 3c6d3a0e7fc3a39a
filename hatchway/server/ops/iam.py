"""IAM operations (Query protocol): users, groups, roles, managed and inline policies, access
keys, group membership, attachments, permissions boundaries, tags, account authorization
details and the policy simulator.

Every handler authorizes first (AWS's action and resource ARN; tag and boundary condition keys
where AWS sets them), then checks the request against the store, and makes all of its changes
in one store transaction: a failed operation changes nothing. Successful writes call
``state.iam_changed()`` so that cached compiled policy sets are rebuilt. Error codes and texts
are AWS's; ``docs/broker-iam.md`` ("IAM API") lists them and the choices made where AWS's
behaviour is not documented.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, func

from hatchway.iam import PolicyError, PolicyKind
from hatchway.iam.simulate import ContextEntry, SimulationInput, simulate_custom_policy
from hatchway.iam.validate import (
    GROUP_INLINE_POLICY_SIZE,
    MANAGED_POLICIES_PER_PRINCIPAL,
    MANAGED_POLICY_SIZE,
    MANAGED_POLICY_VERSIONS,
    ROLE_INLINE_POLICY_SIZE,
    TRUST_POLICY_SIZE,
    USER_INLINE_POLICY_SIZE,
    validate_policy_text,
)
from hatchway.server import awsmanaged, crypto, iamdata
from hatchway.server.bootstrap import create_access_key as _store_access_key
from hatchway.server.call import Call, operation
from hatchway.server.cpu import run_cpu
from hatchway.server.errors import ServiceError
from hatchway.server.ops.sessions import end_role_sessions
from hatchway.server.store import Conflict, Record
from hatchway.server.store import schema as t

T = TypeVar("T")

#: Per-kind names: output structure, name member, id member, unique-id prefix.
_KIND = {
    "user": ("User", "UserName", "UserId", "AIDA"),
    "group": ("Group", "GroupName", "GroupId", "AGPA"),
    "role": ("Role", "RoleName", "RoleId", "AROA"),
}
_INLINE_LIMIT = {
    "user": USER_INLINE_POLICY_SIZE,
    "group": GROUP_INLINE_POLICY_SIZE,
    "role": ROLE_INLINE_POLICY_SIZE,
}
_QUOTA_NAME = {"user": "User", "group": "Group", "role": "Role"}
MAX_TAGS = 50
MAX_ACCESS_KEYS = 2
MAX_GROUPS_PER_USER = 10
DEFAULT_MAX_ITEMS = 100
DEFAULT_SESSION_DURATION = 3600


# -- errors -----------------------------------------------------------------------------------


def _no_entity(kind: str, name: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"The {kind} with name {name} cannot be found.", 404)


def _policy_not_found(arn: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"Policy {arn} was not found.", 404)


def _not_attachable(arn: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"Policy {arn} does not exist or is not attachable.", 404)


def _delete_conflict(message: str) -> ServiceError:
    return ServiceError("DeleteConflict", message, 409)


def _limit(message: str) -> ServiceError:
    return ServiceError("LimitExceeded", message, 409)


def _from_policy_error(exc: PolicyError) -> ServiceError:
    status = 409 if exc.code == "LimitExceeded" else 400
    return ServiceError(exc.code, exc.message, status)


def _validate(
    text: str, kind: PolicyKind, *, managed: bool = False, size_limit: int | None = None
) -> None:
    try:
        validate_policy_text(text, kind, managed=managed, size_limit=size_limit)
    except PolicyError as exc:
        raise _from_policy_error(exc) from exc


def _validate_trust(text: str) -> None:
    try:
        validate_policy_text(text, PolicyKind.TRUST, size_limit=TRUST_POLICY_SIZE)
    except PolicyError as exc:
        if exc.code == "LimitExceeded":
            raise _limit(f"Cannot exceed quota for ACLSizePerRole: {TRUST_POLICY_SIZE}") from exc
        raise _from_policy_error(exc) from exc


def _check_principals(call: Call, text: str) -> None:
    """AWS resolves the IAM users and roles a trust policy names to their unique ids when it
    is saved: one of this account's that does not exist makes the document invalid."""
    doc = json.loads(text)
    statements = doc.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    for st in statements if isinstance(statements, list) else []:
        principal = st.get("Principal") if isinstance(st, dict) else None
        if not isinstance(principal, dict):
            continue
        values = principal.get("AWS")
        for value in [values] if isinstance(values, str) else values or []:
            if not isinstance(value, str):
                continue
            prefix = f"arn:aws:iam::{call.account}:"
            kind = value[len(prefix) :].split("/", 1)[0] if value.startswith(prefix) else ""
            if kind not in ("user", "role"):
                continue
            row = iamdata.get_entity(call.store, kind, value.rsplit("/", 1)[-1])
            if row is None or row["arn"] != value:
                raise ServiceError(
                    "MalformedPolicyDocument", f'Invalid principal in policy: "AWS":"{value}"', 400
                )


def _size(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


# -- small helpers ----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _encoded(text: str) -> str:
    """Policy documents leave IAM URL-encoded (botocore decodes them back)."""
    return quote(text, safe="")


def _page(items: Sequence[T], params: Mapping[str, Any]) -> tuple[list[T], dict[str, Any]]:
    """One page of ``items`` per ``Marker``/``MaxItems``; the marker is an opaque offset."""
    start = 0
    marker = params.get("Marker")
    if marker is not None:
        try:
            start = int(str(marker), 16)
        except ValueError:
            start = -1
        if start < 0 or start > len(items):
            raise ServiceError("ValidationError", "Invalid Marker.", 400)
    size = int(params.get("MaxItems") or DEFAULT_MAX_ITEMS)
    end = start + size
    meta: dict[str, Any] = {"IsTruncated": end < len(items)}
    if end < len(items):
        meta["Marker"] = format(end, "x")
    return list(items[start:end]), meta


def _path_ok(path: str, prefix: str | None) -> bool:
    return prefix is None or path.startswith(prefix)


def _tag_context(tags: Sequence[Mapping[str, str]] | None) -> dict[str, object]:
    """``aws:RequestTag/<key>`` and ``aws:TagKeys`` for actions that take tags."""
    if not tags:
        return {}
    ctx: dict[str, object] = {f"aws:RequestTag/{x['Key']}": x["Value"] for x in tags}
    ctx["aws:TagKeys"] = [x["Key"] for x in tags]
    return ctx


RESERVED_TAG_MESSAGE = "User-defined tags cannot start with 'aws:'."


def _check_tags(tags: Sequence[Mapping[str, str]] | None) -> list[dict[str, str]]:
    """Tags in a request: no key twice (tag keys are case-insensitive), none of AWS's own."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for tag in tags or []:
        key = tag["Key"].lower()
        if key.startswith("aws:"):
            # The aws: prefix is AWS's own (any case); IAM refuses the whole request.
            raise ServiceError("InvalidInput", RESERVED_TAG_MESSAGE, 400)
        if key in seen:
            raise ServiceError(
                "InvalidInput",
                "Duplicate tag keys found. Please note that Tag keys are case insensitive.",
                400,
            )
        seen.add(key)
        out.append({"Key": tag["Key"], "Value": tag["Value"]})
    return out


def _merge_tags(
    kind: str, old: Sequence[Mapping[str, str]], new: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    merged = {x["Key"].lower(): {"Key": x["Key"], "Value": x["Value"]} for x in old}
    for x in new:
        merged[x["Key"].lower()] = {"Key": x["Key"], "Value": x["Value"]}
    if len(merged) > MAX_TAGS:
        raise _limit(f"Cannot exceed quota for TagsPer{_QUOTA_NAME[kind]}: {MAX_TAGS}")
    return list(merged.values())


def _self_user(call: Call, params: Mapping[str, Any]) -> str:
    """``UserName``, or the calling IAM user's own name when it is left out (as AWS does)."""
    name = params.get("UserName")
    if name:
        return str(name)
    if call.caller.kind == "user":
        return call.caller.name
    raise ServiceError(
        "ValidationError", "Must specify userName when calling with non-User credentials", 400
    )


def _entity_arn(call: Call, kind: str, name: str, row: Record | None) -> str:
    return str(row["arn"]) if row else iamdata.entity_arn(call.account, kind, "/", name)


def _authorize_on(
    call: Call, action: str, kind: str, name: str, context: Mapping[str, object] | None = None
) -> Record | None:
    """Authorize ``action`` on the user/group/role ``name`` (with its resource tags) and return
    its record, or None if it does not exist (authorization comes first, as in AWS)."""
    row = iamdata.get_entity(call.store, kind, name)
    ctx: dict[str, object] = {}
    for k, v in iamdata.tags_dict(row).items():
        ctx[f"aws:ResourceTag/{k}"] = v
        ctx[f"iam:ResourceTag/{k}"] = v
    ctx.update(context or {})
    call.authorize(action, _entity_arn(call, kind, name, row), ctx)
    return row


def _require(
    call: Call, action: str, kind: str, name: str, context: Mapping[str, object] | None = None
) -> Record:
    row = _authorize_on(call, action, kind, name, context)
    if row is None:
        raise _no_entity(kind, name)
    return row


def _get(call: Call, kind: str, name: str, conn: Connection) -> Record:
    """The entity inside a transaction (it may have gone since authorization)."""
    row = iamdata.get_entity(call.store, kind, name, conn)
    if row is None:
        raise _no_entity(kind, name)
    return row


def _aws_record(pol: awsmanaged.ManagedPolicy) -> Record:
    """An AWS managed policy in the shape of a stored policy row (never stored)."""
    return {
        "arn": pol.arn,
        "name": pol.name,
        "policy_id": pol.policy_id,
        "path": pol.path,
        "default_version": pol.default_version,
        "next_version": 0,
        "created": pol.created,
        "updated": pol.updated,
        "data": {"aws_managed": True},
    }


def _managed(call: Call, arn: str, conn: Connection | None = None) -> Record | None:
    """A managed policy: AWS's from the shipped data (rows an older broker seeded into the
    store for them are ignored), the account's own from the store."""
    if awsmanaged.is_aws_managed(arn):
        pol = awsmanaged.get(arn)
        return _aws_record(pol) if pol is not None else None
    return call.store.get(t.iam_policies, conn, arn=arn)


def _local_policies(call: Call, conn: Connection | None = None) -> list[Record]:
    return [
        r
        for r in call.store.select(t.iam_policies, conn=conn, order_by=[t.iam_policies.c.name])
        if not awsmanaged.is_aws_managed(r["arn"])
    ]


def _versions(arn: str) -> list[Record]:
    """An AWS managed policy's versions as version rows (documents read on demand)."""
    pol = awsmanaged.get(arn)
    if pol is None:
        return []
    return [{"arn": arn, "version_id": v, "created": c} for v, c in pol.versions]


def _version_document(row: Record) -> str:
    if "document" in row:
        return str(row["document"])
    return awsmanaged.document(row["arn"], row["version_id"]) or ""


def _boundary_context(arn: str | None) -> dict[str, object]:
    return {"iam:PermissionsBoundary": arn} if arn else {}


def _check_boundary(call: Call, arn: str | None, conn: Connection | None = None) -> None:
    if arn and _managed(call, arn, conn) is None:
        raise ServiceError(
            "NoSuchEntity", f"Scope ARN: {arn} does not exist or is not attachable.", 404
        )


# -- output shapes ----------------------------------------------------------------------------


def _boundary_shape(row: Record) -> dict[str, Any] | None:
    arn = row["data"].get("boundary")
    if not arn:
        return None
    return {"PermissionsBoundaryType": "PermissionsBoundaryPolicy", "PermissionsBoundaryArn": arn}


def _entity_shape(row: Record, full: bool = True) -> dict[str, Any]:
    """A User, Group or Role structure; ``full`` adds boundary and tags (Get/Create)."""
    _, name_key, id_key, _ = _KIND[row["kind"]]
    out: dict[str, Any] = {
        "Path": row["path"],
        name_key: row["name"],
        id_key: row["entity_id"],
        "Arn": row["arn"],
        "CreateDate": row["created"],
    }
    data = row["data"]
    if row["kind"] == "role":
        out["AssumeRolePolicyDocument"] = _encoded(data.get("trust", ""))
        if data.get("description"):
            out["Description"] = data["description"]
        out["MaxSessionDuration"] = int(
            data.get("max_session_duration") or DEFAULT_SESSION_DURATION
        )
    if full and row["kind"] != "group":
        boundary = _boundary_shape(row)
        if boundary is not None:
            out["PermissionsBoundary"] = boundary
        if data.get("tags"):
            out["Tags"] = list(data["tags"])
        if row["kind"] == "role":
            out["RoleLastUsed"] = {}
    return out


def _boundary_usage(call: Call, conn: Connection | None = None) -> Counter[str]:
    usage: Counter[str] = Counter()
    for row in call.store.select(t.iam_entities, conn=conn):
        arn = row["data"].get("boundary")
        if arn:
            usage[arn] += 1
    return usage


def _policy_shape(
    call: Call,
    row: Record,
    usage: Mapping[str, int],
    *,
    full: bool = True,
    conn: Connection | None = None,
    attached: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    count = (
        attached.get(row["arn"], 0)
        if attached is not None
        else call.store.count(t.iam_attachments, conn, policy_arn=row["arn"])
    )
    out: dict[str, Any] = {
        "PolicyName": row["name"],
        "PolicyId": row["policy_id"],
        "Arn": row["arn"],
        "Path": row["path"],
        "DefaultVersionId": row["default_version"],
        "AttachmentCount": count,
        "PermissionsBoundaryUsageCount": usage.get(row["arn"], 0),
        "IsAttachable": True,
        "CreateDate": row["created"],
        "UpdateDate": row["updated"],
    }
    if full:
        if row["data"].get("description"):
            out["Description"] = row["data"]["description"]
        if row["data"].get("tags"):
            out["Tags"] = list(row["data"]["tags"])
    return out


def _version_shape(row: Record, default: str, document: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "VersionId": row["version_id"],
        "IsDefaultVersion": row["version_id"] == default,
        "CreateDate": row["created"],
    }
    if document:
        out["Document"] = _encoded(_version_document(row))
    return out


# -- users, groups, roles ---------------------------------------------------------------------


def _insert_entity(
    call: Call, kind: str, name: str, path: str, data: dict[str, Any], conn: Connection
) -> Record:
    label = _QUOTA_NAME[kind]
    clash = call.store.select(
        t.iam_entities, func.lower(t.iam_entities.c.name) == name.lower(), conn=conn, kind=kind
    )
    if clash:
        raise ServiceError("EntityAlreadyExists", f"{label} with name {name} already exists.", 409)
    row: Record = {
        "kind": kind,
        "name": name,
        "entity_id": crypto.unique_id(_KIND[kind][3]),
        "arn": iamdata.entity_arn(call.account, kind, path, name),
        "path": path,
        "created": _now(),
        "data": data,
    }
    try:
        call.store.insert(t.iam_entities, row, conn)
    except Conflict as exc:
        raise ServiceError(
            "EntityAlreadyExists", f"{label} with name {name} already exists.", 409
        ) from exc
    return row


def _list_entities(
    call: Call, kind: str, action: str, params: Mapping[str, Any], out_key: str
) -> dict[str, Any]:
    prefix = params.get("PathPrefix")
    call.authorize(action, f"arn:aws:iam::{call.account}:{kind}{prefix or '/'}")
    rows = [
        r
        for r in call.store.select(t.iam_entities, kind=kind, order_by=[t.iam_entities.c.name])
        if _path_ok(r["path"], prefix)
    ]
    page, meta = _page(rows, params)
    return {out_key: [_entity_shape(r, full=False) for r in page], **meta}


@operation("iam", "CreateUser")
async def create_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["UserName"], params.get("Path") or "/"
    tags = _check_tags(params.get("Tags"))
    boundary = params.get("PermissionsBoundary")
    arn = iamdata.entity_arn(call.account, "user", path, name)
    call.authorize("iam:CreateUser", arn, {**_tag_context(tags), **_boundary_context(boundary)})
    if tags:
        _merge_tags("user", [], tags)
    with call.store.transaction() as c:
        _check_boundary(call, boundary, c)
        data: dict[str, Any] = {"tags": tags}
        if boundary:
            data["boundary"] = boundary
        row = _insert_entity(call, "user", name, path, data, c)
    call.state.iam_changed()
    return {"User": _entity_shape(row)}


@operation("iam", "GetUser")
async def get_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _self_user(call, params)
    return {"User": _entity_shape(_require(call, "iam:GetUser", "user", name))}


@operation("iam", "ListUsers")
async def list_users(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _list_entities(call, "user", "iam:ListUsers", params, "Users")


@operation("iam", "DeleteUser")
async def delete_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["UserName"]
    _require(call, "iam:DeleteUser", "user", name)
    with call.store.transaction() as c:
        _get(call, "user", name, c)
        if call.store.count(t.access_keys, c, owner_kind="user", owner_name=name):
            raise _delete_conflict("Cannot delete entity, must delete access keys first.")
        if call.store.count(t.iam_inline, c, kind="user", name=name):
            raise _delete_conflict("Cannot delete entity, must delete policies first.")
        if call.store.count(t.iam_attachments, c, kind="user", name=name):
            raise _delete_conflict("Cannot delete entity, must detach all policies first.")
        if call.store.count(t.iam_group_members, c, user_name=name):
            raise _delete_conflict("Cannot delete entity, must remove users from group first.")
        devices = call.store.select(t.iam_entities, conn=c, kind="mfa")
        if any(d["data"].get("user") == name for d in devices):
            # Else a user created later under the same name would inherit the device.
            raise _delete_conflict("Cannot delete entity, must delete MFA device first.")
        call.store.delete(t.iam_entities, c, kind="user", name=name)
    call.state.iam_changed()
    return {}


@operation("iam", "CreateGroup")
async def create_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["GroupName"], params.get("Path") or "/"
    call.authorize("iam:CreateGroup", iamdata.entity_arn(call.account, "group", path, name))
    with call.store.transaction() as c:
        row = _insert_entity(call, "group", name, path, {}, c)
    call.state.iam_changed()
    return {"Group": _entity_shape(row)}


@operation("iam", "GetGroup")
async def get_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["GroupName"]
    group = _require(call, "iam:GetGroup", "group", name)
    members = [
        r["user_name"]
        for r in call.store.select(
            t.iam_group_members, group_name=name, order_by=[t.iam_group_members.c.user_name]
        )
    ]
    users = [u for u in (iamdata.get_entity(call.store, "user", m) for m in members) if u]
    page, meta = _page(users, params)
    return {
        "Group": _entity_shape(group),
        "Users": [_entity_shape(u, full=False) for u in page],
        **meta,
    }


@operation("iam", "ListGroups")
async def list_groups(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _list_entities(call, "group", "iam:ListGroups", params, "Groups")


@operation("iam", "DeleteGroup")
async def delete_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["GroupName"]
    _require(call, "iam:DeleteGroup", "group", name)
    with call.store.transaction() as c:
        _get(call, "group", name, c)
        if call.store.count(t.iam_group_members, c, group_name=name):
            raise _delete_conflict("Cannot delete entity, must remove users from group first.")
        if call.store.count(t.iam_inline, c, kind="group", name=name):
            raise _delete_conflict("Cannot delete entity, must delete policies first.")
        if call.store.count(t.iam_attachments, c, kind="group", name=name):
            raise _delete_conflict("Cannot delete entity, must detach all policies first.")
        call.store.delete(t.iam_entities, c, kind="group", name=name)
    call.state.iam_changed()
    return {}


@operation("iam", "CreateRole")
async def create_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["RoleName"], params.get("Path") or "/"
    tags = _check_tags(params.get("Tags"))
    boundary = params.get("PermissionsBoundary")
    arn = iamdata.entity_arn(call.account, "role", path, name)
    call.authorize("iam:CreateRole", arn, {**_tag_context(tags), **_boundary_context(boundary)})
    trust = params["AssumeRolePolicyDocument"]
    _validate_trust(trust)
    _check_principals(call, trust)
    if tags:
        _merge_tags("role", [], tags)
    data: dict[str, Any] = {
        "tags": tags,
        "trust": trust,
        "max_session_duration": int(params.get("MaxSessionDuration") or DEFAULT_SESSION_DURATION),
    }
    if params.get("Description"):
        data["description"] = params["Description"]
    if boundary:
        data["boundary"] = boundary
    with call.store.transaction() as c:
        _check_boundary(call, boundary, c)
        row = _insert_entity(call, "role", name, path, data, c)
    call.state.iam_changed()
    return {"Role": _entity_shape(row)}


@operation("iam", "GetRole")
async def get_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"Role": _entity_shape(_require(call, "iam:GetRole", "role", params["RoleName"]))}


@operation("iam", "ListRoles")
async def list_roles(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _list_entities(call, "role", "iam:ListRoles", params, "Roles")


@operation("iam", "DeleteRole")
async def delete_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["RoleName"]
    _require(call, "iam:DeleteRole", "role", name)
    with call.store.transaction() as c:
        row = _get(call, "role", name, c)
        if call.store.count(t.iam_attachments, c, kind="role", name=name):
            raise _delete_conflict("Cannot delete entity, must detach all policies first.")
        if call.store.count(t.iam_inline, c, kind="role", name=name):
            raise _delete_conflict("Cannot delete entity, must delete policies first.")
        call.store.delete(t.iam_entities, c, kind="role", name=name)
    call.state.iam_changed()
    # Every credential issued for the role names its unique id and is refused from now on
    # (identity.py); the Session Manager sessions open under it end now.
    await end_role_sessions(call.state, row["entity_id"], name)
    return {}


@operation("iam", "UpdateAssumeRolePolicy")
async def update_assume_role_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["RoleName"]
    _require(call, "iam:UpdateAssumeRolePolicy", "role", name)
    text = params["PolicyDocument"]
    _validate_trust(text)
    _check_principals(call, text)
    with call.store.transaction() as c:
        row = _get(call, "role", name, c)
        call.store.update(
            t.iam_entities,
            {"kind": "role", "name": name},
            {"data": {**row["data"], "trust": text}},
            c,
        )
    call.state.iam_changed()
    return {}


# -- managed policies -------------------------------------------------------------------------


def _require_policy(
    call: Call, action: str, arn: str, context: Mapping[str, object] | None = None
) -> Record:
    call.authorize(action, arn, context)
    row = _managed(call, arn)
    if row is None:
        raise _policy_not_found(arn)
    return row


def _local(arn: str) -> bool:
    return not arn.startswith(iamdata.AWS_MANAGED_PREFIX)


def _aws_owned(verb: str) -> ServiceError:
    return ServiceError("AccessDenied", f"Cannot {verb} policies outside your own account.", 403)


@operation("iam", "CreatePolicy")
async def create_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["PolicyName"], params.get("Path") or "/"
    arn = f"arn:aws:iam::{call.account}:policy{path}{name}"
    tags = _check_tags(params.get("Tags"))
    call.authorize("iam:CreatePolicy", arn, _tag_context(tags))
    text = params["PolicyDocument"]
    _validate(text, PolicyKind.IDENTITY, managed=True, size_limit=MANAGED_POLICY_SIZE)
    if len(tags) > MAX_TAGS:
        raise _limit(f"Cannot exceed quota for TagsPerPolicy: {MAX_TAGS}")
    now = _now()
    data: dict[str, Any] = {"tags": tags}
    if params.get("Description"):
        data["description"] = params["Description"]
    row: Record = {
        "arn": arn,
        "name": name,
        "policy_id": crypto.unique_id("ANPA"),
        "path": path,
        "default_version": "v1",
        "next_version": 2,
        "created": now,
        "updated": now,
        "data": data,
    }
    exists = ServiceError(
        "EntityAlreadyExists",
        f"A policy called {name} already exists. Duplicate names are not allowed.",
        409,
    )
    with call.store.transaction() as c:
        same = call.store.select(
            t.iam_policies, func.lower(t.iam_policies.c.name) == name.lower(), conn=c
        )
        if any(_local(r["arn"]) for r in same):
            raise exists
        try:
            call.store.insert(t.iam_policies, row, c)
        except Conflict as exc:
            raise exists from exc
        call.store.insert(
            t.iam_policy_versions,
            {"arn": arn, "version_id": "v1", "document": text, "created": now},
            c,
        )
    call.state.iam_changed()
    return {"Policy": _policy_shape(call, row, {})}


@operation("iam", "GetPolicy")
async def get_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _require_policy(call, "iam:GetPolicy", params["PolicyArn"])
    return {"Policy": _policy_shape(call, row, _boundary_usage(call))}


@operation("iam", "ListPolicies")
async def list_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    prefix = params.get("PathPrefix")
    call.authorize("iam:ListPolicies", f"arn:aws:iam::{call.account}:policy{prefix or '/'}")
    scope = params.get("Scope") or "All"
    usage = _boundary_usage(call)
    attached = Counter(r["policy_arn"] for r in call.store.select(t.iam_attachments))
    usage_filter = params.get("PolicyUsageFilter")
    candidates: list[Record] = []
    if scope != "AWS":
        candidates += _local_policies(call)
    if scope != "Local":
        candidates += [_aws_record(p) for p in awsmanaged.all_policies()]
    candidates.sort(key=lambda r: (r["name"].lower(), r["arn"]))
    rows = []
    for r in candidates:
        if not _path_ok(r["path"], prefix):
            continue
        if params.get("OnlyAttached") and not (attached[r["arn"]] or usage[r["arn"]]):
            continue
        if usage_filter == "PermissionsPolicy" and not attached[r["arn"]]:
            continue
        if usage_filter == "PermissionsBoundary" and not usage[r["arn"]]:
            continue
        rows.append(r)
    page, meta = _page(rows, params)
    return {
        "Policies": [_policy_shape(call, r, usage, full=False, attached=attached) for r in page],
        **meta,
    }


@operation("iam", "DeletePolicy")
async def delete_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["PolicyArn"]
    _require_policy(call, "iam:DeletePolicy", arn)
    if not _local(arn):
        raise _aws_owned("delete")
    with call.store.transaction() as c:
        if _managed(call, arn, c) is None:
            raise _policy_not_found(arn)
        if call.store.count(t.iam_attachments, c, policy_arn=arn) or _boundary_usage(call, c).get(
            arn
        ):
            raise _delete_conflict("Cannot delete a policy attached to entities.")
        if call.store.count(t.iam_policy_versions, c, arn=arn) > 1:
            raise _delete_conflict(
                "This policy has more than one version. Before you delete a policy, you must "
                "delete the policy's versions. The default version is deleted with the policy."
            )
        call.store.delete(t.iam_policy_versions, c, arn=arn)
        call.store.delete(t.iam_policies, c, arn=arn)
    call.state.iam_changed()
    return {}


def _no_version(arn: str, version: str) -> ServiceError:
    return ServiceError(
        "NoSuchEntity", f"Policy {arn} version {version} does not exist or is not attachable.", 404
    )


@operation("iam", "CreatePolicyVersion")
async def create_policy_version(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["PolicyArn"]
    _require_policy(call, "iam:CreatePolicyVersion", arn)
    if not _local(arn):
        raise _aws_owned("modify")
    text = params["PolicyDocument"]
    _validate(text, PolicyKind.IDENTITY, managed=True, size_limit=MANAGED_POLICY_SIZE)
    now = _now()
    with call.store.transaction() as c:
        pol = _managed(call, arn, c)
        if pol is None:
            raise _policy_not_found(arn)
        if call.store.count(t.iam_policy_versions, c, arn=arn) >= MANAGED_POLICY_VERSIONS:
            raise _limit(
                f"A managed policy can have up to {MANAGED_POLICY_VERSIONS} versions. "
                "Before you create a new version, you must delete an existing version."
            )
        vid = f"v{pol['next_version']}"
        call.store.insert(
            t.iam_policy_versions,
            {"arn": arn, "version_id": vid, "document": text, "created": now},
            c,
        )
        values: dict[str, Any] = {"next_version": pol["next_version"] + 1, "updated": now}
        default = pol["default_version"]
        if params.get("SetAsDefault"):
            values["default_version"] = default = vid
        call.store.update(t.iam_policies, {"arn": arn}, values, c)
    call.state.iam_changed()
    return {
        "PolicyVersion": {"VersionId": vid, "IsDefaultVersion": vid == default, "CreateDate": now}
    }


@operation("iam", "GetPolicyVersion")
async def get_policy_version(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn, vid = params["PolicyArn"], params["VersionId"]
    pol = _require_policy(call, "iam:GetPolicyVersion", arn)
    if _local(arn):
        row = call.store.get(t.iam_policy_versions, arn=arn, version_id=vid)
    else:
        row = next((v for v in _versions(arn) if v["version_id"] == vid), None)
        if row is not None and awsmanaged.document(arn, vid) is None:
            row = None
    if row is None:
        raise _no_version(arn, vid)
    return {"PolicyVersion": _version_shape(row, pol["default_version"])}


@operation("iam", "ListPolicyVersions")
async def list_policy_versions(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["PolicyArn"]
    pol = _require_policy(call, "iam:ListPolicyVersions", arn)
    rows = sorted(
        call.store.select(t.iam_policy_versions, arn=arn) if _local(arn) else _versions(arn),
        key=lambda r: int(r["version_id"][1:].split(".")[0]),
        reverse=True,
    )
    page, meta = _page(rows, params)
    return {
        "Versions": [_version_shape(r, pol["default_version"], document=False) for r in page],
        **meta,
    }


@operation("iam", "DeletePolicyVersion")
async def delete_policy_version(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn, vid = params["PolicyArn"], params["VersionId"]
    _require_policy(call, "iam:DeletePolicyVersion", arn)
    if not _local(arn):
        raise _aws_owned("modify")
    with call.store.transaction() as c:
        pol = _managed(call, arn, c)
        if pol is None:
            raise _policy_not_found(arn)
        if call.store.get(t.iam_policy_versions, c, arn=arn, version_id=vid) is None:
            raise _no_version(arn, vid)
        if pol["default_version"] == vid:
            raise _delete_conflict("Cannot delete the default version of a policy.")
        call.store.delete(t.iam_policy_versions, c, arn=arn, version_id=vid)
    call.state.iam_changed()
    return {}


@operation("iam", "SetDefaultPolicyVersion")
async def set_default_policy_version(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn, vid = params["PolicyArn"], params["VersionId"]
    _require_policy(call, "iam:SetDefaultPolicyVersion", arn)
    if not _local(arn):
        raise _aws_owned("modify")
    with call.store.transaction() as c:
        if call.store.get(t.iam_policy_versions, c, arn=arn, version_id=vid) is None:
            raise _no_version(arn, vid)
        call.store.update(
            t.iam_policies, {"arn": arn}, {"default_version": vid, "updated": _now()}, c
        )
    call.state.iam_changed()
    return {}


# -- access keys ------------------------------------------------------------------------------


def _key_shape(row: Record) -> dict[str, Any]:
    return {
        "UserName": row["owner_name"],
        "AccessKeyId": row["access_key_id"],
        "Status": row["status"],
        "CreateDate": row["created"],
    }


def _user_key(call: Call, user: str, akid: str) -> Record:
    row = call.store.get(t.access_keys, access_key_id=akid)
    if row is None or row["owner_kind"] != "user" or row["owner_name"] != user:
        raise ServiceError("NoSuchEntity", f"The Access Key with id {akid} cannot be found.", 404)
    return row


@operation("iam", "CreateAccessKey")
async def create_access_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _self_user(call, params)
    _require(call, "iam:CreateAccessKey", "user", name)
    if call.store.count(t.access_keys, owner_kind="user", owner_name=name) >= MAX_ACCESS_KEYS:
        raise _limit(f"Cannot exceed quota for AccessKeysPerUser: {MAX_ACCESS_KEYS}")
    akid, secret = _store_access_key(call.state, "user", name)
    row = call.store.get(t.access_keys, access_key_id=akid)
    assert row is not None  # stored just now
    call.state.iam_changed()
    return {"AccessKey": {**_key_shape(row), "SecretAccessKey": secret}}


@operation("iam", "ListAccessKeys")
async def list_access_keys(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _self_user(call, params)
    _require(call, "iam:ListAccessKeys", "user", name)
    rows = call.store.select(
        t.access_keys, owner_kind="user", owner_name=name, order_by=[t.access_keys.c.created]
    )
    page, meta = _page(rows, params)
    return {"AccessKeyMetadata": [_key_shape(r) for r in page], **meta}


@operation("iam", "DeleteAccessKey")
async def delete_access_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _self_user(call, params)
    _require(call, "iam:DeleteAccessKey", "user", name)
    akid = params["AccessKeyId"]
    _user_key(call, name, akid)
    call.store.delete(t.access_keys, access_key_id=akid)
    call.state.iam_changed()
    return {}


@operation("iam", "UpdateAccessKey")
async def update_access_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _self_user(call, params)
    _require(call, "iam:UpdateAccessKey", "user", name)
    akid, status = params["AccessKeyId"], params["Status"]
    _user_key(call, name, akid)
    if status not in ("Active", "Inactive"):
        raise ServiceError("InvalidInput", f"Invalid status {status}.", 400)
    call.store.update(t.access_keys, {"access_key_id": akid}, {"status": status})
    call.state.iam_changed()
    return {}


# -- groups and their members -----------------------------------------------------------------


@operation("iam", "AddUserToGroup")
async def add_user_to_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    group, user = params["GroupName"], params["UserName"]
    _require(call, "iam:AddUserToGroup", "group", group)
    with call.store.transaction() as c:
        _get(call, "group", group, c)
        _get(call, "user", user, c)
        if call.store.get(t.iam_group_members, c, group_name=group, user_name=user):
            return {}
        if call.store.count(t.iam_group_members, c, user_name=user) >= MAX_GROUPS_PER_USER:
            raise _limit(f"Cannot exceed quota for GroupsPerUser: {MAX_GROUPS_PER_USER}")
        call.store.insert(t.iam_group_members, {"group_name": group, "user_name": user}, c)
    call.state.iam_changed()
    return {}


@operation("iam", "RemoveUserFromGroup")
async def remove_user_from_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    group, user = params["GroupName"], params["UserName"]
    _require(call, "iam:RemoveUserFromGroup", "group", group)
    with call.store.transaction() as c:
        _get(call, "user", user, c)
        if not call.store.delete(t.iam_group_members, c, group_name=group, user_name=user):
            raise _no_entity("user", user)
    call.state.iam_changed()
    return {}


@operation("iam", "ListGroupsForUser")
async def list_groups_for_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["UserName"]
    _require(call, "iam:ListGroupsForUser", "user", name)
    groups = [
        g
        for g in (
            iamdata.get_entity(call.store, "group", n)
            for n in sorted(iamdata.groups_of(call.store, name))
        )
        if g
    ]
    page, meta = _page(groups, params)
    return {"Groups": [_entity_shape(g) for g in page], **meta}


# -- managed policy attachments ---------------------------------------------------------------


async def _attach(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name, arn = params[f"{label}Name"], params["PolicyArn"]
    _require(call, f"iam:Attach{label}Policy", kind, name, {"iam:PolicyARN": arn})
    with call.store.transaction() as c:
        _get(call, kind, name, c)
        pol = _managed(call, arn, c)
        if pol is None:
            raise _not_attachable(arn)
        if not _local(arn) and pol["path"].startswith(awsmanaged.SERVICE_LINKED_PATH):
            raise ServiceError(
                "PolicyNotAttachable",
                "Cannot attach a Service Role Policy to a Customer Role.",
                400,
            )
        if call.store.get(t.iam_attachments, c, kind=kind, name=name, policy_arn=arn):
            return {}
        if (
            call.store.count(t.iam_attachments, c, kind=kind, name=name)
            >= MANAGED_POLICIES_PER_PRINCIPAL
        ):
            raise _limit(
                f"Cannot exceed quota for PoliciesPer{label}: {MANAGED_POLICIES_PER_PRINCIPAL}"
            )
        call.store.insert(t.iam_attachments, {"kind": kind, "name": name, "policy_arn": arn}, c)
    call.state.iam_changed()
    return {}


async def _detach(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name, arn = params[f"{label}Name"], params["PolicyArn"]
    _require(call, f"iam:Detach{label}Policy", kind, name, {"iam:PolicyARN": arn})
    with call.store.transaction() as c:
        _get(call, kind, name, c)
        if not call.store.delete(t.iam_attachments, c, kind=kind, name=name, policy_arn=arn):
            raise _policy_not_found(arn)
    call.state.iam_changed()
    return {}


async def _list_attached(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    _require(call, f"iam:ListAttached{label}Policies", kind, name)
    prefix = params.get("PathPrefix")
    rows = []
    for arn in sorted(iamdata.attached_arns(call.store, kind, name)):
        pol = _managed(call, arn)
        if pol is not None and _path_ok(pol["path"], prefix):
            rows.append({"PolicyName": pol["name"], "PolicyArn": arn})
    page, meta = _page(rows, params)
    return {"AttachedPolicies": page, **meta}


@operation("iam", "AttachUserPolicy")
async def attach_user_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _attach(call, "user", params)


@operation("iam", "AttachGroupPolicy")
async def attach_group_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _attach(call, "group", params)


@operation("iam", "AttachRolePolicy")
async def attach_role_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _attach(call, "role", params)


@operation("iam", "DetachUserPolicy")
async def detach_user_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _detach(call, "user", params)


@operation("iam", "DetachGroupPolicy")
async def detach_group_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _detach(call, "group", params)


@operation("iam", "DetachRolePolicy")
async def detach_role_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _detach(call, "role", params)


@operation("iam", "ListAttachedUserPolicies")
async def list_attached_user_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_attached(call, "user", params)


@operation("iam", "ListAttachedGroupPolicies")
async def list_attached_group_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_attached(call, "group", params)


@operation("iam", "ListAttachedRolePolicies")
async def list_attached_role_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_attached(call, "role", params)


# -- inline policies --------------------------------------------------------------------------


def _no_inline(kind: str, policy: str) -> ServiceError:
    return ServiceError(
        "NoSuchEntity", f"The {kind} policy with name {policy} cannot be found.", 404
    )


async def _put_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name, pname, text = params[f"{label}Name"], params["PolicyName"], params["PolicyDocument"]
    _require(call, f"iam:Put{label}Policy", kind, name)
    _validate(text, PolicyKind.IDENTITY)
    limit = _INLINE_LIMIT[kind]
    with call.store.transaction() as c:
        _get(call, kind, name, c)
        others = [
            r
            for r in call.store.select(t.iam_inline, conn=c, kind=kind, name=name)
            if r["policy_name"] != pname
        ]
        if _size(text) + sum(_size(r["document"]) for r in others) > limit:
            raise _limit(f"Maximum policy size of {limit} bytes exceeded for {kind} {name}")
        keys = {"kind": kind, "name": name, "policy_name": pname}
        if call.store.get(t.iam_inline, c, **keys) is None:
            call.store.insert(t.iam_inline, {**keys, "document": text}, c)
        else:
            call.store.update(t.iam_inline, keys, {"document": text}, c)
    call.state.iam_changed()
    return {}


async def _get_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name, pname = params[f"{label}Name"], params["PolicyName"]
    _require(call, f"iam:Get{label}Policy", kind, name)
    row = call.store.get(t.iam_inline, kind=kind, name=name, policy_name=pname)
    if row is None:
        raise _no_inline(kind, pname)
    return {f"{label}Name": name, "PolicyName": pname, "PolicyDocument": _encoded(row["document"])}


async def _delete_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name, pname = params[f"{label}Name"], params["PolicyName"]
    _require(call, f"iam:Delete{label}Policy", kind, name)
    if not call.store.delete(t.iam_inline, kind=kind, name=name, policy_name=pname):
        raise _no_inline(kind, pname)
    call.state.iam_changed()
    return {}


async def _list_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    _require(call, f"iam:List{label}Policies", kind, name)
    names = sorted(n for n, _ in iamdata.inline_documents(call.store, kind, name))
    page, meta = _page(names, params)
    return {"PolicyNames": page, **meta}


@operation("iam", "PutUserPolicy")
async def put_user_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _put_inline(call, "user", params)


@operation("iam", "PutGroupPolicy")
async def put_group_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _put_inline(call, "group", params)


@operation("iam", "PutRolePolicy")
async def put_role_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _put_inline(call, "role", params)


@operation("iam", "GetUserPolicy")
async def get_user_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _get_inline(call, "user", params)


@operation("iam", "GetGroupPolicy")
async def get_group_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _get_inline(call, "group", params)


@operation("iam", "GetRolePolicy")
async def get_role_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _get_inline(call, "role", params)


@operation("iam", "DeleteUserPolicy")
async def delete_user_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _delete_inline(call, "user", params)


@operation("iam", "DeleteGroupPolicy")
async def delete_group_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _delete_inline(call, "group", params)


@operation("iam", "DeleteRolePolicy")
async def delete_role_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _delete_inline(call, "role", params)


@operation("iam", "ListUserPolicies")
async def list_user_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_inline(call, "user", params)


@operation("iam", "ListGroupPolicies")
async def list_group_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_inline(call, "group", params)


@operation("iam", "ListRolePolicies")
async def list_role_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_inline(call, "role", params)


# -- permissions boundaries -------------------------------------------------------------------


async def _put_boundary(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name, arn = params[f"{label}Name"], params["PermissionsBoundary"]
    _require(call, f"iam:Put{label}PermissionsBoundary", kind, name, _boundary_context(arn))
    with call.store.transaction() as c:
        row = _get(call, kind, name, c)
        _check_boundary(call, arn, c)
        call.store.update(
            t.iam_entities,
            {"kind": kind, "name": name},
            {"data": {**row["data"], "boundary": arn}},
            c,
        )
    call.state.iam_changed()
    return {}


async def _delete_boundary(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    _require(call, f"iam:Delete{label}PermissionsBoundary", kind, name)
    with call.store.transaction() as c:
        row = _get(call, kind, name, c)
        data = {k: v for k, v in row["data"].items() if k != "boundary"}
        call.store.update(t.iam_entities, {"kind": kind, "name": name}, {"data": data}, c)
    call.state.iam_changed()
    return {}


@operation("iam", "PutUserPermissionsBoundary")
async def put_user_permissions_boundary(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _put_boundary(call, "user", params)


@operation("iam", "PutRolePermissionsBoundary")
async def put_role_permissions_boundary(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _put_boundary(call, "role", params)


@operation("iam", "DeleteUserPermissionsBoundary")
async def delete_user_permissions_boundary(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _delete_boundary(call, "user", params)


@operation("iam", "DeleteRolePermissionsBoundary")
async def delete_role_permissions_boundary(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _delete_boundary(call, "role", params)


# -- tags -------------------------------------------------------------------------------------


async def _tag(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    tags = _check_tags(params["Tags"])
    _require(call, f"iam:Tag{label}", kind, name, _tag_context(tags))
    with call.store.transaction() as c:
        row = _get(call, kind, name, c)
        merged = _merge_tags(kind, row["data"].get("tags", []), tags)
        call.store.update(
            t.iam_entities,
            {"kind": kind, "name": name},
            {"data": {**row["data"], "tags": merged}},
            c,
        )
    call.state.iam_changed()
    return {}


async def _untag(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    name, keys = params[f"{label}Name"], list(params["TagKeys"])
    _require(call, f"iam:Untag{label}", kind, name, {"aws:TagKeys": keys})
    drop = {k.lower() for k in keys}
    with call.store.transaction() as c:
        row = _get(call, kind, name, c)
        kept = [x for x in row["data"].get("tags", []) if x["Key"].lower() not in drop]
        call.store.update(
            t.iam_entities, {"kind": kind, "name": name}, {"data": {**row["data"], "tags": kept}}, c
        )
    call.state.iam_changed()
    return {}


async def _list_tags(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = _QUOTA_NAME[kind]
    row = _require(call, f"iam:List{label}Tags", kind, params[f"{label}Name"])
    page, meta = _page(list(row["data"].get("tags", [])), params)
    return {"Tags": page, **meta}


@operation("iam", "TagUser")
async def tag_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _tag(call, "user", params)


@operation("iam", "TagRole")
async def tag_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _tag(call, "role", params)


@operation("iam", "UntagUser")
async def untag_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _untag(call, "user", params)


@operation("iam", "UntagRole")
async def untag_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _untag(call, "role", params)


@operation("iam", "ListUserTags")
async def list_user_tags(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_tags(call, "user", params)


@operation("iam", "ListRoleTags")
async def list_role_tags(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_tags(call, "role", params)


# -- account authorization details ------------------------------------------------------------


def _inline_list(call: Call, kind: str, name: str) -> list[dict[str, str]]:
    return [
        {"PolicyName": n, "PolicyDocument": _encoded(doc)}
        for n, doc in sorted(iamdata.inline_documents(call.store, kind, name))
    ]


def _attached_list(call: Call, kind: str, name: str) -> list[dict[str, str]]:
    return [
        {"PolicyName": arn.rsplit("/", 1)[-1], "PolicyArn": arn}
        for arn in sorted(iamdata.attached_arns(call.store, kind, name))
    ]


def _detail(call: Call, row: Record) -> dict[str, Any]:
    kind, name = row["kind"], row["name"]
    out = _entity_shape(row)
    out.pop("RoleLastUsed", None)
    out.pop("MaxSessionDuration", None)
    out.pop("Description", None)
    out[f"{_QUOTA_NAME[kind]}PolicyList"] = _inline_list(call, kind, name)
    out["AttachedManagedPolicies"] = _attached_list(call, kind, name)
    if kind == "user":
        out["GroupList"] = sorted(iamdata.groups_of(call.store, name))
    if kind == "role":
        out["InstanceProfileList"] = []
    return out


@operation("iam", "GetAccountAuthorizationDetails")
async def get_account_authorization_details(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("iam:GetAccountAuthorizationDetails", "*")
    wanted = set(
        params.get("Filter") or ("User", "Role", "Group", "LocalManagedPolicy", "AWSManagedPolicy")
    )
    items: list[tuple[str, Record]] = []
    for kind, label in (("user", "User"), ("group", "Group"), ("role", "Role")):
        if label in wanted:
            items += [
                (kind, r)
                for r in call.store.select(
                    t.iam_entities, kind=kind, order_by=[t.iam_entities.c.name]
                )
            ]
    usage = _boundary_usage(call)
    attached = Counter(r["policy_arn"] for r in call.store.select(t.iam_attachments))
    policies: list[Record] = []
    if "LocalManagedPolicy" in wanted:
        policies += _local_policies(call)
    if "AWSManagedPolicy" in wanted:
        for arn in sorted(set(attached) | set(usage)):
            aws = awsmanaged.get(arn)
            if aws is not None:
                policies.append(_aws_record(aws))
    policies.sort(key=lambda r: (r["name"].lower(), r["arn"]))
    items += [("policy", pol) for pol in policies]
    page, meta = _page(items, params)
    out: dict[str, Any] = {
        "UserDetailList": [],
        "GroupDetailList": [],
        "RoleDetailList": [],
        "Policies": [],
        **meta,
    }
    for kind, row in page:
        if kind == "policy":
            shape = _policy_shape(call, row, usage)
            shape.pop("Tags", None)
            versions = (
                call.store.select(t.iam_policy_versions, arn=row["arn"])
                if _local(row["arn"])
                else _versions(row["arn"])
            )
            shape["PolicyVersionList"] = [
                _version_shape(v, row["default_version"]) for v in versions
            ]
            out["Policies"].append(shape)
        else:
            out[f"{_QUOTA_NAME[kind]}DetailList"].append(_detail(call, row))
    return out


# -- the policy simulator ---------------------------------------------------------------------


def _context_entries(params: Mapping[str, Any]) -> list[ContextEntry]:
    return [ContextEntry.from_dict(e) for e in params.get("ContextEntries") or []]


def _simulate(inp: SimulationInput) -> dict[str, Any]:
    try:
        return simulate_custom_policy(inp)
    except PolicyError as exc:
        raise _from_policy_error(exc) from exc
    except (ValueError, KeyError) as exc:
        raise ServiceError("InvalidInput", str(exc), 400) from exc


def _paged_results(result: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    page, meta = _page(result["EvaluationResults"], params)
    return {"EvaluationResults": page, **meta}


@operation("iam", "SimulateCustomPolicy")
async def simulate_custom(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("iam:SimulateCustomPolicy", "*")
    inp = SimulationInput(
        policy_input_list=list(params["PolicyInputList"]),
        action_names=list(params["ActionNames"]),
        resource_arns=list(params.get("ResourceArns") or ["*"]),
        permissions_boundary_policy_input_list=list(
            params.get("PermissionsBoundaryPolicyInputList") or []
        ),
        resource_policy=params.get("ResourcePolicy"),
        resource_owner=params.get("ResourceOwner"),
        caller_arn=params.get("CallerArn"),
        context_entries=_context_entries(params),
        resource_specific=bool(params.get("ResourceArns")),
    )
    return _paged_results(await run_cpu(partial(_simulate, inp)), params)


def _source_entity(call: Call, arn: str) -> Record:
    prefix = f"arn:aws:iam::{call.account}:"
    kind = arn[len(prefix) :].split("/", 1)[0] if arn.startswith(prefix) else ""
    if kind not in ("user", "group", "role"):
        raise ServiceError("InvalidInput", f"Invalid ARN: {arn}.", 400)
    name = arn.rsplit("/", 1)[-1]
    row = iamdata.get_entity(call.store, kind, name)
    if row is None or row["arn"] != arn:
        raise _no_entity(kind, name)
    return row


def _excluded(doc: Mapping[str, Any], exclusions: Iterable[Mapping[str, Any]]) -> bool:
    for ex in exclusions:
        if doc["arn"] is not None and ex.get("PolicyArn") == doc["arn"]:
            return True
        ident = ex.get("InlinePolicyIdentifier")
        if doc["arn"] is None and ident:
            owner = f"{ident['AttachmentType'].lower()}/{ident['AttachmentName']}"
            if doc["name"] == f"{owner}/{ident['PolicyName']}":
                return True
    return False


@operation("iam", "SimulatePrincipalPolicy")
async def simulate_principal(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    source = params["PolicySourceArn"]
    call.authorize("iam:SimulatePrincipalPolicy", source)
    row = _source_entity(call, source)
    exclusions = params.get("PolicyExclusionList") or []
    docs = [
        d
        for d in iamdata.identity_documents(call.store, row["kind"], row["name"])
        if not _excluded(d, exclusions)
    ]
    ids = [d["name"].replace("/", "_") if d["arn"] is None else d["name"] for d in docs]
    texts = [str(d["text"]) for d in docs]
    extra = list(params.get("PolicyInputList") or [])
    ids += [f"PolicyInputList.{i}" for i in range(1, len(extra) + 1)]
    boundaries = list(params.get("PermissionsBoundaryPolicyInputList") or [])
    barn = row["data"].get("boundary")
    if (
        not boundaries
        and barn
        and not any(e.get("PolicyType") == "permission-boundary" for e in exclusions)
    ):
        text = iamdata.policy_document(call.store, barn)
        boundaries = [text] if text else []
    entries = _context_entries(params)
    given = {e.name.lower() for e in entries}
    for k, v in iamdata.tags_dict(row).items():
        if f"aws:principaltag/{k}".lower() not in given:
            entries.append(ContextEntry(f"aws:PrincipalTag/{k}", [v]))
    caller = params.get("CallerArn") or (source if row["kind"] != "group" else None)
    inp = SimulationInput(
        policy_input_list=texts + extra,
        action_names=list(params["ActionNames"]),
        resource_arns=list(params.get("ResourceArns") or ["*"]),
        permissions_boundary_policy_input_list=boundaries,
        resource_policy=params.get("ResourcePolicy"),
        resource_owner=params.get("ResourceOwner"),
        caller_arn=caller,
        context_entries=entries,
        resource_specific=bool(params.get("ResourceArns")),
    )
    result = await run_cpu(partial(_simulate, inp))
    for r in result["EvaluationResults"]:
        statements = list(r["MatchedStatements"])
        for specific in r.get("ResourceSpecificResults", []):
            statements += specific["MatchedStatements"]
        for m in statements:
            sid = str(m.get("SourcePolicyId", ""))
            if sid.startswith("PolicyInputList."):
                m["SourcePolicyId"] = ids[int(sid.rsplit(".", 1)[1]) - 1]
    return _paged_results(result, params)
