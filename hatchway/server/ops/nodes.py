"""SSM managed nodes: activations, instance information, deregistration."""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hatchway.server.accounts import iamdata
from hatchway.server.base import crypto
from hatchway.server.base.errors import ServiceError
from hatchway.server.control.nodes import close_channel, is_ec2_style_id, ping_status
from hatchway.server.front.call import INPUT_EXTENSIONS, Call, operation
from hatchway.server.ops.paging import page
from hatchway.server.ops.sessions import ACTIVE, end_sessions
from hatchway.server.store import NodeRow
from hatchway.server.store import schema as t
from hatchway.ssm import target_arn

_CODE_ALPHABET = string.ascii_letters + string.digits


def _request_tag_context(tags: list[dict[str, str]] | None) -> dict[str, object]:
    ctx: dict[str, object] = {f"aws:RequestTag/{x['Key']}": x["Value"] for x in tags or []}
    if tags:
        ctx["aws:TagKeys"] = [x["Key"] for x in tags]
    return ctx


@operation("ssm", "CreateActivation")
async def create_activation(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:CreateActivation", "*", _request_tag_context(params.get("Tags")))
    # IamRole is a role name, or path/name for a role with a path (a full ARN names no
    # role): resolved to one existing role, which must trust ssm.amazonaws.com, and passed by
    # its exact ARN. Nodes registered with the activation act as that role (its unique id).
    given = params["IamRole"]
    role = iamdata.activation_role(call.store, call.account, given)
    if role is None or not iamdata.trusts_service(role, call.account):
        raise ServiceError(
            "ValidationException",
            "Nonexistent role or missing ssm service principal in trust policy",
        )
    call.authorize("iam:PassRole", role["arn"], {"iam:PassedToService": iamdata.SSM_SERVICE})
    now = datetime.now(UTC)
    expires = params.get("ExpirationDate") or now + timedelta(hours=24)
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires <= now or expires > now + timedelta(days=30):
        raise ServiceError(
            "InvalidParameters", "ExpirationDate must be in the future and at most 30 days away."
        )
    activation_id = str(uuid.uuid4())
    code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(20))
    call.store.insert(
        t.activations,
        {
            "activation_id": activation_id,
            "code_hash": crypto.digest(code),
            "created": now,
            "expires": expires,
            "registrations": 0,
            "data": {
                "iam_role": given,
                "role_name": role["name"],
                "role_id": role["entity_id"],
                "description": params.get("Description"),
                "default_instance_name": params.get("DefaultInstanceName"),
                "registration_limit": int(params.get("RegistrationLimit") or 1),
                "tags": params.get("Tags") or [],
            },
        },
    )
    return {"ActivationId": activation_id, "ActivationCode": code}


def _activation_out(row: dict[str, Any]) -> dict[str, Any]:
    d = row["data"]
    return {
        "ActivationId": row["activation_id"],
        "Description": d.get("description"),
        "DefaultInstanceName": d.get("default_instance_name"),
        "IamRole": d["iam_role"],
        "RegistrationLimit": d.get("registration_limit", 1),
        "RegistrationsCount": row["registrations"],
        "ExpirationDate": row["expires"],
        "Expired": row["expires"] <= datetime.now(UTC),
        "CreatedDate": row["created"],
        "Tags": d.get("tags") or [],
    }


