"""Customer managed policies and their versions (AWS managed ones are read-only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func

from hatchway.iam import PolicyKind
from hatchway.iam.validate import (
    MANAGED_POLICY_SIZE,
    MANAGED_POLICY_VERSIONS,
)
from hatchway.server.accounts import awsmanaged
from hatchway.server.base import crypto
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    MAX_TAGS,
    aws_record,
    boundary_usage,
    check_tags,
    delete_conflict,
    is_local_policy,
    limit_exceeded,
    local_policies,
    managed_policy,
    page_of,
    path_ok,
    policy_not_found,
    policy_shape,
    policy_versions,
    tag_context,
    utc_now,
    validate,
    version_shape,
)
from hatchway.server.store import Conflict, Record
from hatchway.server.store import schema as t


def require_policy(
    call: Call, action: str, arn: str, context: Mapping[str, object] | None = None
) -> Record:
    call.authorize(action, arn, context)
    row = managed_policy(call, arn)
    if row is None:
        raise policy_not_found(arn)
    return row


def _aws_owned(verb: str) -> ServiceError:
    return ServiceError("AccessDenied", f"Cannot {verb} policies outside your own account.", 403)


@operation("iam", "CreatePolicy")
async def create_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["PolicyName"], params.get("Path") or "/"
    arn = f"arn:aws:iam::{call.account}:policy{path}{name}"
    tags = check_tags(params.get("Tags"))
    call.authorize("iam:CreatePolicy", arn, tag_context(tags))
    text = params["PolicyDocument"]
    validate(text, PolicyKind.IDENTITY, managed=True, size_limit=MANAGED_POLICY_SIZE)
    if len(tags) > MAX_TAGS:
        raise limit_exceeded(f"Cannot exceed quota for TagsPerPolicy: {MAX_TAGS}")
    now = utc_now()
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
        if any(is_local_policy(r["arn"]) for r in same):
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
    return {"Policy": policy_shape(call, row, {})}


@operation("iam", "GetPolicy")
async def get_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = require_policy(call, "iam:GetPolicy", params["PolicyArn"])
    return {"Policy": policy_shape(call, row, boundary_usage(call))}


@operation("iam", "ListPolicies")
async def list_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    prefix = params.get("PathPrefix")
    call.authorize("iam:ListPolicies", f"arn:aws:iam::{call.account}:policy{prefix or '/'}")
    scope = params.get("Scope") or "All"
    usage = boundary_usage(call)
    attached = Counter(r["policy_arn"] for r in call.store.select(t.iam_attachments))
    usage_filter = params.get("PolicyUsageFilter")
    candidates: list[Record] = []
    if scope != "AWS":
        candidates += local_policies(call)
    if scope != "Local":
        candidates += [aws_record(p) for p in awsmanaged.all_policies()]
    candidates.sort(key=lambda r: (r["name"].lower(), r["arn"]))
    rows = []
    for r in candidates:
        if not path_ok(r["path"], prefix):
            continue
        if params.get("OnlyAttached") and not (attached[r["arn"]] or usage[r["arn"]]):
            continue
        if usage_filter == "PermissionsPolicy" and not attached[r["arn"]]:
            continue
        if usage_filter == "PermissionsBoundary" and not usage[r["arn"]]:
            continue
        rows.append(r)
    page, meta = page_of(rows, params)
    return {
        "Policies": [policy_shape(call, r, usage, full=False, attached=attached) for r in page],
        **meta,
    }


@operation("iam", "DeletePolicy")
async def delete_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["PolicyArn"]
    require_policy(call, "iam:DeletePolicy", arn)
    if not is_local_policy(arn):
        raise _aws_owned("delete")
    with call.store.transaction() as c:
        if managed_policy(call, arn, c) is None:
            raise policy_not_found(arn)
        if call.store.count(t.iam_attachments, c, policy_arn=arn) or boundary_usage(call, c).get(
            arn
        ):
            raise delete_conflict("Cannot delete a policy attached to entities.")
        if call.store.count(t.iam_policy_versions, c, arn=arn) > 1:
            raise delete_conflict(
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
    require_policy(call, "iam:CreatePolicyVersion", arn)
    if not is_local_policy(arn):
        raise _aws_owned("modify")
    text = params["PolicyDocument"]
    validate(text, PolicyKind.IDENTITY, managed=True, size_limit=MANAGED_POLICY_SIZE)
    now = utc_now()
    with call.store.transaction() as c:
        pol = managed_policy(call, arn, c)
        if pol is None:
            raise policy_not_found(arn)
        if call.store.count(t.iam_policy_versions, c, arn=arn) >= MANAGED_POLICY_VERSIONS:
            raise limit_exceeded(
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
    pol = require_policy(call, "iam:GetPolicyVersion", arn)
    if is_local_policy(arn):
        row = call.store.get(t.iam_policy_versions, arn=arn, version_id=vid)
    else:
        row = next((v for v in policy_versions(arn) if v["version_id"] == vid), None)
        if row is not None and awsmanaged.document(arn, vid) is None:
            row = None
    if row is None:
        raise _no_version(arn, vid)
    return {"PolicyVersion": version_shape(row, pol["default_version"])}


@operation("iam", "ListPolicyVersions")
async def list_policy_versions(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["PolicyArn"]
    pol = require_policy(call, "iam:ListPolicyVersions", arn)
    rows = sorted(
        call.store.select(t.iam_policy_versions, arn=arn)
        if is_local_policy(arn)
        else policy_versions(arn),
        key=lambda r: int(r["version_id"][1:].split(".")[0]),
        reverse=True,
    )
    page, meta = page_of(rows, params)
    return {
        "Versions": [version_shape(r, pol["default_version"], document=False) for r in page],
        **meta,
    }


@operation("iam", "DeletePolicyVersion")
async def delete_policy_version(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn, vid = params["PolicyArn"], params["VersionId"]
    require_policy(call, "iam:DeletePolicyVersion", arn)
    if not is_local_policy(arn):
        raise _aws_owned("modify")
    with call.store.transaction() as c:
        pol = managed_policy(call, arn, c)
        if pol is None:
            raise policy_not_found(arn)
        if call.store.get(t.iam_policy_versions, c, arn=arn, version_id=vid) is None:
            raise _no_version(arn, vid)
        if pol["default_version"] == vid:
            raise delete_conflict("Cannot delete the default version of a policy.")
        call.store.delete(t.iam_policy_versions, c, arn=arn, version_id=vid)
    call.state.iam_changed()
    return {}


@operation("iam", "SetDefaultPolicyVersion")
async def set_default_policy_version(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn, vid = params["PolicyArn"], params["VersionId"]
    require_policy(call, "iam:SetDefaultPolicyVersion", arn)
    if not is_local_policy(arn):
        raise _aws_owned("modify")
    with call.store.transaction() as c:
        if call.store.get(t.iam_policy_versions, c, arn=arn, version_id=vid) is None:
            raise _no_version(arn, vid)
        call.store.update(
            t.iam_policies, {"arn": arn}, {"default_version": vid, "updated": utc_now()}, c
        )
    call.state.iam_changed()
    return {}
