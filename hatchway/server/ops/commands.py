"""Run Command: SendCommand, GetCommandInvocation, ListCommands, ListCommandInvocations,
CancelCommand (docs/run-command.md).

A command is one ``hw_commands`` row and one ``hw_command_invocations`` row per node. The
handlers only write rows; delivery to the nodes and the timeouts are background duties
(:mod:`hatchway.server.ops.commandduty`), which also take the nodes' results.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hatchway.server.accounts import iamdata
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.commandduty import kick, now, parse, request_cancel
from hatchway.server.ops.documents import load_document
from hatchway.server.ops.paging import page
from hatchway.server.ops.sessions import find_node
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import schema as t
from hatchway.ssm import runcommand as rc
from hatchway.ssm import target_arn
from hatchway.ssm.authorize import resource_tag_context
from hatchway.ssm.documents import DocumentError, validate_parameters

DEFAULT_TIMEOUT = 3600
"""SendCommand's TimeoutSeconds when not given (AWS: "Default value is 3600")."""
HATCHWAY_AGENT = "hatchway-agent"


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def runs_commands(node: Mapping[str, Any]) -> bool:
    """Whether the node's agent takes Run Command: Hatchway's own (or one that has not said
    which agent it is yet). Nodes running AWS's amazon-ssm-agent get InvalidInstanceId."""
    return str(node["data"].get("agent_name") or HATCHWAY_AGENT) == HATCHWAY_AGENT


def _invalid_instances(ids: list[str], account: str) -> ServiceError:
    # AWS's text for nodes it cannot send to (unknown, deregistered, not managed).
    return ServiceError(
        "InvalidInstanceId",
        f"Instances [[{', '.join(ids)}]] not in a valid state for account {account}",
    )


