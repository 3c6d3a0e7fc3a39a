"""Policies for engine tests: build documents from dicts and decide one request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hatchway.iam import Decision, PolicyKind, PolicySet, make_request, parse_policy

USER = "arn:aws:iam::123456789012:user/alice"
ROLE_SESSION = "arn:aws:sts::123456789012:assumed-role/Ops/alice-session"


def policy(*statements: dict[str, Any], version: str | None = "2012-10-17") -> dict[str, Any]:
    doc: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        doc["Version"] = version
    return doc


def allow(action: Any = "*", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any = "*", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def decide(
    identity: Sequence[dict[str, Any]],
    action: str = "ssm:StartSession",
    resource: str = "*",
    principal: str | None = USER,
    context: dict[str, Any] | None = None,
    *,
    resource_policy: dict[str, Any] | None = None,
    boundary: Sequence[dict[str, Any]] | None = None,
    session: dict[str, Any] | None = None,
    scps: Sequence[Sequence[dict[str, Any]]] = (),
    resource_account: str | None = None,
) -> Decision:
    def p(doc: dict[str, Any], kind: PolicyKind) -> Any:
        return parse_policy(json.dumps(doc), kind)

    ps = PolicySet(
        [p(d, PolicyKind.IDENTITY) for d in identity],
        resource=p(resource_policy, PolicyKind.RESOURCE) if resource_policy else None,
        boundary=[p(d, PolicyKind.BOUNDARY) for d in boundary] if boundary is not None else None,
        session=[p(session, PolicyKind.SESSION)] if session is not None else None,
        scps=[[p(d, PolicyKind.SCP) for d in level] for level in scps],
    )
    return ps.evaluate(make_request(action, resource, principal, context, resource_account))
