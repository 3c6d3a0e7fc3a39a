"""Inline policies of users, groups and roles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatchway.iam import PolicyKind
from hatchway.server.accounts import iamdata
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    INLINE_LIMIT,
    QUOTA_NAME,
    encoded,
    get_entity_row,
    limit_exceeded,
    page_of,
    require,
    text_size,
    validate,
)
from hatchway.server.store import schema as t


def _no_inline(kind: str, policy: str) -> ServiceError:
    return ServiceError(
        "NoSuchEntity", f"The {kind} policy with name {policy} cannot be found.", 404
    )


async def _put_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name, pname, text = params[f"{label}Name"], params["PolicyName"], params["PolicyDocument"]
    require(call, f"iam:Put{label}Policy", kind, name)
    validate(text, PolicyKind.IDENTITY)
    limit = INLINE_LIMIT[kind]
    with call.store.transaction() as c:
        get_entity_row(call, kind, name, c)
        others = [
            r
            for r in call.store.select(t.iam_inline, conn=c, kind=kind, name=name)
            if r["policy_name"] != pname
        ]
        if text_size(text) + sum(text_size(r["document"]) for r in others) > limit:
            raise limit_exceeded(f"Maximum policy size of {limit} bytes exceeded for {kind} {name}")
        keys = {"kind": kind, "name": name, "policy_name": pname}
        if call.store.get(t.iam_inline, c, **keys) is None:
            call.store.insert(t.iam_inline, {**keys, "document": text}, c)
        else:
            call.store.update(t.iam_inline, keys, {"document": text}, c)
    call.state.iam_changed()
    return {}


async def _get_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name, pname = params[f"{label}Name"], params["PolicyName"]
    require(call, f"iam:Get{label}Policy", kind, name)
    row = call.store.get(t.iam_inline, kind=kind, name=name, policy_name=pname)
    if row is None:
        raise _no_inline(kind, pname)
    return {f"{label}Name": name, "PolicyName": pname, "PolicyDocument": encoded(row["document"])}


async def _delete_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name, pname = params[f"{label}Name"], params["PolicyName"]
    require(call, f"iam:Delete{label}Policy", kind, name)
    if not call.store.delete(t.iam_inline, kind=kind, name=name, policy_name=pname):
        raise _no_inline(kind, pname)
    call.state.iam_changed()
    return {}


async def _list_inline(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    require(call, f"iam:List{label}Policies", kind, name)
    names = sorted(n for n, _ in iamdata.inline_documents(call.store, kind, name))
    page, meta = page_of(names, params)
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
