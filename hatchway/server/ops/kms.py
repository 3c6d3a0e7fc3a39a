"""KMS operations of the built-in KMS (AWS JSON 1.1, ``X-Amz-Target: TrentService.<Op>``).

Every call is authorized as AWS KMS authorizes it: action ``kms:<Op>``; for an operation on a
key the resource is the key's ARN and the key policy is the key's resource policy, evaluated
together with the caller's IAM policies. The key policy must allow the caller — by name, by
role, or through the account (``arn:aws:iam::<account>:root``, the default key policy), in
which case the caller's IAM policies decide. Alias operations are also authorized on the
alias ARN (IAM policies only). Request context: ``kms:CallerAccount``,
``kms:EncryptionContext:<key>``, ``kms:EncryptionContextKeys``, ``kms:EncryptionAlgorithm``,
``kms:RequestAlias``, ``kms:ResourceAliases``, ``kms:KeySpec``, ``kms:KeyUsage``,
``kms:KeyOrigin``, ``aws:ResourceTag/<k>``, ``aws:RequestTag/<k>``, ``aws:TagKeys``
(``kms:ViaService`` is absent: the broker calls no KMS on a caller's behalf).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from hatchway.iam import (
    Policy,
    PolicyError,
    PolicyKind,
    Request,
    denial_message,
    make_context,
    parse_policy,
)
from hatchway.server import keyring as kms
from hatchway.server.base.errors import ServiceError, access_denied
from hatchway.server.front.call import Call, operation
from hatchway.server.keyring import ALGORITHM, Key, KeyRef
from hatchway.server.store import Conflict
from hatchway.server.store import schema as t

_POLICY_NAME = "default"
_DRY_RUN = "The request would have succeeded, but the DryRun option is set."
_LOCKOUT = "The new key policy will not allow you to update the key policy in the future."
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}


# --------------------------------------------------------------------------- authorization


@lru_cache(maxsize=256)
def _key_policy(text: str) -> Policy:
    return parse_policy(text, PolicyKind.RESOURCE, name="key-policy")


def _aliases_of(call: Call, key_id: str) -> list[str]:
    return [r["alias_name"] for r in call.store.select(t.kms_aliases, key_id=key_id)]


def _key_context(call: Call, ref: KeyRef, extra: Mapping[str, object] | None) -> dict[str, object]:
    key = ref.key
    ctx: dict[str, object] = {
        "kms:CallerAccount": call.account,
        "kms:KeySpec": ALGORITHM,
        "kms:KeyUsage": "ENCRYPT_DECRYPT",
        "kms:KeyOrigin": "AWS_KMS",
        "kms:ResourceAliases": _aliases_of(call, key.key_id),
    }
    if ref.alias is not None:
        ctx["kms:RequestAlias"] = ref.alias
    for k, v in key.tags.items():
        ctx[f"aws:ResourceTag/{k}"] = v
    ctx.update(extra or {})
    return ctx


def _evaluate_with_key_policy(
    call: Call, action: str, resource: str, policy: Policy, ctx: Mapping[str, object]
) -> tuple[bool, str | None]:
    """The caller's IAM policies and ``policy`` (a key policy) together: allowed, or why not."""
    combined = call.caller.policies.with_resource(policy)
    context = call.base_context()
    context.update(make_context(ctx))
    request = Request(action, resource, call.caller.principal, context, call.account)
    decision = combined.evaluate(request)
    call.decisions.append(decision)
    if not decision.allowed:
        return False, decision.message
    if combined.resource_policy_match(request) is None:
        # A key policy must always let the caller in (itself, or via the account).
        return False, denial_message(
            call.caller.arn, action, resource, PolicyKind.RESOURCE, explicit=False
        )
    return True, None


def _authorize_key(
    call: Call, action: str, ref: KeyRef, extra: Mapping[str, object] | None = None
) -> None:
    key = ref.key
    allowed, why = _evaluate_with_key_policy(
        call, action, key.arn, _key_policy(key.policy), _key_context(call, ref, extra)
    )
    if not allowed:
        raise access_denied(why or "Access denied")


def _crypto_context(params: dict[str, Any]) -> dict[str, object]:
    context: dict[str, str] = params.get("EncryptionContext") or {}
    extra: dict[str, object] = {"kms:EncryptionAlgorithm": ALGORITHM}
    for k, v in context.items():
        extra[f"kms:EncryptionContext:{k}"] = v
    if context:
        extra["kms:EncryptionContextKeys"] = list(context)
    return extra


