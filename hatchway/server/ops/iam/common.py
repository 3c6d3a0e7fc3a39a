"""What the IAM operations share: AWS's error texts, paging, tags, the authorization of an
operation on an entity, reading entities and policies, and the output shapes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection

from hatchway.iam import PolicyError, PolicyKind
from hatchway.iam.validate import (
    GROUP_INLINE_POLICY_SIZE,
    ROLE_INLINE_POLICY_SIZE,
    TRUST_POLICY_SIZE,
    USER_INLINE_POLICY_SIZE,
    validate_policy_text,
)
from hatchway.server.accounts import awsmanaged, iamdata
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call
from hatchway.server.store import Record
from hatchway.server.store import schema as t

T = TypeVar("T")


#: Per-kind names: output structure, name member, id member, unique-id prefix.
ENTITY_KIND = {
    "user": ("User", "UserName", "UserId", "AIDA"),
    "group": ("Group", "GroupName", "GroupId", "AGPA"),
    "role": ("Role", "RoleName", "RoleId", "AROA"),
}


INLINE_LIMIT = {
    "user": USER_INLINE_POLICY_SIZE,
    "group": GROUP_INLINE_POLICY_SIZE,
    "role": ROLE_INLINE_POLICY_SIZE,
}


QUOTA_NAME = {"user": "User", "group": "Group", "role": "Role"}


MAX_TAGS = 50


MAX_ACCESS_KEYS = 2


MAX_GROUPS_PER_USER = 10


DEFAULT_MAX_ITEMS = 100


DEFAULT_SESSION_DURATION = 3600


def no_entity(kind: str, name: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"The {kind} with name {name} cannot be found.", 404)


def policy_not_found(arn: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"Policy {arn} was not found.", 404)


def not_attachable(arn: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"Policy {arn} does not exist or is not attachable.", 404)


def delete_conflict(message: str) -> ServiceError:
    return ServiceError("DeleteConflict", message, 409)


def limit_exceeded(message: str) -> ServiceError:
    return ServiceError("LimitExceeded", message, 409)


def from_policy_error(exc: PolicyError) -> ServiceError:
    status = 409 if exc.code == "LimitExceeded" else 400
    return ServiceError(exc.code, exc.message, status)


def validate(
    text: str, kind: PolicyKind, *, managed: bool = False, size_limit: int | None = None
) -> None:
    try:
        validate_policy_text(text, kind, managed=managed, size_limit=size_limit)
    except PolicyError as exc:
        raise from_policy_error(exc) from exc


def validate_trust(text: str) -> None:
    try:
        validate_policy_text(text, PolicyKind.TRUST, size_limit=TRUST_POLICY_SIZE)
    except PolicyError as exc:
        if exc.code == "LimitExceeded":
            raise limit_exceeded(
                f"Cannot exceed quota for ACLSizePerRole: {TRUST_POLICY_SIZE}"
            ) from exc
        raise from_policy_error(exc) from exc


def check_principals(call: Call, text: str) -> None:
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


def text_size(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


def utc_now() -> datetime:
    return datetime.now(UTC)


def encoded(text: str) -> str:
    """Policy documents leave IAM URL-encoded (botocore decodes them back)."""
    return quote(text, safe="")


def page_of(items: Sequence[T], params: Mapping[str, Any]) -> tuple[list[T], dict[str, Any]]:
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


def path_ok(path: str, prefix: str | None) -> bool:
    return prefix is None or path.startswith(prefix)


def tag_context(tags: Sequence[Mapping[str, str]] | None) -> dict[str, object]:
    """``aws:RequestTag/<key>`` and ``aws:TagKeys`` for actions that take tags."""
    if not tags:
        return {}
    ctx: dict[str, object] = {f"aws:RequestTag/{x['Key']}": x["Value"] for x in tags}
    ctx["aws:TagKeys"] = [x["Key"] for x in tags]
    return ctx


RESERVED_TAG_MESSAGE = "User-defined tags cannot start with 'aws:'."


def check_tags(tags: Sequence[Mapping[str, str]] | None) -> list[dict[str, str]]:
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


def merge_tags(
    kind: str, old: Sequence[Mapping[str, str]], new: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    merged = {x["Key"].lower(): {"Key": x["Key"], "Value": x["Value"]} for x in old}
    for x in new:
        merged[x["Key"].lower()] = {"Key": x["Key"], "Value": x["Value"]}
    if len(merged) > MAX_TAGS:
        raise limit_exceeded(f"Cannot exceed quota for TagsPer{QUOTA_NAME[kind]}: {MAX_TAGS}")
    return list(merged.values())


def self_user(call: Call, params: Mapping[str, Any]) -> str:
    """``UserName``, or the calling IAM user's own name when it is left out (as AWS does)."""
    name = params.get("UserName")
    if name:
        return str(name)
    if call.caller.kind == "user":
        return call.caller.name
    raise ServiceError(
        "ValidationError", "Must specify userName when calling with non-User credentials", 400
    )


