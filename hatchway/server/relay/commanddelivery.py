"""Run Command's delivery: the duty of the process that holds nodes' control channels. It
sends each waiting invocation to its node (MaxConcurrency, MaxErrors, Delayed when the node is
away) and the cancellations of running ones, then, under the cluster's lease, the timeouts
(:func:`hatchway.server.ops.commandduty.expire_commands`). The invocations' states are kept by
:mod:`hatchway.server.ops.commandduty`, which the operations use; this module sits a layer above
them because it reads the channels this process holds (``state.nodes``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hatchway.server.base import metrics
from hatchway.server.control.nodes import ping_status
from hatchway.server.ops.commandduty import (
    expire_commands,
    kick_event,
    now,
    refresh_command,
    set_invocation,
)
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import schema as t
from hatchway.ssm import runcommand as rc

log = logging.getLogger("hatchway.server.commands")


async def run_command_duties(state: ServerState, interval: float = 1.0) -> None:
    """The primary's loop: delivery and timeouts every ``interval`` seconds, or at once
    when kicked."""
    event = kick_event(state)
    metrics.duty_lag("run_command", 0.0)
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await event.wait()
        event.clear()
        try:
            await deliver_commands(state)
        except Exception:
            log.exception("could not deliver commands")
        if not state.leader():  # timeouts: once across the cluster (docs/scale-out.md)
            continue
        try:
            await expire_commands(state)
        except Exception:
            log.exception("could not expire commands")


def delivery_message(command: dict[str, Any], instance_id: str) -> dict[str, Any]:
    d = command["data"]
    return {
        "type": "send_command",
        "commandId": command["command_id"],
        "instanceId": instance_id,
        "documentName": d["document_name"],
        "plugins": d["plugins"],
        "environment": {f"HATCHWAY_PARAM_{k}": v for k, v in d.get("environment", {}).items()},
    }


async def deliver_commands(state: ServerState) -> int:
    """Send what is waiting to the nodes this process holds, and the cancellations of what
    they run; returns how many commands were sent."""
    inv_c = t.command_invocations.c
    for inv in state.store.select(t.command_invocations, inv_c.status == "Cancelling"):
        channel = state.nodes.get(inv["instance_id"])
        if channel is None or inv["data"].get("cancel_sent", True):
            continue
        keep = (inv["status"], inv["data"]["status_details"])
        if set_invocation(
            state,
            inv,
            keep,
            only_from=("Cancelling",),
            plugins=inv["data"].get("plugins", []),
            cancel_sent=True,
        ):
            with contextlib.suppress(Exception):
                await channel.send({"type": "cancel_command", "commandId": inv["command_id"]})
    waiting = state.store.select(
        t.command_invocations, inv_c.status.in_(rc.WAITING), order_by=[inv_c.requested]
    )
    sent = 0
    commands: dict[str, dict[str, Any] | None] = {}
    for inv in waiting:
        cid = inv["command_id"]
        if cid not in commands:
            commands[cid] = state.store.get(t.commands, command_id=cid)
        command = commands[cid]
        if command is None or command["status"] not in ("Pending", "InProgress"):
            continue
        siblings = state.store.select(t.command_invocations, inv_c.command_id == cid)
        d = command["data"]
        errors = sum(
            1
            for s in siblings
            if (s["status"], s["data"].get("status_details")) in (rc.FAILED, rc.EXECUTION_TIMED_OUT)
        )
        if errors > rc.max_count(d["max_errors"], len(siblings)):
            # MaxErrors reached: the rest is not sent (AWS: "Terminated").
            set_invocation(state, inv, rc.TERMINATED, only_from=tuple(rc.WAITING))
            refresh_command(state, cid)
            continue
        running = sum(1 for s in siblings if s["status"] in ("InProgress", "Cancelling"))
        if running >= max(1, rc.max_count(d["max_concurrency"], len(siblings))):
            continue
        iid = inv["instance_id"]
        channel = state.nodes.get(iid)
        if channel is None:
            node = state.store.node(iid)
            if node is None or node["deregistered"]:
                set_invocation(state, inv, rc.UNDELIVERABLE, only_from=tuple(rc.WAITING))
                refresh_command(state, cid)
            elif inv["status"] == "Pending" and ping_status(state, node) != "Online":
                set_invocation(state, inv, rc.DELAYED, only_from=("Pending",))
                refresh_command(state, cid)
            continue
        delivered = now()
        if not set_invocation(
            state, inv, rc.IN_PROGRESS, only_from=tuple(rc.WAITING), delivered=delivered.isoformat()
        ):
            continue  # another broker took it
        try:
            await channel.send(delivery_message(command, iid))
        except Exception as exc:  # the channel broke: it goes back to waiting
            log.warning("could not deliver %s to %s: %s", cid, iid, exc)
            fresh = state.store.get(t.command_invocations, command_id=cid, instance_id=iid)
            if fresh is not None:
                set_invocation(state, fresh, rc.DELAYED, only_from=("InProgress",))
            continue
        sent += 1
        refresh_command(state, cid)
    return sent