def _tag_context(tags: list[dict[str, str]] | None) -> dict[str, object]:
    ctx: dict[str, object] = {f"aws:RequestTag/{x['TagKey']}": x["TagValue"] for x in tags or []}
    if tags:
        ctx["aws:TagKeys"] = [x["TagKey"] for x in tags]
    return ctx


# --------------------------------------------------------------------------- helpers


def _usable(key: Key) -> None:
    """Cryptographic operations need an Enabled key."""
    if key.state == "Disabled":
        raise ServiceError("DisabledException", f"{key.arn} is disabled.")
    _not_pending(key)


def _not_pending(key: Key) -> None:
    if key.state == "PendingDeletion":
        raise ServiceError("KMSInvalidStateException", f"{key.arn} is pending deletion.")


def _dry_run(params: dict[str, Any]) -> None:
    if params.get("DryRun"):
        raise ServiceError("DryRunOperationException", _DRY_RUN)


def _algorithm(params: dict[str, Any]) -> None:
    algorithm = params.get("EncryptionAlgorithm")
    if algorithm not in (None, ALGORITHM):
        raise ServiceError(
            "InvalidKeyUsageException",
            f"You cannot use the encryption algorithm {algorithm} with a symmetric encryption "
            "KMS key.",
        )


def _set_state(call: Call, key: Key, state: str, deletion: datetime | None = None) -> None:
    call.store.update(
        t.kms_keys, {"key_id": key.key_id}, {"state": state, "deletion_date": deletion}
    )


def _save_data(call: Call, key: Key, **changes: Any) -> None:
    call.store.update(t.kms_keys, {"key_id": key.key_id}, {"data": {**key.data, **changes}})


def _validate_key_policy(call: Call, text: str, key_arn: str, bypass: bool) -> None:
    """MalformedPolicyDocumentException unless ``text`` is a valid key policy that (unless
    ``bypass``) still lets the caller change the key policy later (AWS's lockout check)."""
    try:
        policy = _key_policy(text)
    except PolicyError as exc:
        raise ServiceError("MalformedPolicyDocumentException", exc.message) from None
    if bypass:
        call.authorize("kms:BypassPolicyLockoutSafetyCheck", "*")
        return
    extra = {"kms:CallerAccount": call.account}
    allowed, _ = _evaluate_with_key_policy(call, "kms:PutKeyPolicy", key_arn, policy, extra)
    if not allowed:
        raise ServiceError("MalformedPolicyDocumentException", _LOCKOUT)


