"""STS: GetCallerIdentity and AssumeRole (trust policy evaluated, session policies and tags)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hatchway.iam import (
    PolicyError,
    PolicyKind,
    Request,
    compile_policy,
    parse_policy,
)
from hatchway.server.accounts import iamdata
from hatchway.server.accounts.bootstrap import create_access_key
from hatchway.server.base import crypto
from hatchway.server.base.errors import ServiceError, access_denied
from hatchway.server.front.call import Call, operation

_PACKED_LIMIT = 2048  # characters of session policy + tags STS accepts (packed size 100%)
_CHAINED_LIMIT = 3600  # seconds: the longest session a role-chained AssumeRole may ask for


@operation("sts", "GetCallerIdentity")
async def get_caller_identity(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.decide("sts:GetCallerIdentity")  # always allowed, but recorded like any call
    return {"UserId": call.caller.user_id, "Account": call.account, "Arn": call.caller.arn}


@operation("sts", "AssumeRole")
async def assume_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    role_arn: str = params["RoleArn"]
    session_name: str = params["RoleSessionName"]
    prefix = f"arn:aws:iam::{call.account}:role/"
    role = None
    if role_arn.startswith(prefix):
        role = iamdata.get_entity(call.store, "role", role_arn[len(prefix) :].rsplit("/", 1)[-1])
    denial = (
        f"User: {call.caller.arn} is not authorized to perform: sts:AssumeRole on "
        f"resource: {role_arn}"
    )
    if role is None or role["arn"] != role_arn:
        call.decide("sts:AssumeRole", role_arn)
        raise access_denied(denial, "query")
    # The caller's own policies and the role's trust policy, evaluated together: the trust
    # policy is the resource policy of the role and must name the caller (or its account).
    trust = compile_policy(json.loads(role["data"]["trust"]), PolicyKind.TRUST, name="trust")
    combined = call.caller.policies.with_resource(trust)
    ctx = call.base_context()
    tags = {t["Key"]: t["Value"] for t in params.get("Tags") or []}
    for k, v in tags.items():
        ctx[f"aws:requesttag/{k}".lower()] = v
    if tags:
        ctx["aws:tagkeys"] = tuple(tags)
    transitive = [str(k) for k in params.get("TransitiveTagKeys") or []]
    if transitive:
        ctx["sts:transitivetagkeys"] = tuple(transitive)
    source_identity = params.get("SourceIdentity")
    if source_identity:
        ctx["sts:sourceidentity"] = source_identity
    mfa_time = _assume_role_mfa(call, params)
    if mfa_time is not None:
        # The request was authenticated with MFA: the trust policy (and the caller's own
        # policies) see it, and so does the role session.
        ctx["aws:multifactorauthpresent"] = "true"
        ctx["aws:multifactorauthage"] = "0"
    # sts:AssumeRole, and the actions the request's extras need
    # (docs/reference/iam-evaluation.md#session-tags-and-source-identity: session tags need
    # sts:TagSession, a source identity sts:SetSourceIdentity), each allowed by the caller's
    # policies and by the role's trust policy naming the caller; an explicit deny in either
    # refuses the whole request.
    actions = ["sts:AssumeRole"]
    if tags or transitive:
        actions.append("sts:TagSession")
    if source_identity:
        actions.append("sts:SetSourceIdentity")
    for action in actions:
        request = Request(action, role_arn, call.caller.principal, ctx, call.account)
        decision = combined.evaluate(request)
        call.decisions.append(decision)
        # A role trust policy must name the caller itself, whatever identity policies allow.
        if not decision.allowed or combined.resource_policy_match(request) is None:
            raise access_denied(denial.replace("sts:AssumeRole", action, 1), "query")

    max_duration = int(role["data"].get("max_session_duration", 3600))
    duration = int(params.get("DurationSeconds") or 3600)
    if call.caller.principal.kind == "assumed-role" and duration > _CHAINED_LIMIT:
        # Role chaining: credentials of a role session (or a node's) assuming a role.
        raise ServiceError(
            "ValidationError",
            "The requested DurationSeconds exceeds the 1 hour session limit for roles "
            "assumed by role chaining.",
            400,
        )
    if duration > max_duration:
        raise ServiceError(
            "ValidationError",
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            400,
        )
    policy_text = params.get("Policy")
    if policy_text:
        try:
            parse_policy(policy_text, PolicyKind.SESSION)
        except PolicyError as exc:
            raise ServiceError("MalformedPolicyDocument", exc.message, 400) from exc
    policy_arns = [p["arn"] for p in params.get("PolicyArns") or []]
    for parn in policy_arns:
        if iamdata.policy_document(call.store, parn) is None:
            raise ServiceError(
                "ValidationError", f"Policy {parn} does not exist or is not attachable.", 400
            )
    packed = len(policy_text or "") + sum(len(k) + len(v) for k, v in tags.items())
    if packed > _PACKED_LIMIT:
        raise ServiceError(
            "PackedPolicyTooLarge",
            "Packed policy consumes more than 100% of the allotted size.",
            400,
        )
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=duration)
    session_token = crypto.token(96)
    akid = crypto.access_key_id(temporary=True)
    akid, secret = create_access_key(
        call.state,
        "session",
        f"{role['name']}/{session_name}",
        akid,
        expires=expires,
        data={
            "role_name": role["name"],
            "role_id": role["entity_id"],
            "session_name": session_name,
            "session_policy": policy_text,
            "policy_arns": policy_arns,
            "session_tags": tags,
            "session_token": call.state.box.seal(session_token, akid),
            "source_identity": params.get("SourceIdentity"),
            **({"mfa_time": mfa_time.isoformat()} if mfa_time is not None else {}),
        },
    )
    out: dict[str, Any] = {
        "Credentials": {
            "AccessKeyId": akid,
            "SecretAccessKey": secret,
            "SessionToken": session_token,
            "Expiration": expires,
        },
        "AssumedRoleUser": {
            "AssumedRoleId": f"{role['entity_id']}:{session_name}",
            "Arn": f"arn:aws:sts::{call.account}:assumed-role/{role['name']}/{session_name}",
        },
    }
    if policy_text or tags:
        out["PackedPolicySize"] = min(100, packed * 100 // _PACKED_LIMIT)
    if params.get("SourceIdentity"):
        out["SourceIdentity"] = params["SourceIdentity"]
    return out


def _assume_role_mfa(call: Call, params: dict[str, Any]) -> datetime | None:
    """AssumeRole's ``SerialNumber``/``TokenCode``: a code of one of the calling IAM user's
    devices (each code once). Returns when MFA was used, None without MFA parameters."""
    from hatchway.server.ops.iam import mfa

    serial, code = params.get("SerialNumber"), params.get("TokenCode")
    if not serial and not code:
        return None
    failed = ServiceError(
        "AccessDenied", "MultiFactorAuthentication failed with invalid MFA one time pass code.", 403
    )
    user = call.caller.entity if call.caller.kind == "user" else None
    if not serial or not code or user is None:
        raise failed
    with call.store.transaction() as c:
        if mfa.accept_code(call, str(serial), [str(code)], user["name"], c) is None:
            raise failed
    return datetime.now(UTC)


_SESSION_TOKEN_DEFAULT = 43200  # seconds: GetSessionToken's default duration for IAM users
_MFA_FAILED = (
    "MultiFactorAuthentication failed, unable to validate MFA code.  Please verify your MFA "
    "serial number is valid and associated with this user."
)


@operation("sts", "GetSessionToken")
async def get_session_token(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """Temporary credentials for the calling IAM user, with MFA context when ``SerialNumber``
    and ``TokenCode`` name one of its devices and a valid code. No policy governs it (AWS:
    "You cannot use policies to control authentication operations"); it is recorded."""
    from hatchway.server.ops.iam import mfa

    call.decide("sts:GetSessionToken")  # recorded, never a reason to refuse
    caller = call.caller
    if caller.kind != "user" or caller.temporary or caller.entity is None:
        raise ServiceError(
            "AccessDenied", "Cannot call GetSessionToken with session credentials", 403
        )
    user = caller.entity
    serial, code = params.get("SerialNumber"), params.get("TokenCode")
    if bool(serial) != bool(code):
        # AWS checks the pair: a code without a device (or a device without a code) fails MFA.
        raise ServiceError("AccessDenied", _MFA_FAILED, 403)
    duration = int(params.get("DurationSeconds") or _SESSION_TOKEN_DEFAULT)
    now = datetime.now(UTC)
    mfa_time: str | None = None
    if serial and code:
        with call.store.transaction() as c:
            device = mfa.accept_code(call, str(serial), [str(code)], user["name"], c)
        if device is None:
            raise ServiceError("AccessDenied", _MFA_FAILED, 403)
        mfa_time = now.isoformat()
    expires = now + timedelta(seconds=duration)
    session_token = crypto.token(96)
    akid = crypto.access_key_id(temporary=True)
    data: dict[str, Any] = {
        "user_id": user["entity_id"],
        "session_token": call.state.box.seal(session_token, akid),
    }
    if mfa_time:
        data["mfa_time"] = mfa_time
        data["mfa_serial"] = serial
    akid, secret = create_access_key(
        call.state, "user_session", user["name"], akid, expires=expires, data=data
    )
    return {
        "Credentials": {
            "AccessKeyId": akid,
            "SecretAccessKey": secret,
            "SessionToken": session_token,
            "Expiration": expires,
        }
    }