@operation("ssm", "DescribeActivations")
async def describe_activations(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:DescribeActivations", "*")
    rows = [
        r
        for r in call.store.select(t.activations, order_by=[t.activations.c.created])
        if not r["data"].get("deleted")
    ]
    keys: dict[str, Callable[[dict[str, Any]], str]] = {
        "ActivationIds": lambda r: r["activation_id"],
        "DefaultInstanceName": lambda r: r["data"].get("default_instance_name") or "",
        "IamRole": lambda r: r["data"]["iam_role"],
    }
    for f in params.get("Filters") or []:
        get = keys[f["FilterKey"]]
        rows = [r for r in rows if get(r) in f.get("FilterValues", [])]
    chunk, nxt = page(rows, params, 50)
    return {"ActivationList": [_activation_out(r) for r in chunk], "NextToken": nxt}


@operation("ssm", "DeleteActivation")
async def delete_activation(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:DeleteActivation", "*")
    row = call.store.get(t.activations, activation_id=params["ActivationId"])
    if row is None or row["data"].get("deleted"):
        raise ServiceError(
            "InvalidActivationId", f"Activation ID {params['ActivationId']} is not valid."
        )
    call.store.delete(t.activations, activation_id=row["activation_id"])
    return {}


def _instance_out(call: Call, row: NodeRow) -> dict[str, Any]:
    d = row["data"]
    iid = row["instance_id"]
    managed = iid.startswith("mi-")
    # AWS reports ActivationId, RegistrationDate and Name for hybrid (mi-) nodes only.
    return {
        "InstanceId": iid,
        "PingStatus": ping_status(call.state, row),
        "LastPingDateTime": row["last_ping"],
        "AgentVersion": d.get("agent_version") or None,
        "IsLatestVersion": True,
        "PlatformType": "Linux",
        "PlatformName": d.get("platform_name") or None,
        "PlatformVersion": d.get("platform_version") or None,
        "ActivationId": row["activation_id"] if managed else None,
        "IamRole": d.get("iam_role"),
        "RegistrationDate": row["registered"] if managed else None,
        "ResourceType": "ManagedInstance" if managed else "EC2Instance",
        "Name": (d.get("name") or None) if managed else None,
        "IPAddress": d.get("ip_address") or None,
        "ComputerName": d.get("computer_name") or None,
        "SourceId": iid,
        "SourceType": "AWS::SSM::ManagedInstance" if managed else "AWS::EC2::Instance",
    }


_INFO_KEYS: dict[str, str] = {
    "InstanceIds": "InstanceId",
    "AgentVersion": "AgentVersion",
    "PingStatus": "PingStatus",
    "PlatformTypes": "PlatformType",
    "ActivationIds": "ActivationId",
    "IamRole": "IamRole",
    "ResourceType": "ResourceType",
    "SourceIds": "SourceId",
    "SourceTypes": "SourceType",
    "AssociationStatus": "AssociationStatus",
}

# Values AWS accepts for the filters with a fixed set (botocore's PingStatus enum).
_ENUM_FILTERS: dict[str, tuple[str, ...]] = {
    "PingStatus": ("Online", "ConnectionLost", "Inactive"),
}
INVALID_FILTER_VALUE = "The specified filter value isn't valid."


def _matches(item: dict[str, Any], tags: dict[str, str], key: str, values: list[str]) -> bool:
    if key.startswith("tag:"):
        return tags.get(key[4:]) in values
    if key == "tag-key":
        return any(v in tags for v in values)
    field = _INFO_KEYS.get(key)
    if field is None:
        raise ServiceError("InvalidInstanceInformationFilterValue", f"Invalid filter key {key}")
    value = item.get(field)
    return value is not None and str(value) in values


@operation("ssm", "DescribeInstanceInformation")
async def describe_instance_information(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:DescribeInstanceInformation", "*")
    if params.get("InstanceInformationFilterList") and params.get("Filters"):
        raise ServiceError(
            "InvalidFilterKey", "InstanceInformationFilterList and Filters cannot be used together."
        )
    rows = [
        r for r in call.store.nodes(order_by=[t.instances.c.registered]) if not r["deregistered"]
    ]
    items = [(_instance_out(call, r), iamdata.tags_dict(r)) for r in rows]
    filters = [(f["key"], f["valueSet"]) for f in params.get("InstanceInformationFilterList") or []]
    filters += [(f["Key"], f["Values"]) for f in params.get("Filters") or []]
    for key, values in filters:
        allowed = _ENUM_FILTERS.get(key)
        if allowed is not None and any(v not in allowed for v in values):
            raise ServiceError("InvalidInstanceInformationFilterValue", INVALID_FILTER_VALUE)
    for key, values in filters:
        items = [(i, tg) for i, tg in items if _matches(i, tg, key, values)]
    chunk, nxt = page([i for i, _ in items], params, 10)
    return {"InstanceInformationList": chunk, "NextToken": nxt}


DEREGISTERED_REASON = "The managed node {} was deregistered."


def _ec2_style_exempt(params: dict[str, Any]) -> dict[str, Any]:
    """AWS's model takes ``mi-`` ids only (botocore refuses ``i-`` ids client-side, by
    length); Hatchway's nodes registered with an ``i-`` id are deregistered by the same
    operation (``hatchway nodes deregister``), so such an id skips the model's rule."""
    iid = params.get("InstanceId")
    if isinstance(iid, str) and is_ec2_style_id(iid):
        return {**params, "InstanceId": "mi-00000000000000000"}  # the rest is still checked
    return params


INPUT_EXTENSIONS[("ssm", "DeregisterManagedInstance")] = _ec2_style_exempt


@operation("ssm", "DeregisterManagedInstance")
async def deregister_managed_instance(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """Revoke a node at once: its credentials stop working, its sessions end (Terminated, the
    reason in DescribeSessions' Details) and its control channel closes."""
    iid = params["InstanceId"]
    call.authorize(
        "ssm:DeregisterManagedInstance",
        target_arn(iid, call.region, call.account) if iid.startswith(("mi-", "i-")) else "*",
    )
    row = call.store.node(iid)
    if row is None or row["deregistered"]:
        raise ServiceError("InvalidInstanceId", "Instance Id is invalid")
    with call.store.transaction() as c:
        call.store.update(t.instances, {"instance_id": iid}, {"deregistered": True}, c)
        call.store.update(
            t.access_keys, {"owner_kind": "node", "owner_name": iid}, {"status": "Inactive"}, c
        )
        call.store.bump("nodes", c)  # the broker holding its channel closes it
    call.state.iam_changed()
    reason = DEREGISTERED_REASON.format(iid)
    live = call.store.sessions(t.sessions.c.target == iid, t.sessions.c.status.in_(ACTIVE))
    await end_sessions(call.state, live, reason)
    await close_channel(call.state, iid)
    return {}