def _page(items: list[Any], params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """KMS paging: ``Limit`` (default 100) and an opaque ``Marker``."""
    start = 0
    marker = params.get("Marker")
    if marker:
        try:
            start = int(json.loads(base64.b64decode(marker, validate=True))["o"])
        except (ValueError, KeyError, TypeError):
            raise ServiceError("InvalidMarkerException", "Invalid marker") from None
        if not 0 <= start <= len(items):
            raise ServiceError("InvalidMarkerException", "Invalid marker")
    limit = int(params.get("Limit") or 100)
    chunk = items[start : start + limit]
    end = start + limit
    if end < len(items):
        token = base64.b64encode(json.dumps({"o": end}).encode()).decode()
        return chunk, {"Truncated": True, "NextMarker": token}
    return chunk, {"Truncated": False}


def _alias_name(name: str) -> str:
    if not name.startswith("alias/"):
        raise ServiceError(
            "InvalidAliasNameException", 'Alias must start with the prefix "alias/".'
        )
    if name.startswith("alias/aws/"):
        raise ServiceError(
            "InvalidAliasNameException",
            "Alias names that begin with alias/aws/ are reserved for AWS managed keys.",
        )
    return name


def _alias_arn(call: Call, name: str) -> str:
    return kms.alias_arn(call.region, call.account, name)


# --------------------------------------------------------------------------- keys


@operation("kms", "CreateKey")
async def create_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    tags = params.get("Tags") or []
    spec = params.get("KeySpec") or params.get("CustomerMasterKeySpec") or ALGORITHM
    usage = params.get("KeyUsage") or "ENCRYPT_DECRYPT"
    origin = params.get("Origin") or "AWS_KMS"
    call.authorize(
        "kms:CreateKey",
        "*",
        {
            "kms:CallerAccount": call.account,
            "kms:KeySpec": spec,
            "kms:KeyUsage": usage,
            "kms:KeyOrigin": origin,
            "kms:MultiRegion": bool(params.get("MultiRegion")),
            **_tag_context(tags),
        },
    )
    if tags:
        call.authorize("kms:TagResource", "*", _tag_context(tags))
    unsupported = (
        spec != ALGORITHM
        or usage != "ENCRYPT_DECRYPT"
        or origin != "AWS_KMS"
        or params.get("CustomKeyStoreId")
        or params.get("XksKeyId")
        or params.get("MultiRegion")
    )
    if unsupported:
        raise ServiceError(
            "UnsupportedOperationException",
            "Hatchway's KMS creates only single-Region symmetric encryption keys "
            "(KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT, Origin AWS_KMS).",
        )
    text = params.get("Policy")
    if text is None:
        text = json.dumps(kms.default_key_policy(call.account), indent=2)
    else:
        probe = kms.key_arn(call.region, call.account, "00000000-0000-0000-0000-000000000000")
        _validate_key_policy(call, text, probe, bool(params.get("BypassPolicyLockoutSafetyCheck")))
    key = kms.create_key(call.state, params.get("Description") or "", text, tags)
    return {"KeyMetadata": key.metadata(call.account)}


@operation("kms", "DescribeKey")
async def describe_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"])
    _authorize_key(call, "kms:DescribeKey", ref)
    return {"KeyMetadata": ref.key.metadata(call.account)}


@operation("kms", "ListKeys")
async def list_keys(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("kms:ListKeys", "*", {"kms:CallerAccount": call.account})
    rows = call.store.select(t.kms_keys, order_by=[t.kms_keys.c.created, t.kms_keys.c.key_id])
    keys = [k for k in (kms.load_key(call.state, r["key_id"]) for r in rows) if k is not None]
    chunk, more = _page(keys, params)
    return {"Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for k in chunk], **more}


def _switch(call: Call, params: dict[str, Any], action: str, state: str) -> dict[str, Any]:
    """EnableKey / DisableKey: not for a key pending deletion."""
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, action, ref)
    _not_pending(ref.key)
    _set_state(call, ref.key, state)
    return {}


@operation("kms", "EnableKey")
async def enable_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _switch(call, params, "kms:EnableKey", "Enabled")


@operation("kms", "DisableKey")
async def disable_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _switch(call, params, "kms:DisableKey", "Disabled")


@operation("kms", "ScheduleKeyDeletion")
async def schedule_key_deletion(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, "kms:ScheduleKeyDeletion", ref)
    days = params.get("PendingWindowInDays")
    days = 30 if days is None else int(days)
    if not 7 <= days <= 30:
        bound = "greater than or equal to 7" if days < 7 else "less than or equal to 30"
        raise ServiceError(
            "ValidationException",
            f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to "
            f"satisfy constraint: Member must have value {bound}",
        )
    _not_pending(ref.key)
    when = datetime.now(UTC) + timedelta(days=days)
    _set_state(call, ref.key, "PendingDeletion", when)
    return {
        "KeyId": ref.key.arn,
        "DeletionDate": when,
        "KeyState": "PendingDeletion",
        "PendingWindowInDays": days,
    }


@operation("kms", "CancelKeyDeletion")
async def cancel_key_deletion(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, "kms:CancelKeyDeletion", ref)
    if ref.key.state != "PendingDeletion":
        raise ServiceError("KMSInvalidStateException", f"{ref.key.arn} is not pending deletion.")
    _set_state(call, ref.key, "Disabled")  # as AWS does: a key back from deletion is disabled
    return {"KeyId": ref.key.arn}


@operation("kms", "UpdateKeyDescription")
async def update_key_description(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, "kms:UpdateKeyDescription", ref)
    _not_pending(ref.key)
    _save_data(call, ref.key, description=params["Description"])
    return {}


# --------------------------------------------------------------------------- key policies


def _policy_name(params: dict[str, Any]) -> None:
    if (params.get("PolicyName") or _POLICY_NAME) != _POLICY_NAME:
        raise ServiceError("NotFoundException", "No such policy exists")


@operation("kms", "GetKeyPolicy")
async def get_key_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, "kms:GetKeyPolicy", ref)
    _policy_name(params)
    return {"Policy": ref.key.policy, "PolicyName": _POLICY_NAME}


@operation("kms", "PutKeyPolicy")
async def put_key_policy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, "kms:PutKeyPolicy", ref)
    _policy_name(params)
    _not_pending(ref.key)
    text = params["Policy"]
    _validate_key_policy(
        call, text, ref.key.arn, bool(params.get("BypassPolicyLockoutSafetyCheck"))
    )
    _save_data(call, ref.key, policy=text)
    return {}


