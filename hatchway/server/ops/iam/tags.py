"""Tags of users and roles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    QUOTA_NAME,
    check_tags,
    get_entity_row,
    merge_tags,
    page_of,
    require,
    tag_context,
)
from hatchway.server.store import schema as t


async def _tag(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name = params[f"{label}Name"]
    tags = check_tags(params["Tags"])
    require(call, f"iam:Tag{label}", kind, name, tag_context(tags))
    with call.store.transaction() as c:
        row = get_entity_row(call, kind, name, c)
        merged = merge_tags(kind, row["data"].get("tags", []), tags)
        call.store.update(
            t.iam_entities,
            {"kind": kind, "name": name},
            {"data": {**row["data"], "tags": merged}},
            c,
        )
    call.state.iam_changed()
    return {}


async def _untag(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    name, keys = params[f"{label}Name"], list(params["TagKeys"])
    require(call, f"iam:Untag{label}", kind, name, {"aws:TagKeys": keys})
    drop = {k.lower() for k in keys}
    with call.store.transaction() as c:
        row = get_entity_row(call, kind, name, c)
        kept = [x for x in row["data"].get("tags", []) if x["Key"].lower() not in drop]
        call.store.update(
            t.iam_entities, {"kind": kind, "name": name}, {"data": {**row["data"], "tags": kept}}, c
        )
    call.state.iam_changed()
    return {}


async def _list_tags(call: Call, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    label = QUOTA_NAME[kind]
    row = require(call, f"iam:List{label}Tags", kind, params[f"{label}Name"])
    page, meta = page_of(list(row["data"].get("tags", [])), params)
    return {"Tags": page, **meta}


@operation("iam", "TagUser")
async def tag_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _tag(call, "user", params)


@operation("iam", "TagRole")
async def tag_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _tag(call, "role", params)


@operation("iam", "UntagUser")
async def untag_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _untag(call, "user", params)


@operation("iam", "UntagRole")
async def untag_role(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _untag(call, "role", params)


@operation("iam", "ListUserTags")
async def list_user_tags(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_tags(call, "user", params)


@operation("iam", "ListRoleTags")
async def list_role_tags(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return await _list_tags(call, "role", params)