def entity_arn(call: Call, kind: str, name: str, row: Record | None) -> str:
    return str(row["arn"]) if row else iamdata.entity_arn(call.account, kind, "/", name)


def authorize_on(
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
    call.authorize(action, entity_arn(call, kind, name, row), ctx)
    return row


def require(
    call: Call, action: str, kind: str, name: str, context: Mapping[str, object] | None = None
) -> Record:
    row = authorize_on(call, action, kind, name, context)
    if row is None:
        raise no_entity(kind, name)
    return row


def get_entity_row(call: Call, kind: str, name: str, conn: Connection) -> Record:
    """The entity inside a transaction (it may have gone since authorization)."""
    row = iamdata.get_entity(call.store, kind, name, conn)
    if row is None:
        raise no_entity(kind, name)
    return row


def aws_record(pol: awsmanaged.ManagedPolicy) -> Record:
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


def managed_policy(call: Call, arn: str, conn: Connection | None = None) -> Record | None:
    """A managed policy: AWS's from the shipped data (rows an older broker seeded into the
    store for them are ignored), the account's own from the store."""
    if awsmanaged.is_aws_managed(arn):
        pol = awsmanaged.get(arn)
        return aws_record(pol) if pol is not None else None
    return call.store.get(t.iam_policies, conn, arn=arn)


def local_policies(call: Call, conn: Connection | None = None) -> list[Record]:
    return [
        r
        for r in call.store.select(t.iam_policies, conn=conn, order_by=[t.iam_policies.c.name])
        if not awsmanaged.is_aws_managed(r["arn"])
    ]


def policy_versions(arn: str) -> list[Record]:
    """An AWS managed policy's versions as version rows (documents read on demand)."""
    pol = awsmanaged.get(arn)
    if pol is None:
        return []
    return [{"arn": arn, "version_id": v, "created": c} for v, c in pol.versions]


def version_document(row: Record) -> str:
    if "document" in row:
        return str(row["document"])
    return awsmanaged.document(row["arn"], row["version_id"]) or ""


def boundary_context(arn: str | None) -> dict[str, object]:
    return {"iam:PermissionsBoundary": arn} if arn else {}


def check_boundary(call: Call, arn: str | None, conn: Connection | None = None) -> None:
    if arn and managed_policy(call, arn, conn) is None:
        raise ServiceError(
            "NoSuchEntity", f"Scope ARN: {arn} does not exist or is not attachable.", 404
        )


def boundary_shape(row: Record) -> dict[str, Any] | None:
    arn = row["data"].get("boundary")
    if not arn:
        return None
    return {"PermissionsBoundaryType": "PermissionsBoundaryPolicy", "PermissionsBoundaryArn": arn}


def entity_shape(row: Record, full: bool = True) -> dict[str, Any]:
    """A User, Group or Role structure; ``full`` adds boundary and tags (Get/Create)."""
    _, name_key, id_key, _ = ENTITY_KIND[row["kind"]]
    out: dict[str, Any] = {
        "Path": row["path"],
        name_key: row["name"],
        id_key: row["entity_id"],
        "Arn": row["arn"],
        "CreateDate": row["created"],
    }
    data = row["data"]
    if row["kind"] == "role":
        out["AssumeRolePolicyDocument"] = encoded(data.get("trust", ""))
        if data.get("description"):
            out["Description"] = data["description"]
        out["MaxSessionDuration"] = int(
            data.get("max_session_duration") or DEFAULT_SESSION_DURATION
        )
    if full and row["kind"] != "group":
        boundary = boundary_shape(row)
        if boundary is not None:
            out["PermissionsBoundary"] = boundary
        if data.get("tags"):
            out["Tags"] = list(data["tags"])
        if row["kind"] == "role":
            out["RoleLastUsed"] = {}
    return out


def boundary_usage(call: Call, conn: Connection | None = None) -> Counter[str]:
    usage: Counter[str] = Counter()
    for row in call.store.select(t.iam_entities, conn=conn):
        arn = row["data"].get("boundary")
        if arn:
            usage[arn] += 1
    return usage


def policy_shape(
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


def version_shape(row: Record, default: str, document: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "VersionId": row["version_id"],
        "IsDefaultVersion": row["version_id"] == default,
        "CreateDate": row["created"],
    }
    if document:
        out["Document"] = encoded(version_document(row))
    return out


def is_local_policy(arn: str) -> bool:
    return not arn.startswith(iamdata.AWS_MANAGED_PREFIX)