@operation("kms", "ListKeyPolicies")
async def list_key_policies(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, "kms:ListKeyPolicies", ref)
    return {"PolicyNames": [_POLICY_NAME], "Truncated": False}


# --------------------------------------------------------------------------- tags


@operation("kms", "TagResource")
async def tag_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    tags = params["Tags"]
    _authorize_key(call, "kms:TagResource", ref, _tag_context(tags))
    _not_pending(ref.key)
    merged = {**ref.key.tags, **{x["TagKey"]: x["TagValue"] for x in tags}}
    _save_data(call, ref.key, tags=[{"TagKey": k, "TagValue": v} for k, v in merged.items()])
    return {}


@operation("kms", "UntagResource")
async def untag_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    gone = set(params["TagKeys"])
    _authorize_key(call, "kms:UntagResource", ref, {"aws:TagKeys": sorted(gone)})
    _not_pending(ref.key)
    kept = [x for x in ref.key.data.get("tags", []) if x["TagKey"] not in gone]
    _save_data(call, ref.key, tags=kept)
    return {}


@operation("kms", "ListResourceTags")
async def list_resource_tags(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"], aliases=False)
    _authorize_key(call, "kms:ListResourceTags", ref)
    chunk, more = _page(list(ref.key.data.get("tags", [])), params)
    return {"Tags": chunk, **more}


# --------------------------------------------------------------------------- aliases


@operation("kms", "CreateAlias")
async def create_alias(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _alias_name(params["AliasName"])
    ref = kms.resolve(call.state, params["TargetKeyId"], aliases=False)
    call.authorize("kms:CreateAlias", _alias_arn(call, name), {"kms:CallerAccount": call.account})
    _authorize_key(call, "kms:CreateAlias", ref)
    _not_pending(ref.key)
    now = datetime.now(UTC)
    try:
        call.store.insert(
            t.kms_aliases,
            {"alias_name": name, "key_id": ref.key.key_id, "created": now, "updated": now},
        )
    except Conflict:
        raise ServiceError(
            "AlreadyExistsException",
            f"An alias with the name {_alias_arn(call, name)} already exists",
        ) from None
    return {}


def _existing_alias(call: Call, name: str) -> dict[str, Any]:
    row: dict[str, Any] | None = call.store.get(t.kms_aliases, alias_name=name)
    if row is None or kms.load_key(call.state, row["key_id"]) is None:
        raise ServiceError("NotFoundException", f"Alias {_alias_arn(call, name)} is not found.")
    return row


@operation("kms", "UpdateAlias")
async def update_alias(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _alias_name(params["AliasName"])
    row = _existing_alias(call, name)
    old = kms.resolve(call.state, row["key_id"], aliases=False)
    new = kms.resolve(call.state, params["TargetKeyId"], aliases=False)
    call.authorize("kms:UpdateAlias", _alias_arn(call, name), {"kms:CallerAccount": call.account})
    _authorize_key(call, "kms:UpdateAlias", old)
    _authorize_key(call, "kms:UpdateAlias", new)
    _not_pending(new.key)
    call.store.update(
        t.kms_aliases,
        {"alias_name": name},
        {"key_id": new.key.key_id, "updated": datetime.now(UTC)},
    )
    return {}


@operation("kms", "DeleteAlias")
async def delete_alias(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = _alias_name(params["AliasName"])
    row = _existing_alias(call, name)
    call.authorize("kms:DeleteAlias", _alias_arn(call, name), {"kms:CallerAccount": call.account})
    _authorize_key(call, "kms:DeleteAlias", kms.resolve(call.state, row["key_id"], aliases=False))
    call.store.delete(t.kms_aliases, alias_name=name)
    return {}


@operation("kms", "ListAliases")
async def list_aliases(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("kms:ListAliases", "*", {"kms:CallerAccount": call.account})
    where: dict[str, Any] = {}
    if params.get("KeyId"):
        where["key_id"] = kms.resolve(call.state, params["KeyId"], aliases=False).key.key_id
    rows = call.store.select(t.kms_aliases, order_by=[t.kms_aliases.c.alias_name], **where)
    live = [r for r in rows if kms.load_key(call.state, r["key_id"]) is not None]
    chunk, more = _page(live, params)
    return {
        "Aliases": [
            {
                "AliasName": r["alias_name"],
                "AliasArn": _alias_arn(call, r["alias_name"]),
                "TargetKeyId": r["key_id"],
                "CreationDate": r["created"],
                "LastUpdatedDate": r["updated"],
            }
            for r in chunk
        ],
        **more,
    }


# --------------------------------------------------------------------------- cryptography


@operation("kms", "Encrypt")
async def encrypt(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    ref = kms.resolve(call.state, params["KeyId"])
    _authorize_key(call, "kms:Encrypt", ref, _crypto_context(params))
    _dry_run(params)
    _usable(ref.key)
    _algorithm(params)
    blob = kms.seal_blob(
        kms.material(call.state, ref.key),
        ref.key.key_id,
        params["Plaintext"],
        params.get("EncryptionContext"),
    )
    return {"CiphertextBlob": blob, "KeyId": ref.key.arn, "EncryptionAlgorithm": ALGORITHM}


@operation("kms", "Decrypt")
async def decrypt(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    blob: bytes | None = params.get("CiphertextBlob")
    if blob is None:  # optional in the model (for DryRun modifiers), required in practice
        raise ServiceError(
            "ValidationException",
            "1 validation error detected: Value null at 'ciphertextBlob' failed to satisfy "
            "constraint: Member must not be null",
        )
    named = kms.resolve(call.state, params["KeyId"]) if params.get("KeyId") else None
    if params.get("Recipient"):
        raise ServiceError(
            "ValidationException", "Hatchway's KMS does not support Recipient (Nitro Enclaves)."
        )
    key = kms.load_key(call.state, kms.parse_blob(blob))
    if key is None:
        raise kms.invalid_ciphertext()
    ref = KeyRef(key, named.alias if named is not None and named.key.key_id == key.key_id else None)
    _authorize_key(call, "kms:Decrypt", ref, _crypto_context(params))
    if named is not None and named.key.key_id != key.key_id:
        raise ServiceError(
            "IncorrectKeyException",
            "The key ID in the request does not identify a CMK that can perform this operation.",
        )
    _dry_run(params)
    _usable(key)
    _algorithm(params)
    plaintext = kms.open_blob(kms.material(call.state, key), blob, params.get("EncryptionContext"))
    return {"Plaintext": plaintext, "KeyId": key.arn, "EncryptionAlgorithm": ALGORITHM}


def _data_key(call: Call, params: dict[str, Any], action: str) -> tuple[Key, bytes, bytes]:
    ref = kms.resolve(call.state, params["KeyId"])
    _authorize_key(call, action, ref, _crypto_context(params))
    count, spec = params.get("NumberOfBytes"), params.get("KeySpec")
    if (count is None) == (spec is None):
        raise ServiceError(
            "ValidationException", "Please specify either number of bytes or key spec."
        )
    _dry_run(params)
    _usable(ref.key)
    size = int(count) if count is not None else _DATA_KEY_SPECS[str(spec)]
    plaintext = os.urandom(size)
    blob = kms.seal_blob(
        kms.material(call.state, ref.key),
        ref.key.key_id,
        plaintext,
        params.get("EncryptionContext"),
    )
    return ref.key, plaintext, blob


@operation("kms", "GenerateDataKey")
async def generate_data_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    key, plaintext, blob = _data_key(call, params, "kms:GenerateDataKey")
    return {"CiphertextBlob": blob, "Plaintext": plaintext, "KeyId": key.arn}


@operation("kms", "GenerateDataKeyWithoutPlaintext")
async def generate_data_key_without_plaintext(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    key, _, blob = _data_key(call, params, "kms:GenerateDataKeyWithoutPlaintext")
    return {"CiphertextBlob": blob, "KeyId": key.arn}
