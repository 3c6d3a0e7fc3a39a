"""Group membership: add and remove a user, a user's groups."""

from __future__ import annotations

from typing import Any

from hatchway.server.accounts import iamdata
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    MAX_GROUPS_PER_USER,
    entity_shape,
    get_entity_row,
    limit_exceeded,
    no_entity,
    page_of,
    require,
)
from hatchway.server.store import schema as t


@operation("iam", "AddUserToGroup")
async def add_user_to_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    group, user = params["GroupName"], params["UserName"]
    require(call, "iam:AddUserToGroup", "group", group)
    with call.store.transaction() as c:
        get_entity_row(call, "group", group, c)
        get_entity_row(call, "user", user, c)
        if call.store.get(t.iam_group_members, c, group_name=group, user_name=user):
            return {}
        if call.store.count(t.iam_group_members, c, user_name=user) >= MAX_GROUPS_PER_USER:
            raise limit_exceeded(f"Cannot exceed quota for GroupsPerUser: {MAX_GROUPS_PER_USER}")
        call.store.insert(t.iam_group_members, {"group_name": group, "user_name": user}, c)
    call.state.iam_changed()
    return {}


@operation("iam", "RemoveUserFromGroup")
async def remove_user_from_group(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    group, user = params["GroupName"], params["UserName"]
    require(call, "iam:RemoveUserFromGroup", "group", group)
    with call.store.transaction() as c:
        get_entity_row(call, "user", user, c)
        if not call.store.delete(t.iam_group_members, c, group_name=group, user_name=user):
            raise no_entity("user", user)
    call.state.iam_changed()
    return {}


@operation("iam", "ListGroupsForUser")
async def list_groups_for_user(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["UserName"]
    require(call, "iam:ListGroupsForUser", "user", name)
    groups = [
        g
        for g in (
            iamdata.get_entity(call.store, "group", n)
            for n in sorted(iamdata.groups_of(call.store, name))
        )
        if g
    ]
    page, meta = page_of(groups, params)
    return {"Groups": [entity_shape(g) for g in page], **meta}