def _resolve_targets(call: Call, params: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The nodes a SendCommand names: (rows, whether by Targets)."""
    ids = params.get("InstanceIds")
    targets = params.get("Targets")
    if ids and targets:
        raise ServiceError("InvalidParameters", "Specify either InstanceIds or Targets, not both.")
    if not ids and not targets:
        raise ServiceError("InvalidParameters", "InstanceIds or Targets must be specified.")
    if ids:
        if len(set(ids)) != len(ids):
            raise ServiceError("DuplicateInstanceId", "Instance IDs must be unique.")
        rows: list[dict[str, Any]] = []
        bad: list[str] = []
        for iid in ids:
            node = find_node(call.state, iid)
            if node is None or node["deregistered"] or not runs_commands(node):
                bad.append(iid)
            else:
                rows.append(cast(dict[str, Any], node))
        if bad:
            raise _invalid_instances(bad, call.account)
        return rows, False
    live = [
        r
        for r in call.store.select(t.instances, order_by=[t.instances.c.registered])
        if not r["deregistered"]
    ]
    for target in targets or []:
        key, values = str(target.get("Key", "")), [str(v) for v in target.get("Values") or []]
        if key == "InstanceIds":
            live = [r for r in live if r["instance_id"] in values]
        elif key.startswith("tag:") and len(key) > 4:
            live = [r for r in live if iamdata.tags_dict(r).get(key[4:]) in values]
        elif key == "tag-key":
            live = [r for r in live if any(v in iamdata.tags_dict(r) for v in values)]
        else:
            raise ServiceError(
                "InvalidParameters",
                f"Target key {key} is not supported: use InstanceIds, tag:<key> or tag-key.",
            )
    return [r for r in live if runs_commands(r)], True


def _count(name: str, value: str, targets: int) -> int:
    try:
        return rc.max_count(value, targets)
    except ValueError:
        raise ServiceError("InvalidParameters", f"{name} {value} is not valid.") from None


@operation("ssm", "SendCommand")
async def send_command(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["DocumentName"]
    doc = load_document(call.state, name, params.get("DocumentVersion"))
    if doc is None or doc.document_type != "Command":
        if doc is None and params.get("DocumentVersion") and load_document(call.state, name):
            raise ServiceError("InvalidDocumentVersion", "The document version is not valid.")
        raise ServiceError("InvalidDocument", f"Document {name} does not exist.")
    call.authorize("ssm:SendCommand", doc.arn, resource_tag_context(doc.tags))
    nodes, by_targets = _resolve_targets(call, params)
    for node in nodes:
        iid = node["instance_id"]
        call.authorize(
            "ssm:SendCommand",
            target_arn(iid, call.region, call.account),
            resource_tag_context(iamdata.tags_dict(node)),
        )
    bucket = params.get("OutputS3BucketName")
    if bucket:
        call.authorize("ssm:SendCommand", f"arn:aws:s3:::{bucket}")
    try:
        values = validate_parameters(doc.document, params.get("Parameters"))
        plugins = rc.plugins_of(doc.document, values)
    except DocumentError as exc:
        raise ServiceError(exc.code, exc.message) from None
    max_concurrency = str(params.get("MaxConcurrency") or "50")
    max_errors = str(params.get("MaxErrors") or "0")
    _count("MaxConcurrency", max_concurrency, len(nodes))
    _count("MaxErrors", max_errors, len(nodes))
    timeout = int(params.get("TimeoutSeconds") or DEFAULT_TIMEOUT)
    requested = now()
    execution = sum(p.timeout for p in plugins)
    command_id = str(uuid.uuid4())
    data = {
        "document_name": name,
        "document_version": str(doc.version),
        "comment": params.get("Comment") or "",
        "parameters": params.get("Parameters") or {},
        "instance_ids": [] if by_targets else [n["instance_id"] for n in nodes],
        "targets": params.get("Targets") or [],
        "timeout_seconds": timeout,
        "expires_after": iso(requested + timedelta(seconds=timeout + execution)),
        "max_concurrency": max_concurrency,
        "max_errors": max_errors,
        "output_s3_bucket": bucket or "",
        "output_s3_prefix": params.get("OutputS3KeyPrefix") or "",
        "output_s3_region": params.get("OutputS3Region") or (call.region if bucket else ""),
        "service_role": params.get("ServiceRoleArn") or "",
        "requester": call.caller.principal.arn,
        "plugins": [p.message() for p in plugins],
        "environment": {k: " ".join(v) for k, v in values.items()},
        "status_details": (rc.NO_INSTANCES_IN_TAG if not nodes else rc.PENDING)[1],
        "cancelled": False,
    }
    status = (rc.NO_INSTANCES_IN_TAG if not nodes else rc.PENDING)[0]
    plugin_rows = [
        {"name": p.name, "status": "Pending", "status_details": "Pending", "response_code": -1}
        for p in plugins
    ]
    with call.store.transaction() as c:
        call.store.insert(
            t.commands,
            {"command_id": command_id, "requested": requested, "status": status, "data": data},
            c,
            savepoint=False,
        )
        for node in nodes:
            call.store.insert(
                t.command_invocations,
                {
                    "command_id": command_id,
                    "instance_id": node["instance_id"],
                    "requested": requested,
                    "status": "Pending",
                    "data": {
                        "status_details": "Pending",
                        "instance_name": node["data"].get("computer_name") or "",
                        "plugins": plugin_rows,
                    },
                },
                c,
                savepoint=False,
            )
    kick(call.state)
    row = call.store.get(t.commands, command_id=command_id)
    return {"Command": command_out(call.state, row)}


def _invocations(state: ServerState, command_id: str) -> list[dict[str, Any]]:
    return state.store.select(
        t.command_invocations,
        t.command_invocations.c.command_id == command_id,
        order_by=[t.command_invocations.c.instance_id],
    )


def command_out(state: ServerState, row: dict[str, Any] | None) -> dict[str, Any]:
    assert row is not None
    d = row["data"]
    invs = _invocations(state, row["command_id"])
    done = [i for i in invs if i["status"] not in rc.ACTIVE]
    errors = [
        i
        for i in done
        if (i["status"], i["data"].get("status_details"))
        in (rc.FAILED, rc.EXECUTION_TIMED_OUT, rc.UNDELIVERABLE)
    ]
    delivery = [
        i for i in done if (i["status"], i["data"].get("status_details")) == rc.DELIVERY_TIMED_OUT
    ]
    out: dict[str, Any] = {
        "CommandId": row["command_id"],
        "DocumentName": d["document_name"],
        "DocumentVersion": d["document_version"],
        "Comment": d["comment"],
        "ExpiresAfter": parse(d["expires_after"]),
        "Parameters": d["parameters"],
        "InstanceIds": d["instance_ids"],
        "Targets": d["targets"],
        "RequestedDateTime": row["requested"],
        "Status": row["status"],
        "StatusDetails": d["status_details"],
        "OutputS3Region": d["output_s3_region"],
        "OutputS3BucketName": d["output_s3_bucket"],
        "OutputS3KeyPrefix": d["output_s3_prefix"],
        "MaxConcurrency": d["max_concurrency"],
        "MaxErrors": d["max_errors"],
        "TargetCount": len(invs),
        "CompletedCount": len(done),
        "ErrorCount": len(errors),
        "DeliveryTimedOutCount": len(delivery),
        "ServiceRole": d["service_role"],
        "NotificationConfig": {},
        "CloudWatchOutputConfig": {
            "CloudWatchLogGroupName": "",
            "CloudWatchOutputEnabled": False,
        },
        "TimeoutSeconds": d["timeout_seconds"],
    }
    return out


def _plugin_out(command: dict[str, Any], plugin: dict[str, Any]) -> dict[str, Any]:
    d = command["data"]
    return {
        "Name": plugin["name"],
        "Status": _plugin_status(plugin["status"]),
        "StatusDetails": plugin["status_details"],
        "ResponseCode": int(plugin.get("response_code", -1)),
        "ResponseStartDateTime": parse(plugin.get("start")),
        "ResponseFinishDateTime": parse(plugin.get("end")),
        "Output": plugin.get("output", ""),
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "OutputS3Region": d["output_s3_region"],
        "OutputS3BucketName": d["output_s3_bucket"],
        "OutputS3KeyPrefix": d["output_s3_prefix"],
    }


def _plugin_status(status: str) -> str:
    """CommandPluginStatus has no Delayed nor Cancelling."""
    return {"Delayed": "Pending", "Cancelling": "InProgress"}.get(status, status)


def invocation_out(command: dict[str, Any], inv: dict[str, Any], details: bool) -> dict[str, Any]:
    d = command["data"]
    out: dict[str, Any] = {
        "CommandId": command["command_id"],
        "InstanceId": inv["instance_id"],
        "InstanceName": inv["data"].get("instance_name", ""),
        "Comment": d["comment"],
        "DocumentName": d["document_name"],
        "DocumentVersion": d["document_version"],
        "RequestedDateTime": inv["requested"],
        "Status": inv["status"],
        "StatusDetails": inv["data"].get("status_details", inv["status"]),
        "TraceOutput": "",
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "CommandPlugins": [],
        "ServiceRole": d["service_role"],
        "NotificationConfig": {},
        "CloudWatchOutputConfig": {
            "CloudWatchLogGroupName": "",
            "CloudWatchOutputEnabled": False,
        },
    }
    if details:
        out["CommandPlugins"] = [_plugin_out(command, p) for p in inv["data"].get("plugins", [])]
    return out


def _command(call: Call, command_id: str) -> dict[str, Any]:
    row: dict[str, Any] | None = call.store.get(t.commands, command_id=command_id)
    if row is None:
        raise ServiceError("InvalidCommandId", "The specified command ID isn't valid.")
    return row


def _elapsed(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return ""
    seconds = ((end or now()) - start).total_seconds()
    return f"PT{seconds:.3f}S"


def _stamp(value: datetime | None) -> str:
    return (
        value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z" if value else ""
    )


@operation("ssm", "GetCommandInvocation")
async def get_command_invocation(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:GetCommandInvocation", "*")
    command = _command(call, params["CommandId"])
    inv = call.store.get(
        t.command_invocations, command_id=command["command_id"], instance_id=params["InstanceId"]
    )
    if inv is None:
        raise ServiceError("InvocationDoesNotExist", "")
    plugins = inv["data"].get("plugins", [])
    wanted = params.get("PluginName")
    if wanted:
        found = [p for p in plugins if p["name"] == wanted]
        if not found:
            raise ServiceError("InvalidPluginName", "The plugin name isn't valid.")
        plugin = found[0]
    elif len(plugins) == 1:
        plugin = plugins[0]
    else:
        raise ServiceError(
            "InvalidPluginName",
            "The document has more than one step: PluginName is required.",
        )
    start, end = parse(plugin.get("start")), parse(plugin.get("end"))
    d = command["data"]
    status = inv["status"] if inv["status"] in rc.ACTIVE else plugin["status"]
    details = (
        inv["data"].get("status_details", status)
        if inv["status"] in rc.ACTIVE
        else plugin["status_details"]
    )
    return {
        "CommandId": command["command_id"],
        "InstanceId": inv["instance_id"],
        "Comment": d["comment"],
        "DocumentName": d["document_name"],
        "DocumentVersion": d["document_version"],
        "PluginName": plugin["name"],
        "ResponseCode": int(plugin.get("response_code", -1)),
        "ExecutionStartDateTime": _stamp(start),
        "ExecutionElapsedTime": _elapsed(start, end),
        "ExecutionEndDateTime": _stamp(end),
        "Status": status,
        "StatusDetails": details,
        "StandardOutputContent": plugin.get("stdout", ""),
        "StandardOutputUrl": "",
        "StandardErrorContent": plugin.get("stderr", ""),
        "StandardErrorUrl": "",
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
    }


def _time_filter(value: str) -> datetime:
    try:
        out = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ServiceError("InvalidFilterValue", f"{value} is not a valid date.") from None
    return out if out.tzinfo else out.replace(tzinfo=UTC)


Check = Callable[[dict[str, Any], dict[str, Any]], bool]


def _filter(key: str, value: str) -> Check:
    """One CommandFilter as a predicate on (command row, row listed)."""
    if key in ("InvokedAfter", "InvokedBefore"):
        when = _time_filter(value)
        after = key == "InvokedAfter"
        return lambda c, r: bool(r["requested"] >= when if after else r["requested"] <= when)
    if key == "Status":
        return lambda c, r: bool(r["status"] == value)
    if key == "DocumentName":
        return lambda c, r: bool(c["data"]["document_name"] == value)
    if key == "ExecutionStage":
        # Executing: not finished yet; Complete: finished (AWS's two values).
        if value not in ("Executing", "Complete"):
            raise ServiceError("InvalidFilterValue", f"{value} is not a valid value.")
        executing = value == "Executing"
        return lambda c, r: (r["status"] in rc.ACTIVE) == executing
    raise ServiceError("InvalidFilterKey", f"{key} is not a valid filter key.")


def _filters(params: dict[str, Any]) -> list[Check]:
    return [_filter(f["key"], f["value"]) for f in params.get("Filters") or []]


@operation("ssm", "ListCommands")
async def list_commands(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:ListCommands", "*")
    checks = _filters(params)
    if params.get("CommandId"):
        rows = [_command(call, params["CommandId"])]
    else:
        rows = call.store.select(t.commands, order_by=[t.commands.c.requested.desc()])
    iid = params.get("InstanceId")
    if iid:
        ids = {
            r["command_id"]
            for r in call.store.select(
                t.command_invocations, t.command_invocations.c.instance_id == iid
            )
        }
        rows = [r for r in rows if r["command_id"] in ids]
    rows = [r for r in rows if all(check(r, r) for check in checks)]
    chunk, nxt = page(rows, params, 50)
    return {"Commands": [command_out(call.state, r) for r in chunk], "NextToken": nxt}


@operation("ssm", "ListCommandInvocations")
async def list_command_invocations(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:ListCommandInvocations", "*")
    checks = _filters(params)
    cmd = t.command_invocations.c
    where = []
    commands: dict[str, dict[str, Any]] = {}
    if params.get("CommandId"):
        command = _command(call, params["CommandId"])
        commands[command["command_id"]] = command
        where.append(cmd.command_id == command["command_id"])
    if params.get("InstanceId"):
        where.append(cmd.instance_id == params["InstanceId"])
    rows = call.store.select(
        t.command_invocations, *where, order_by=[cmd.requested.desc(), cmd.instance_id]
    )
    for r in rows:
        if r["command_id"] not in commands:
            found = call.store.get(t.commands, command_id=r["command_id"])
            if found is not None:
                commands[r["command_id"]] = found
    rows = [
        r
        for r in rows
        if r["command_id"] in commands
        and all(check(commands[r["command_id"]], r) for check in checks)
    ]
    chunk, nxt = page(rows, params, 50)
    details = bool(params.get("Details"))
    return {
        "CommandInvocations": [
            invocation_out(commands[r["command_id"]], r, details) for r in chunk
        ],
        "NextToken": nxt,
    }


@operation("ssm", "CancelCommand")
async def cancel_command(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """Pending and Delayed invocations end Cancelled at once; those In Progress become
    Cancelling and the node is told to stop them (it answers Cancelled)."""
    call.authorize("ssm:CancelCommand", "*")
    command = _command(call, params["CommandId"])
    wanted = params.get("InstanceIds") or []
    if len(set(wanted)) != len(wanted):
        raise ServiceError("DuplicateInstanceId", "Instance IDs must be unique.")
    invs = _invocations(call.state, command["command_id"])
    known = {i["instance_id"] for i in invs}
    missing = [i for i in wanted if i not in known]
    if missing:
        raise _invalid_instances(missing, call.account)
    await request_cancel(call.state, command["command_id"], set(wanted) or known)
    return {}
