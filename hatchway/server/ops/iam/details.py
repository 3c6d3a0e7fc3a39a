"""GetAccountAuthorizationDetails: every entity and policy of the account at once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hatchway.server.accounts import awsmanaged, iamdata
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    QUOTA_NAME,
    aws_record,
    boundary_usage,
    encoded,
    entity_shape,
    is_local_policy,
    local_policies,
    page_of,
    policy_shape,
    policy_versions,
    version_shape,
)
from hatchway.server.store import Record
from hatchway.server.store import schema as t


def _inline_list(call: Call, kind: str, name: str) -> list[dict[str, str]]:
    return [
        {"PolicyName": n, "PolicyDocument": encoded(doc)}
        for n, doc in sorted(iamdata.inline_documents(call.store, kind, name))
    ]


def _attached_list(call: Call, kind: str, name: str) -> list[dict[str, str]]:
    return [
        {"PolicyName": arn.rsplit("/", 1)[-1], "PolicyArn": arn}
        for arn in sorted(iamdata.attached_arns(call.store, kind, name))
    ]


def _detail(call: Call, row: Record) -> dict[str, Any]:
    kind, name = row["kind"], row["name"]
    out = entity_shape(row)
    out.pop("RoleLastUsed", None)
    out.pop("MaxSessionDuration", None)
    out.pop("Description", None)
    out[f"{QUOTA_NAME[kind]}PolicyList"] = _inline_list(call, kind, name)
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
    usage = boundary_usage(call)
    attached = Counter(r["policy_arn"] for r in call.store.select(t.iam_attachments))
    policies: list[Record] = []
    if "LocalManagedPolicy" in wanted:
        policies += local_policies(call)
    if "AWSManagedPolicy" in wanted:
        for arn in sorted(set(attached) | set(usage)):
            aws = awsmanaged.get(arn)
            if aws is not None:
                policies.append(aws_record(aws))
    policies.sort(key=lambda r: (r["name"].lower(), r["arn"]))
    items += [("policy", pol) for pol in policies]
    page, meta = page_of(items, params)
    out: dict[str, Any] = {
        "UserDetailList": [],
        "GroupDetailList": [],
        "RoleDetailList": [],
        "Policies": [],
        **meta,
    }
    for kind, row in page:
        if kind == "policy":
            shape = policy_shape(call, row, usage)
            shape.pop("Tags", None)
            versions = (
                call.store.select(t.iam_policy_versions, arn=row["arn"])
                if is_local_policy(row["arn"])
                else policy_versions(row["arn"])
            )
            shape["PolicyVersionList"] = [
                version_shape(v, row["default_version"]) for v in versions
            ]
            out["Policies"].append(shape)
        else:
            out[f"{QUOTA_NAME[kind]}DetailList"].append(_detail(call, row))
    return out
