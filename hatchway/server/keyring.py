"""The built-in KMS: symmetric keys in the store, aliases, and the ciphertext blob format.

Key material is 32 random bytes per key, kept sealed under the broker's ``master.key`` (the
same :class:`~hatchway.server.base.crypto.SecretBox` that seals access-key secrets, with the key id
as associated data): a copy of the database alone decrypts nothing.

A ciphertext blob is self-describing, so ``Decrypt`` needs no ``KeyId``::

    "HWK" ‖ 0x01 (version) ‖ key id (16 bytes, the UUID) ‖ nonce (12) ‖ ciphertext ‖ tag (16)

The AES-GCM associated data is the first 20 bytes (magic, version, key id) followed by the
canonical encryption context (JSON, keys sorted, no spaces, UTF-8): a blob opens only under the
key it names and with exactly the context it was sealed with. Anything else is
``InvalidCiphertextException``, as AWS answers.

The API handlers are in :mod:`hatchway.server.ops.kms`; this module knows nothing of HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hatchway.server.base.errors import ServiceError
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import schema as t

__all__ = [
    "ALGORITHM",
    "BLOB_MAGIC",
    "BLOB_OVERHEAD",
    "Key",
    "KeyRef",
    "alias_arn",
    "canonical_context",
    "create_key",
    "default_key_policy",
    "invalid_ciphertext",
    "key_arn",
    "load_key",
    "material",
    "open_blob",
    "parse_blob",
    "resolve",
    "seal_blob",
]

ALGORITHM = "SYMMETRIC_DEFAULT"
BLOB_MAGIC = b"HWK\x01"
_KEY_ID_SIZE = 16
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER = len(BLOB_MAGIC) + _KEY_ID_SIZE
BLOB_OVERHEAD = _HEADER + _NONCE_SIZE + _TAG_SIZE
"""Bytes a blob is longer than its plaintext (48)."""
MATERIAL_SIZE = 32

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ARN = re.compile(r"arn:aws:kms:([^:]*):([^:]*):(key|alias)/(.+)")


def key_arn(region: str, account: str, key_id: str) -> str:
    return f"arn:aws:kms:{region}:{account}:key/{key_id}"


def alias_arn(region: str, account: str, alias_name: str) -> str:
    return f"arn:aws:kms:{region}:{account}:{alias_name}"


def default_key_policy(account: str) -> dict[str, Any]:
    """AWS's default key policy: the account (root) may do anything, so IAM policies decide."""
    return {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


def invalid_ciphertext() -> ServiceError:
    """AWS's answer to any blob that does not open: no message."""
    return ServiceError("InvalidCiphertextException", "")


# --------------------------------------------------------------------------- blobs


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """The encryption context as associated data: sorted compact JSON (``{}`` when empty)."""
    return json.dumps(
        dict(context or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def seal_blob(
    material_key: bytes, key_id: str, plaintext: bytes, context: Mapping[str, str] | None
) -> bytes:
    """A ciphertext blob of ``plaintext`` under the key ``key_id`` with ``context``."""
    header = BLOB_MAGIC + uuid.UUID(key_id).bytes
    nonce = os.urandom(_NONCE_SIZE)
    sealed = AESGCM(material_key).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + nonce + sealed


def parse_blob(blob: bytes) -> str:
    """The key id a blob names; ``InvalidCiphertextException`` if it is not one of ours."""
    if len(blob) < BLOB_OVERHEAD or not blob.startswith(BLOB_MAGIC):
        raise invalid_ciphertext()
    return str(uuid.UUID(bytes=blob[len(BLOB_MAGIC) : _HEADER]))


def open_blob(material_key: bytes, blob: bytes, context: Mapping[str, str] | None) -> bytes:
    """The plaintext; ``InvalidCiphertextException`` on a wrong key, context or any change."""
    parse_blob(blob)
    nonce, sealed = blob[_HEADER : _HEADER + _NONCE_SIZE], blob[_HEADER + _NONCE_SIZE :]
    try:
        return AESGCM(material_key).decrypt(
            nonce, sealed, blob[:_HEADER] + canonical_context(context)
        )
    except InvalidTag:
        raise invalid_ciphertext() from None


# --------------------------------------------------------------------------- keys


@dataclass
class Key:
    """A key as the handlers see it (material stays sealed until :func:`material`)."""

    key_id: str
    arn: str
    state: str
    created: datetime
    deletion_date: datetime | None
    sealed_material: str
    data: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.data.get("description", ""))

    @property
    def policy(self) -> str:
        return str(self.data["policy"])

    @property
    def tags(self) -> dict[str, str]:
        return {x["TagKey"]: x["TagValue"] for x in self.data.get("tags", [])}

    def metadata(self, account: str) -> dict[str, Any]:
        """``KeyMetadata`` as DescribeKey/CreateKey return it."""
        out: dict[str, Any] = {
            "AWSAccountId": account,
            "KeyId": self.key_id,
            "Arn": self.arn,
            "CreationDate": self.created,
            "Enabled": self.state == "Enabled",
            "Description": self.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": self.state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": ALGORITHM,
            "KeySpec": ALGORITHM,
            "EncryptionAlgorithms": [ALGORITHM],
            "MultiRegion": False,
        }
        if self.deletion_date is not None:
            out["DeletionDate"] = self.deletion_date
        return out


@dataclass(frozen=True)
class KeyRef:
    """A resolved ``KeyId``: the key, and the alias it was named by (``kms:RequestAlias``)."""

    key: Key
    alias: str | None = None


def _key(state: ServerState, row: dict[str, Any]) -> Key:
    cfg = state.config
    return Key(
        row["key_id"],
        key_arn(cfg.region, cfg.account_id, row["key_id"]),
        row["state"],
        row["created"],
        row["deletion_date"],
        row["material"],
        row["data"],
    )


def create_key(
    state: ServerState, description: str, policy: str, tags: list[dict[str, str]]
) -> Key:
    """A new Enabled key with 256 random bits of material, sealed under master.key."""
    key_id = str(uuid.uuid4())
    raw = base64.b64encode(os.urandom(MATERIAL_SIZE)).decode("ascii")
    row = {
        "key_id": key_id,
        "state": "Enabled",
        "created": datetime.now(UTC),
        "deletion_date": None,
        "material": state.box.seal(raw, key_id),
        "data": {"description": description, "policy": policy, "tags": tags},
    }
    state.store.insert(t.kms_keys, row)
    return _key(state, row)


def material(state: ServerState, key: Key) -> bytes:
    """The key's 32 bytes, unsealed for one operation."""
    return base64.b64decode(state.box.open(key.sealed_material, key.key_id))


def load_key(state: ServerState, key_id: str) -> Key | None:
    """The key with this id, or None; a key whose deletion date has passed is deleted now."""
    row = state.store.get(t.kms_keys, key_id=key_id)
    if row is None:
        return None
    due = row["deletion_date"]
    if row["state"] == "PendingDeletion" and due is not None and due <= datetime.now(UTC):
        with state.store.transaction() as c:
            state.store.delete(t.kms_keys, c, key_id=key_id)
            state.store.delete(t.kms_aliases, c, key_id=key_id)
        return None
    return _key(state, row)


def _key_not_found(arn: str) -> ServiceError:
    return ServiceError("NotFoundException", f"Key '{arn}' does not exist")


def _alias_not_found(arn: str) -> ServiceError:
    return ServiceError("NotFoundException", f"Alias {arn} is not found.")


def invalid_key_id(text: str) -> ServiceError:
    return ServiceError("NotFoundException", f"Invalid keyId {text}")


def resolve(state: ServerState, text: str, *, aliases: bool = True) -> KeyRef:
    """A ``KeyId`` as AWS accepts it: key id, key ARN, alias name or alias ARN.

    ``aliases=False`` for the operations that take only a key id or key ARN.
    """
    cfg = state.config
    arn = _ARN.fullmatch(text)
    if arn is not None:
        region, account, kind, name = arn.groups()
        if kind == "key":
            if region != cfg.region or account != cfg.account_id or not _UUID.fullmatch(name):
                raise _key_not_found(text)
            key = load_key(state, name.lower())
            if key is None:
                raise _key_not_found(text)
            return KeyRef(key)
        if not aliases:
            raise invalid_key_id(text)
        if region != cfg.region or account != cfg.account_id:
            raise _alias_not_found(text)
        return _by_alias(state, f"alias/{name}", text)
    if text.startswith("alias/"):
        if not aliases:
            raise invalid_key_id(text)
        return _by_alias(state, text, alias_arn(cfg.region, cfg.account_id, text))
    if _UUID.fullmatch(text):
        key = load_key(state, text.lower())
        if key is None:
            raise _key_not_found(key_arn(cfg.region, cfg.account_id, text))
        return KeyRef(key)
    raise invalid_key_id(text)


def _by_alias(state: ServerState, alias_name: str, shown: str) -> KeyRef:
    row = state.store.get(t.kms_aliases, alias_name=alias_name)
    key = load_key(state, row["key_id"]) if row is not None else None
    if key is None:
        raise _alias_not_found(shown)
    return KeyRef(key, alias_name)
