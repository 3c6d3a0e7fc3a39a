"""First start: the admin user and its key, the node service role."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection

from hatchway.server.accounts import awsmanaged, iamdata
from hatchway.server.base import crypto
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import schema as t

ADMIN_USER = "admin"
NODE_ROLE = "SSMServiceRole"

# AWS managed policies are data shipped in the package (awsmanaged.py), resolved by ARN; the
# starting state only attaches them.
ADMIN_POLICY = awsmanaged.PREFIX + "/AdministratorAccess"
NODE_POLICY = awsmanaged.PREFIX + "/AmazonSSMManagedInstanceCore"

SSM_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ssm.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


SESSION_KEYS_POLICY = "HatchwaySessionDataKeys"


def session_keys_policy(region: str, account: str) -> dict[str, object]:
    """The node role's inline grant for KMS-encrypted sessions (docs/kms.md).

    ``kms:Decrypt`` on this account's keys, only for a session data key whose encryption
    context names the calling node as the target (the role session name of a node's
    credentials is its instance id, so ``aws:userid`` ends with ``:<instance id>``).
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DecryptDataKeysOfSessionsOnThisNode",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": f"arn:aws:kms:{region}:{account}:key/*",
                "Condition": {
                    "StringLike": {"aws:userid": "*:${kms:EncryptionContext:aws:ssm:TargetId}"}
                },
            }
        ],
    }


def _now() -> datetime:
    return datetime.now(UTC)


def create_entity(
    state: ServerState, kind: str, name: str, prefix: str, data: dict[str, object]
) -> dict[str, object]:
    now = _now()
    row: dict[str, object] = {
        "kind": kind,
        "name": name,
        "entity_id": crypto.unique_id(prefix),
        "arn": iamdata.entity_arn(state.config.account_id, kind, "/", name),
        "path": "/",
        "created": now,
        "data": data,
    }
    state.store.insert(t.iam_entities, row)
    return row


def create_access_key(
    state: ServerState,
    owner_kind: str,
    owner_name: str,
    access_key_id: str | None = None,
    secret: str | None = None,
    data: dict[str, object] | None = None,
    expires: datetime | None = None,
    conn: Connection | None = None,
) -> tuple[str, str]:
    """Store a new key (secret sealed under the master key); returns (id, secret)."""
    akid = access_key_id or crypto.access_key_id(temporary=owner_kind == "session")
    sk = secret or crypto.secret_access_key()
    state.store.insert(
        t.access_keys,
        {
            "access_key_id": akid,
            "owner_kind": owner_kind,
            "owner_name": owner_name,
            "secret": state.box.seal(sk, akid),
            "status": "Active",
            "created": _now(),
            "expires": expires,
            "data": data or {},
        },
        conn,
    )
    return akid, sk


def write_credentials_file(
    path: Path, access_key_id: str, secret: str, session_token: str | None = None
) -> None:
    """AWS credentials-file format, created with mode 0600 before anything is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[default]\n")
        f.write(f"aws_access_key_id = {access_key_id}\n")
        f.write(f"aws_secret_access_key = {secret}\n")
        if session_token:
            f.write(f"aws_session_token = {session_token}\n")
    os.chmod(path, 0o600)


def bootstrap(state: ServerState, seed: Callable[[ServerState], None]) -> tuple[str, str] | None:
    """Create the account's starting state once; returns the admin key if it was generated.
    ``seed`` adds what the operations own (AWS-owned documents: ``ops.seed_account``, a layer
    above this one)."""
    if state.store.meta_get("bootstrapped") == "1":
        return None
    if iamdata.get_entity(state.store, "user", ADMIN_USER) is None:
        create_entity(state, "user", ADMIN_USER, "AIDA", {"tags": []})
        state.store.insert(
            t.iam_attachments,
            {"kind": "user", "name": ADMIN_USER, "policy_arn": ADMIN_POLICY},
        )
    if iamdata.get_entity(state.store, "role", NODE_ROLE) is None:
        create_entity(
            state,
            "role",
            NODE_ROLE,
            "AROA",
            {
                "tags": [],
                "trust": json.dumps(SSM_TRUST),
                "max_session_duration": 3600,
                "description": "Role of Hatchway nodes (managed instances)",
            },
        )
        state.store.insert(
            t.iam_attachments,
            {"kind": "role", "name": NODE_ROLE, "policy_arn": NODE_POLICY},
        )
        grant = session_keys_policy(state.config.region, state.config.account_id)
        state.store.insert(
            t.iam_inline,
            {
                "kind": "role",
                "name": NODE_ROLE,
                "policy_name": SESSION_KEYS_POLICY,
                "document": json.dumps(grant),
            },
        )
    env_id = os.environ.get("HATCHWAY_ADMIN_ACCESS_KEY_ID")
    env_secret = os.environ.get("HATCHWAY_ADMIN_SECRET_ACCESS_KEY")
    generated: tuple[str, str] | None = None
    if env_id and env_secret:
        create_access_key(state, "user", ADMIN_USER, env_id, env_secret)
    else:
        generated = create_access_key(state, "user", ADMIN_USER)
        write_credentials_file(state.config.data_dir / "admin-credentials", *generated)
    seed(state)
    state.store.meta_set("bootstrapped", "1")
    state.iam_changed()
    return generated
