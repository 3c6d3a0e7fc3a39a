"""Permissions boundaries of users and roles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    QUOTA_NAME,
    boundary_context,
    check_boundary,
    get_entity_row,
    require,
)
from hatchway.server.store import schema as t


async def _put_boundary(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name, arn = params[f"{label}Name"], params["PermissionsBoundary"]
    require(call, f"iam:Put{label}PermissionsBoundary", kind, name, boundary_context(arn))
    with call.store.transaction() as c:
        row = get_entity_row(call, kind, name, c)
        check_boundary(call, arn, c)
        call.store.update(
            t.iam_entities,
            {"kind": kind, "name": name},
            {"data": {**row["data"], "boundary": arn}},
            c,
        )
    call.state.iam_changed()
    return {}


async def _delete_boundary(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    require(call, f"iam:Delete{label}PermissionsBoundary", kind, name)
    with call.store.transaction() as c:
        row = get_entity_row(call, kind, name, c)
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
