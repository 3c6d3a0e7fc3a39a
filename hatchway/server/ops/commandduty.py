"""Run Command's background duties and the nodes' answers (docs/run-command.md).

Two duties, each one function so that a lease can hold it once across brokers:

* :func:`deliver_commands`: send Pending/Delayed invocations to the nodes whose control channel
  this process holds (MaxConcurrency and MaxErrors applied per command); an invocation whose
  node is not connected anywhere becomes Delayed. A conditional update (Pending/Delayed →
  InProgress) makes each delivery happen once even if two brokers tried.
* :func:`expire_commands`: invocations not delivered within the command's TimeoutSeconds end
  ``Delivery Timed Out``; delivered ones whose node never answered within the execution
  timeout (plus :data:`ANSWER_GRACE`) end ``Execution Timed Out`` (the node enforces the
  execution timeout itself and normally answers first).

The node's messages over the control channel: ``command_started`` and ``command_result``
(see :func:`on_node_message`); the broker sends ``send_command`` and ``cancel_command``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

from hatchway.server.runtime.state import ServerState
from hatchway.server.store import schema as t
from hatchway.ssm import runcommand as rc

log = logging.getLogger("hatchway.server.commands")

NODE_MESSAGES = frozenset({"command_started", "command_result"})
"""Control-channel messages from a node about Run Command."""
ANSWER_GRACE = 60.0
"""Seconds beyond a command's execution timeout the broker waits for the node's answer."""


def now() -> datetime:
    return datetime.now(UTC)


def parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


_KICKS: weakref.WeakKeyDictionary[ServerState, asyncio.Event] = weakref.WeakKeyDictionary()


def kick_event(state: ServerState) -> asyncio.Event:
    """The event the delivery duty (hatchway.server.relay.commanddelivery) waits on."""
    return _KICKS.setdefault(state, asyncio.Event())


def kick(state: ServerState) -> None:
    """Run the delivery duty now (a SendCommand or a node's hello in this process)."""
    event = _KICKS.get(state)
    if event is not None:
        event.set()


def set_invocation(
    state: ServerState,
    inv: dict[str, Any],
    outcome: tuple[str, str],
    *,
    only_from: tuple[str, ...] | None = None,
    plugins: list[dict[str, Any]] | None = None,
    **data: Any,
) -> bool:
    """Move an invocation to ``outcome`` (if it still is in one of ``only_from``); its
    plugins follow unless given. Returns whether it changed."""
    status, details = outcome
    new = dict(inv["data"], status_details=details, **data)
    if plugins is None:
        plugins = [
            dict(p, status=status, status_details=details) if p.get("status") in rc.ACTIVE else p
            for p in inv["data"].get("plugins", [])
        ]
    new["plugins"] = plugins
    where = []
    if only_from is not None:
        where.append(t.command_invocations.c.status.in_(only_from))
    changed = state.store.update(
        t.command_invocations,
        {"command_id": inv["command_id"], "instance_id": inv["instance_id"]},
        {"status": status, "data": new},
        None,
        *where,
    )
    return bool(changed)


def refresh_command(state: ServerState, command_id: str) -> None:
    """The command's Status and StatusDetails from its invocations'."""
    command = state.store.get(t.commands, command_id=command_id)
    if command is None:
        return
    invs = state.store.select(
        t.command_invocations, t.command_invocations.c.command_id == command_id
    )
    d = command["data"]
    limit = rc.max_count(d["max_errors"], len(invs))
    status, details = rc.command_outcome(
        [(i["status"], i["data"].get("status_details", i["status"])) for i in invs],
        limit,
        cancelled=bool(d.get("cancelled")),
    )
    if status != command["status"] or details != d.get("status_details"):
        state.store.update(
            t.commands,
            {"command_id": command_id},
            {"status": status, "data": dict(d, status_details=details)},
        )


async def expire_commands(state: ServerState, clock: datetime | None = None) -> int:
    """Delivery and answer timeouts; returns how many invocations ended."""
    current = clock or now()
    inv_c = t.command_invocations.c
    ended = 0
    commands: dict[str, dict[str, Any] | None] = {}
    for inv in state.store.select(t.command_invocations, inv_c.status.in_(rc.ACTIVE)):
        cid = inv["command_id"]
        if cid not in commands:
            commands[cid] = state.store.get(t.commands, command_id=cid)
        command = commands[cid]
        if command is None:
            continue
        d = command["data"]
        if inv["status"] in rc.WAITING:
            if current >= inv["requested"] + timedelta(seconds=int(d["timeout_seconds"])):
                ended += set_invocation(
                    state, inv, rc.DELIVERY_TIMED_OUT, only_from=tuple(rc.WAITING)
                )
                refresh_command(state, cid)
            continue
        delivered = parse(inv["data"].get("delivered")) or inv["requested"]
        budget = sum(int(p.get("timeoutSeconds", 0)) for p in d["plugins"]) + ANSWER_GRACE
        if current >= delivered + timedelta(seconds=budget):
            outcome = rc.CANCELLED if inv["status"] == "Cancelling" else rc.EXECUTION_TIMED_OUT
            ended += set_invocation(state, inv, outcome, only_from=("InProgress", "Cancelling"))
            refresh_command(state, cid)
    return ended


async def request_cancel(state: ServerState, command_id: str, instance_ids: set[str]) -> None:
    """CancelCommand: waiting invocations end Cancelled; running ones become Cancelling and
    their node is asked to stop them (through whichever process holds its channel)."""
    command = state.store.get(t.commands, command_id=command_id)
    if command is None:
        return
    for inv in state.store.select(
        t.command_invocations, t.command_invocations.c.command_id == command_id
    ):
        if inv["instance_id"] not in instance_ids:
            continue
        if inv["status"] in rc.WAITING:
            set_invocation(state, inv, rc.CANCELLED, only_from=tuple(rc.WAITING))
        elif inv["status"] == "InProgress":
            set_invocation(
                state,
                inv,
                rc.CANCELLING,
                only_from=("InProgress",),
                plugins=inv["data"].get("plugins", []),
                cancel_sent=False,
            )
    every = {
        i["instance_id"]
        for i in state.store.select(
            t.command_invocations, t.command_invocations.c.command_id == command_id
        )
    }
    if instance_ids >= every:
        state.store.update(
            t.commands,
            {"command_id": command_id},
            {"data": dict(command["data"], cancelled=True)},
        )
    refresh_command(state, command_id)
    kick(state)  # the process holding the node's channel tells it (deliver_commands)


def _plugin_result(raw: Any, previous: dict[str, Any]) -> dict[str, Any]:
    """A node's report of one plugin, checked and capped (a node is not trusted to cap)."""
    r = raw if isinstance(raw, dict) else {}
    status = str(r.get("status", ""))
    details = {
        "Success": rc.SUCCESS,
        "Failed": rc.FAILED,
        "TimedOut": rc.EXECUTION_TIMED_OUT,
        "Cancelled": rc.CANCELLED,
    }.get(status, rc.FAILED)
    stdout = rc.string_prefix(str(r.get("stdout", "")), rc.STDOUT_LIMIT)
    stderr = rc.string_prefix(str(r.get("stderr", "")), rc.STDERR_LIMIT)
    code = r.get("responseCode")
    return dict(
        previous,
        status=details[0],
        status_details=details[1],
        response_code=code if isinstance(code, int) and not isinstance(code, bool) else -1,
        stdout=stdout,
        stderr=stderr,
        output=rc.plugin_output(stdout, stderr),
        start=_when(r.get("start")),
        end=_when(r.get("end")),
    )


def _when(value: Any) -> str | None:
    try:
        return parse(value).isoformat() if parse(value) else None  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def on_node_message(state: ServerState, instance_id: str, message: dict[str, Any]) -> None:
    """``command_started`` / ``command_result`` from a node, for its own invocations only."""
    cid = str(message.get("commandId", ""))
    inv = state.store.get(t.command_invocations, command_id=cid, instance_id=instance_id)
    if inv is None or inv["status"] not in ("InProgress", "Cancelling"):
        return
    plugins = inv["data"].get("plugins", [])
    if message.get("type") == "command_started":
        started = [dict(p, status="InProgress", status_details="In Progress") for p in plugins]
        set_invocation(state, inv, (inv["status"], inv["data"]["status_details"]), plugins=started)
        return
    reports = message.get("plugins")
    reports = reports if isinstance(reports, list) else []
    done: list[dict[str, Any]] = []
    for index, p in enumerate(plugins):
        report = reports[index] if index < len(reports) else None
        if report is None:  # not run (an earlier step was cancelled, or the node said less)
            done.append(
                dict(
                    p,
                    status="Cancelled" if inv["status"] == "Cancelling" else "Failed",
                    status_details="Cancelled" if inv["status"] == "Cancelling" else "Failed",
                )
            )
        else:
            done.append(_plugin_result(report, p))
    outcome = rc.invocation_outcome([(p["status"], p["status_details"]) for p in done])
    set_invocation(state, inv, outcome, only_from=("InProgress", "Cancelling"), plugins=done)
    refresh_command(state, cid)
    kick(state)  # a slot is free (MaxConcurrency)


def reconcile_node(
    state: ServerState, instance_id: str, running: set[str], since: datetime
) -> None:
    """A node said hello: what it was sent before this channel and no longer runs is lost
    (the node restarted): Failed. Waiting invocations are delivered now."""
    inv_c = t.command_invocations.c
    for inv in state.store.select(
        t.command_invocations,
        inv_c.instance_id == instance_id,
        inv_c.status.in_(("InProgress", "Cancelling")),
    ):
        delivered = parse(inv["data"].get("delivered"))
        if inv["command_id"] in running or delivered is None or delivered >= since:
            continue
        outcome = rc.CANCELLED if inv["status"] == "Cancelling" else rc.FAILED
        set_invocation(state, inv, outcome, only_from=("InProgress", "Cancelling"))
        refresh_command(state, inv["command_id"])
    kick(state)


def on_channel_message(
    state: ServerState, instance_id: str, message: dict[str, Any], connected_at: datetime
) -> None:
    """What a node's control channel hands over (``hatchway.server.control.nodes``): its
    hello (the invocations it still runs, then delivery of what waits) or a Run Command
    report (``command_started``, ``command_result``)."""
    if message.get("type") == "hello":
        commands = message.get("commands")
        if isinstance(commands, list):  # the Run Command invocations it still runs
            reconcile_node(state, instance_id, {str(c) for c in commands}, connected_at)
        kick(state)
    else:
        on_node_message(state, instance_id, message)
