"""IAM users' access keys: create, list, update (activate/deactivate), delete."""

from __future__ import annotations

from typing import Any

from hatchway.server.accounts.bootstrap import create_access_key as _store_access_key
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    MAX_ACCESS_KEYS,
    limit_exceeded,
    page_of,
    require,
    self_user,
)
from hatchway.server.store import Record
from hatchway.server.store import schema as t


def _key_shape(row: Record) -> dict[str, Any]:
    return {
        "UserName": row["owner_name"],
        "AccessKeyId": row["access_key_id"],
        "Status": row["status"],
        "CreateDate": row["created"],
    }


def _user_key(call: Call, user: str, akid: str) -> Record:
    row = call.store.get(t.access_keys, access_key_id=akid)
    if row is None or row["owner_kind"] != "user" or row["owner_name"] != user:
        raise ServiceError("NoSuchEntity", f"The Access Key with id {akid} cannot be found.", 404)
    return row


@operation("iam", "CreateAccessKey")
async def create_access_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = self_user(call, params)
    require(call, "iam:CreateAccessKey", "user", name)
    if call.store.count(t.access_keys, owner_kind="user", owner_name=name) >= MAX_ACCESS_KEYS:
        raise limit_exceeded(f"Cannot exceed quota for AccessKeysPerUser: {MAX_ACCESS_KEYS}")
    akid, secret = _store_access_key(call.state, "user", name)
    row = call.store.get(t.access_keys, access_key_id=akid)
    assert row is not None  # stored just now
    call.state.iam_changed()
    return {"AccessKey": {**_key_shape(row), "SecretAccessKey": secret}}


@operation("iam", "ListAccessKeys")
async def list_access_keys(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = self_user(call, params)
    require(call, "iam:ListAccessKeys", "user", name)
    rows = call.store.select(
        t.access_keys, owner_kind="user", owner_name=name, order_by=[t.access_keys.c.created]
    )
    page, meta = page_of(rows, params)
    return {"AccessKeyMetadata": [_key_shape(r) for r in page], **meta}


@operation("iam", "DeleteAccessKey")
async def delete_access_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = self_user(call, params)
    require(call, "iam:DeleteAccessKey", "user", name)
    akid = params["AccessKeyId"]
    _user_key(call, name, akid)
    call.store.delete(t.access_keys, access_key_id=akid)
    call.state.iam_changed()
    return {}


@operation("iam", "UpdateAccessKey")
async def update_access_key(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = self_user(call, params)
    require(call, "iam:UpdateAccessKey", "user", name)
    akid, status = params["AccessKeyId"], params["Status"]
    _user_key(call, name, akid)
    if status not in ("Active", "Inactive"):
        raise ServiceError("InvalidInput", f"Invalid status {status}.", 400)
    call.store.update(t.access_keys, {"access_key_id": akid}, {"status": status})
    call.state.iam_changed()
    return {}
