"""IAM users, groups and roles: create, get, list, delete; a role's trust policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func

from hatchway.server.accounts import iamdata
from hatchway.server.base import crypto
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    DEFAULT_SESSION_DURATION,
    ENTITY_KIND,
    QUOTA_NAME,
    boundary_context,
    check_boundary,
    check_principals,
    check_tags,
    delete_conflict,
    entity_shape,
    get_entity_row,
    merge_tags,
    page_of,
    path_ok,
    require,
    self_user,
    tag_context,
    utc_now,
    validate_trust,
)
from hatchway.server.ops.sessions import end_role_sessions
from hatchway.server.store import Conflict, Record
from hatchway.server.store import schema as t


def _insert_entity(
    call: Call, kind: str, name: str, path: str, data: dict[str, Any], conn: Connection
) -> Record:
    label = QUOTA_NAME[kind]
    clash = call.store.select(
        t.iam_entities, func.lower(t.iam_entities.c.name) == name.lower(), conn=conn, kind=kind
    )
    if clash:
        raise ServiceError("EntityAlreadyExists", f"{label} with name {name} already exists.", 409)
    row: Record = {
        "kind": kind,
        "name": name,
        "entity_id": crypto.unique_id(ENTITY_KIND[kind][3]),
        "arn": iamdata.entity_arn(call.account, kind, path, name),
        "path": path,
        "created": utc_now(),
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
        if path_ok(r["path"], prefix)
    ]
    page, meta = page_of(rows, params)
    return {out_key: [entity_shape(r, full=False) for r in page], **meta}


@operation("iam", "CreateUser")
async def create_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["UserName"], params.get("Path") or "/"
    tags = check_tags(params.get("Tags"))
    boundary = params.get("PermissionsBoundary")
    arn = iamdata.entity_arn(call.account, "user", path, name)
    call.authorize("iam:CreateUser", arn, {**tag_context(tags), **boundary_context(boundary)})
    if tags:
        merge_tags("user", [], tags)
    with call.store.transaction() as c:
        check_boundary(call, boundary, c)
        data: dict[str, Any] = {"tags": tags}
        if boundary:
            data["boundary"] = boundary
        row = _insert_entity(call, "user", name, path, data, c)
    call.state.iam_changed()
    return {"User": entity_shape(row)}


@operation("iam", "GetUser")
async def get_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = self_user(call, params)
    return {"User": entity_shape(require(call, "iam:GetUser", "user", name))}


@operation("iam", "ListUsers")
async def list_users(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _list_entities(call, "user", "iam:ListUsers", params, "Users")


@operation("iam", "DeleteUser")
async def delete_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["UserName"]
    require(call, "iam:DeleteUser", "user", name)
    with call.store.transaction() as c:
        get_entity_row(call, "user", name, c)
        if call.store.count(t.access_keys, c, owner_kind="user", owner_name=name):
            raise delete_conflict("Cannot delete entity, must delete access keys first.")
        if call.store.count(t.iam_inline, c, kind="user", name=name):
            raise delete_conflict("Cannot delete entity, must delete policies first.")
        if call.store.count(t.iam_attachments, c, kind="user", name=name):
            raise delete_conflict("Cannot delete entity, must detach all policies first.")
        if call.store.count(t.iam_group_members, c, user_name=name):
            raise delete_conflict("Cannot delete entity, must remove users from group first.")
        devices = call.store.select(t.iam_entities, conn=c, kind="mfa")
        if any(d["data"].get("user") == name for d in devices):
            # Else a user created later under the same name would inherit the device.
            raise delete_conflict("Cannot delete entity, must delete MFA device first.")
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
    return {"Group": entity_shape(row)}


@operation("iam", "GetGroup")
async def get_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["GroupName"]
    group = require(call, "iam:GetGroup", "group", name)
    members = [
        r["user_name"]
        for r in call.store.select(
            t.iam_group_members, group_name=name, order_by=[t.iam_group_members.c.user_name]
        )
    ]
    users = [u for u in (iamdata.get_entity(call.store, "user", m) for m in members) if u]
    page, meta = page_of(users, params)
    return {
        "Group": entity_shape(group),
        "Users": [entity_shape(u, full=False) for u in page],
        **meta,
    }


@operation("iam", "ListGroups")
async def list_groups(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _list_entities(call, "group", "iam:ListGroups", params, "Groups")


@operation("iam", "DeleteGroup")
async def delete_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["GroupName"]
    require(call, "iam:DeleteGroup", "group", name)
    with call.store.transaction() as c:
        get_entity_row(call, "group", name, c)
        if call.store.count(t.iam_group_members, c, group_name=name):
            raise delete_conflict("Cannot delete entity, must remove users from group first.")
        if call.store.count(t.iam_inline, c, kind="group", name=name):
            raise delete_conflict("Cannot delete entity, must delete policies first.")
        if call.store.count(t.iam_attachments, c, kind="group", name=name):
            raise delete_conflict("Cannot delete entity, must detach all policies first.")
        call.store.delete(t.iam_entities, c, kind="group", name=name)
    call.state.iam_changed()
    return {}


@operation("iam", "CreateRole")
async def create_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["RoleName"], params.get("Path") or "/"
    tags = check_tags(params.get("Tags"))
    boundary = params.get("PermissionsBoundary")
    arn = iamdata.entity_arn(call.account, "role", path, name)
    call.authorize("iam:CreateRole", arn, {**tag_context(tags), **boundary_context(boundary)})
    trust = params["AssumeRolePolicyDocument"]
    validate_trust(trust)
    check_principals(call, trust)
    if tags:
        merge_tags("role", [], tags)
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
        check_boundary(call, boundary, c)
        row = _insert_entity(call, "role", name, path, data, c)
    call.state.iam_changed()
    return {"Role": entity_shape(row)}


@operation("iam", "GetRole")
async def get_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"Role": entity_shape(require(call, "iam:GetRole", "role", params["RoleName"]))}


@operation("iam", "ListRoles")
async def list_roles(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _list_entities(call, "role", "iam:ListRoles", params, "Roles")


@operation("iam", "DeleteRole")
async def delete_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["RoleName"]
    require(call, "iam:DeleteRole", "role", name)
    with call.store.transaction() as c:
        row = get_entity_row(call, "role", name, c)
        if call.store.count(t.iam_attachments, c, kind="role", name=name):
            raise delete_conflict("Cannot delete entity, must detach all policies first.")
        if call.store.count(t.iam_inline, c, kind="role", name=name):
            raise delete_conflict("Cannot delete entity, must delete policies first.")
        call.store.delete(t.iam_entities, c, kind="role", name=name)
    call.state.iam_changed()
    # Every credential issued for the role names its unique id and is refused from now on
    # (identity.py); the Session Manager sessions open under it end now.
    await end_role_sessions(call.state, row["entity_id"], name)
    return {}


@operation("iam", "UpdateAssumeRolePolicy")
async def update_assume_role_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["RoleName"]
    require(call, "iam:UpdateAssumeRolePolicy", "role", name)
    text = params["PolicyDocument"]
    validate_trust(text)
    check_principals(call, text)
    with call.store.transaction() as c:
        row = get_entity_row(call, "role", name, c)
        call.store.update(
            t.iam_entities,
            {"kind": "role", "name": name},
            {"data": {**row["data"], "trust": text}},
            c,
        )
    call.state.iam_changed()
    return {}
