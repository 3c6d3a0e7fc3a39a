"""IAM entities in the store: users, groups, roles, managed and inline policies, attachments.

Shared by the IAM operations and by identity resolution. Entity ``data`` JSON holds
``tags`` (AWS's ``[{"Key", "Value"}]`` list), ``boundary`` (a policy ARN) and, for roles,
``trust`` (the assume-role policy text), ``description`` and ``max_session_duration``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from hatchway.iam import PolicyKind, PolicySet, Principal, Request, compile_policy
from hatchway.server.accounts import awsmanaged
from hatchway.server.store import Record, Store
from hatchway.server.store import schema as t

AWS_MANAGED_PREFIX = awsmanaged.PREFIX + "/"


def entity_arn(account: str, kind: str, path: str, name: str) -> str:
    return f"arn:aws:iam::{account}:{kind}{path}{name}"


def get_entity(store: Store, kind: str, name: str, conn: Connection | None = None) -> Record | None:
    return store.get(t.iam_entities, conn, kind=kind, name=name)


def tags_dict(record: Mapping[str, Any] | None) -> dict[str, str]:
    if record is None:
        return {}
    return {x["Key"]: x["Value"] for x in record["data"].get("tags", [])}


def policy_document(store: Store, arn: str, version: str | None = None) -> str | None:
    """A managed policy's document text (its default version unless ``version``).

    AWS managed policies come from the data shipped in the package (awsmanaged.py), never
    from the store: rows that brokers before it seeded for three of them are ignored.
    """
    if awsmanaged.is_aws_managed(arn):
        return awsmanaged.document(arn, version)
    pol = store.get(t.iam_policies, arn=arn)
    if pol is None:
        return None
    vid = version or pol["default_version"]
    row = store.get(t.iam_policy_versions, arn=arn, version_id=vid)
    return str(row["document"]) if row else None


def attached_arns(store: Store, kind: str, name: str) -> list[str]:
    return [r["policy_arn"] for r in store.select(t.iam_attachments, kind=kind, name=name)]


def inline_documents(store: Store, kind: str, name: str) -> list[tuple[str, str]]:
    return [
        (r["policy_name"], r["document"]) for r in store.select(t.iam_inline, kind=kind, name=name)
    ]


def groups_of(store: Store, user: str) -> list[str]:
    return [r["group_name"] for r in store.select(t.iam_group_members, user_name=user)]


def identity_documents(store: Store, kind: str, name: str) -> list[dict[str, Any]]:
    """Every identity policy of a user (incl. its groups') or role: ``{"name", "arn"?, "text"}``."""
    owners = [(kind, name)]
    if kind == "user":
        owners += [("group", g) for g in groups_of(store, name)]
    docs: list[dict[str, Any]] = []
    for k, n in owners:
        for pname, text in inline_documents(store, k, n):
            docs.append({"name": f"{k}/{n}/{pname}", "arn": None, "text": text})
        for arn in attached_arns(store, k, n):
            managed = policy_document(store, arn)
            if managed is not None:
                docs.append({"name": arn.rsplit("/", 1)[-1], "arn": arn, "text": managed})
    return docs


SSM_SERVICE = "ssm.amazonaws.com"


def trusts_service(role: Record, account: str, service: str = SSM_SERVICE) -> bool:
    """Whether ``role``'s trust policy lets ``service`` assume it (sts:AssumeRole)."""
    try:
        trust = compile_policy(json.loads(role["data"]["trust"]), PolicyKind.TRUST, name="trust")
    except (KeyError, ValueError, TypeError):
        return False
    policies = PolicySet(resource=trust)
    request = Request("sts:AssumeRole", role["arn"], Principal.from_arn(service), {}, account)
    return (
        policies.evaluate(request).allowed and policies.resource_policy_match(request) is not None
    )


def activation_role(store: Store, account: str, value: str) -> Record | None:
    """The role CreateActivation's ``IamRole`` names, as AWS reads it: a role name, or
    ``path/name`` for a role with a path; the role must exist with exactly that path.

    A full ARN is not a role name (AWS's model: "The name of the IAM role", at most 64
    characters) and names no role. Returns None when no role matches.
    """
    if not value or value.startswith("arn:") or value.startswith("/"):
        return None
    prefix, _, name = value.rpartition("/")
    path = f"/{prefix}/" if prefix else "/"
    role = get_entity(store, "role", name)
    if role is None or role["arn"] != entity_arn(account, "role", path, name):
        return None
    return role
