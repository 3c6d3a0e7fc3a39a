"""Managed policies attached to users, groups and roles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatchway.iam.validate import (
    MANAGED_POLICIES_PER_PRINCIPAL,
)
from hatchway.server.accounts import awsmanaged, iamdata
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    QUOTA_NAME,
    get_entity_row,
    is_local_policy,
    limit_exceeded,
    managed_policy,
    not_attachable,
    page_of,
    path_ok,
    policy_not_found,
    require,
)
from hatchway.server.store import schema as t


async def _attach(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name, arn = params[f"{label}Name"], params["PolicyArn"]
    require(call, f"iam:Attach{label}Policy", kind, name, {"iam:PolicyARN": arn})
    with call.store.transaction() as c:
        get_entity_row(call, kind, name, c)
        pol = managed_policy(call, arn, c)
        if pol is None:
            raise not_attachable(arn)
        if not is_local_policy(arn) and pol["path"].startswith(awsmanaged.SERVICE_LINKED_PATH):
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
            raise limit_exceeded(
                f"Cannot exceed quota for PoliciesPer{label}: {MANAGED_POLICIES_PER_PRINCIPAL}"
            )
        call.store.insert(t.iam_attachments, {"kind": kind, "name": name, "policy_arn": arn}, c)
    call.state.iam_changed()
    return {}


async def _detach(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name, arn = params[f"{label}Name"], params["PolicyArn"]
    require(call, f"iam:Detach{label}Policy", kind, name, {"iam:PolicyARN": arn})
    with call.store.transaction() as c:
        get_entity_row(call, kind, name, c)
        if not call.store.delete(t.iam_attachments, c, kind=kind, name=name, policy_arn=arn):
            raise policy_not_found(arn)
    call.state.iam_changed()
    return {}


async def _list_attached(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    require(call, f"iam:ListAttached{label}Policies", kind, name)
    prefix = params.get("PathPrefix")
    rows = []
    for arn in sorted(iamdata.attached_arns(call.store, kind, name)):
        pol = managed_policy(call, arn)
        if pol is not None and path_ok(pol["path"], prefix):
            rows.append({"PolicyName": pol["name"], "PolicyArn": arn})
    page, meta = page_of(rows, params)
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
