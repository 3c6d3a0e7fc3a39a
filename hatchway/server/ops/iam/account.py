"""IAM operations about the account and its entities as a whole: UpdateRole,
ListEntitiesForPolicy and GetAccountSummary (the ``SummaryMap`` keys AWS returns)."""

from __future__ import annotations

from typing import Any

from hatchway.iam.validate import (
    GROUP_INLINE_POLICY_SIZE,
    MANAGED_POLICIES_PER_PRINCIPAL,
    MANAGED_POLICY_SIZE,
    MANAGED_POLICY_VERSIONS,
    ROLE_INLINE_POLICY_SIZE,
    TRUST_POLICY_SIZE,
    USER_INLINE_POLICY_SIZE,
)
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam import common
from hatchway.server.ops.iam.mfa import KIND as MFA_KIND
from hatchway.server.ops.iam.policies import require_policy
from hatchway.server.store import Record
from hatchway.server.store import schema as t


@operation("iam", "UpdateRole")
async def update_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """A role's description and maximum session duration (3600–43200 s, the model's range);
    members left out keep their value."""
    name = params["RoleName"]
    common.require(call, "iam:UpdateRole", "role", name)
    with call.store.transaction() as c:
        row = common.get_entity_row(call, "role", name, c)
        data = dict(row["data"])
        if "Description" in params:
            if params["Description"]:
                data["description"] = params["Description"]
            else:
                data.pop("description", None)
        if params.get("MaxSessionDuration") is not None:
            data["max_session_duration"] = int(params["MaxSessionDuration"])
        call.store.update(t.iam_entities, {"kind": "role", "name": name}, {"data": data}, c)
    call.state.iam_changed()
    return {}


_ENTITY_KEYS = {
    "user": ("PolicyUsers", "UserName", "UserId"),
    "group": ("PolicyGroups", "GroupName", "GroupId"),
    "role": ("PolicyRoles", "RoleName", "RoleId"),
}


@operation("iam", "ListEntitiesForPolicy")
async def list_entities_for_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """The users, groups and roles a managed policy is attached to (``PermissionsPolicy``) or
    is the permissions boundary of (``PermissionsBoundary``); both unless
    ``PolicyUsageFilter`` says which."""
    arn = params["PolicyArn"]
    require_policy(call, "iam:ListEntitiesForPolicy", arn)
    wanted = params.get("EntityFilter")
    kinds = {"User": ["user"], "Group": ["group"], "Role": ["role"]}.get(
        str(wanted), [] if wanted else ["user", "group", "role"]
    )
    usage = params.get("PolicyUsageFilter")
    prefix = params.get("PathPrefix")
    attached = {
        (r["kind"], r["name"]) for r in call.store.select(t.iam_attachments, policy_arn=arn)
    }
    rows: list[Record] = []
    for kind in ("group", "role", "user"):
        if kind not in kinds:
            continue
        for row in call.store.select(t.iam_entities, kind=kind, order_by=[t.iam_entities.c.name]):
            if not common.path_ok(row["path"], prefix):
                continue
            as_policy = (kind, row["name"]) in attached
            as_boundary = row["data"].get("boundary") == arn
            if (
                (usage == "PermissionsPolicy" and as_policy)
                or (usage == "PermissionsBoundary" and as_boundary)
                or (not usage and (as_policy or as_boundary))
            ):
                rows.append(row)
    page, meta = common.page_of(rows, params)
    out: dict[str, Any] = {"PolicyGroups": [], "PolicyUsers": [], "PolicyRoles": [], **meta}
    for row in page:
        key, name_key, id_key = _ENTITY_KEYS[row["kind"]]
        out[key].append({name_key: row["name"], id_key: row["entity_id"]})
    return out


@operation("iam", "GetAccountSummary")
async def get_account_summary(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """Usage and quotas, with the keys of AWS's ``SummaryMap`` (its API reference's example);
    Hatchway has no root user, server certificates, instance profiles or identity providers,
    so those count 0."""
    call.authorize("iam:GetAccountSummary", "*")
    count = {k: call.store.count(t.iam_entities, kind=k) for k in ("user", "group", "role")}
    local = [p for p in call.store.select(t.iam_policies) if common.is_local_policy(p["arn"])]
    versions = sum(call.store.count(t.iam_policy_versions, arn=p["arn"]) for p in local)
    devices = call.store.select(t.iam_entities, kind=MFA_KIND)
    in_use = sum(1 for d in devices if d["data"].get("user"))
    summary = {
        "Users": count["user"],
        "UsersQuota": 5000,
        "Groups": count["group"],
        "GroupsQuota": 300,
        "Roles": count["role"],
        "RolesQuota": 1000,
        "Policies": len(local),
        "PoliciesQuota": 1500,
        "PolicySizeQuota": MANAGED_POLICY_SIZE,
        "PolicyVersionsInUse": versions,
        "PolicyVersionsInUseQuota": 10000,
        "VersionsPerPolicyQuota": MANAGED_POLICY_VERSIONS,
        "UserPolicySizeQuota": USER_INLINE_POLICY_SIZE,
        "GroupPolicySizeQuota": GROUP_INLINE_POLICY_SIZE,
        "RolePolicySizeQuota": ROLE_INLINE_POLICY_SIZE,
        "AssumeRolePolicySizeQuota": TRUST_POLICY_SIZE,
        "GroupsPerUserQuota": common.MAX_GROUPS_PER_USER,
        "AccessKeysPerUserQuota": common.MAX_ACCESS_KEYS,
        "SigningCertificatesPerUserQuota": 2,
        "AttachedPoliciesPerUserQuota": MANAGED_POLICIES_PER_PRINCIPAL,
        "AttachedPoliciesPerGroupQuota": MANAGED_POLICIES_PER_PRINCIPAL,
        "AttachedPoliciesPerRoleQuota": MANAGED_POLICIES_PER_PRINCIPAL,
        "MFADevices": len(devices),
        "MFADevicesInUse": in_use,
        "AccountMFAEnabled": 0,
        "AccountAccessKeysPresent": 0,
        "AccountSigningCertificatesPresent": 0,
        "ServerCertificates": 0,
        "ServerCertificatesQuota": 20,
        "InstanceProfiles": 0,
        "InstanceProfilesQuota": 1000,
        "Providers": 0,
        "GlobalEndpointTokenVersion": 1,
    }
    return {"SummaryMap": summary}
