"""AWS's amazon-ssm-agent as a Hatchway node: the SSM calls only that agent makes.

* ``RegisterManagedInstance`` (unsigned; the activation authenticates it) registers the node
  with the activation exactly as Hatchway's own registration does (``nodes.register_node``),
  but keeps the node's RSA public key and fingerprint instead of issuing an access key.
* ``RequestManagedInstanceRoleToken`` and ``UpdateManagedInstancePublicKey`` are signed with
  the node's private key (:mod:`hatchway.server.front.rsaauth`). The first answers short-lived
  credentials of the activation's role for that node (``assumed-role/<role>/<instance-id>``,
  the same principal as Hatchway's nodes), which every later call uses with ordinary SigV4 and
  IAM decisions; the second replaces the key, the old one still accepted for ``KEY_GRACE``.
* ``UpdateInstanceInformation`` (ordinary SigV4, ``ssm:UpdateInstanceInformation`` on the
  node's own ARN) records agent name and version, platform and addresses for
  DescribeInstanceInformation.
* ec2messages ``GetMessages`` (Run Command's old channel, polled beside the control channel) is
  held ``--ping-interval`` seconds and answered with no messages.

The service-model supplement for these operations is ``data/ssm-private-2.json``. See
docs/aws-agent.md.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from hatchway.server.accounts import iamdata
from hatchway.server.accounts.bootstrap import create_access_key
from hatchway.server.awswire import jsonproto
from hatchway.server.awswire.models import load_service
from hatchway.server.awswire.validate import validate_input
from hatchway.server.base import crypto, logs
from hatchway.server.base.errors import ServiceError
from hatchway.server.control.awsagent_channel import AGENT_KIND
from hatchway.server.control.nodes import register_node
from hatchway.server.front import limits, pipeline, rsaauth, sigv4
from hatchway.server.front.call import Call, operation
from hatchway.server.front.identity import credential_lookup, lookup_key, resolve_caller
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import schema as t
from hatchway.ssm import target_arn

log = logging.getLogger("hatchway.server.ops.awsagent")

"""``data.agent_kind`` of a node registered by AWS's agent (its control-channel dialect)."""
ROLE_TOKEN_TTL = timedelta(hours=1)
"""Lifetime of the role credentials RequestManagedInstanceRoleToken hands out (the agent
refreshes them at half-life)."""
KEY_GRACE = timedelta(hours=1)
"""How long a node's previous public key is still accepted after UpdateManagedInstancePublicKey
(the agent re-tests the old key when it does not know whether the rotation went through)."""
PRIVATE_OPERATIONS = frozenset(
    {"RegisterManagedInstance", "RequestManagedInstanceRoleToken", "UpdateManagedInstancePublicKey"}
)
EC2MESSAGES_PREFIX = "EC2WindowsMessageDeliveryService."
_JSON_TYPE = "application/x-amz-json-1.1"


def _json_response(body: bytes, request_id: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=body, content_type=_JSON_TYPE, headers={"x-amzn-RequestId": request_id}
    )


def _error(err: ServiceError, request_id: str) -> web.Response:
    status, headers, body = jsonproto.serialize_json_error(err)
    return web.Response(
        status=status, body=body, headers={**headers, "x-amzn-RequestId": request_id}
    )


def _auth_error(exc: sigv4.AuthError) -> ServiceError:
    code, status = sigv4.error_code(exc.kind, "json")
    return ServiceError(code, exc.message, status)


async def intercept(
    state: ServerState, request: web.Request, incoming: sigv4.IncomingRequest
) -> web.Response | None:
    """The answer to one of AWS's agent's own calls, or None for any other API request (the
    front door then handles it as usual). The pipeline (hatchway.server.front.pipeline)
    commits before the answer, shapes errors in AWS's JSON 1.1 and writes the audit record
    this function describes."""
    target = (incoming.headers.get("X-Amz-Target") or "").strip()
    if target.startswith(EC2MESSAGES_PREFIX):
        return await _ec2messages(state, request, incoming, target[len(EC2MESSAGES_PREFIX) :])
    prefix, _, name = target.rpartition(".")
    if prefix != "AmazonSSM" or name not in PRIVATE_OPERATIONS:
        return None
    logs.OPERATION.set(f"ssm:{name}")
    call_id = logs.request_id()
    op = load_service("ssm").operation_model(name)
    outcome = pipeline.outcome_of(request)
    outcome.render = lambda err: _error(err, call_id)
    outcome.internal = ServiceError(
        "InternalServerError", "An internal error occurred.", 500, sender=False
    )
    entry = pipeline.AuditEntry(
        "ssm", name, "anonymous", "anonymous", limits.client_of(request).address, call_id
    )
    outcome.audit = entry
    if not state.audit_log.available():
        raise ServiceError(
            "InternalFailure",
            "The request was refused: its audit record cannot be written.",
            500,
            sender=False,
        )
    if name == "RegisterManagedInstance":
        params = _parse(op, incoming.body)
        entry.params = {k: params.get(k) for k in ("ActivationId", "Fingerprint", "PublicKeyType")}
        result = _register(state, params)
    else:
        instance_id, key_index = _authenticate(state, incoming)
        principal = target_arn(instance_id, state.config.region, state.config.account_id)
        entry.principal = entry.user_id = principal
        logs.PRINCIPAL.set(principal)
        params = _parse(op, incoming.body)
        if name == "RequestManagedInstanceRoleToken":
            entry.params = {"Fingerprint": params.get("Fingerprint")}
            result = _role_token(state, instance_id, params, key_index)
        else:
            entry.params = {"NewPublicKeyType": params.get("NewPublicKeyType")}
            result = _update_public_key(state, instance_id, params)
    return _json_response(jsonproto.serialize_json_output(op, result), call_id)


def _parse(op: Any, body: bytes) -> dict[str, Any]:
    params = jsonproto.parse_json_body(op, body)
    validate_input(op, params)
    return params


def _checked_key(text: str) -> str:
    try:
        rsaauth.load_public_key(text)
    except rsaauth.PublicKeyError as exc:
        raise ServiceError("ValidationException", str(exc)) from None
    return text


def _register(state: ServerState, params: dict[str, Any]) -> dict[str, Any]:
    if not params.get("ActivationCode") or not params.get("ActivationId"):
        # ``-register -role`` (registration with ambient IAM credentials) is AWS's own flow for
        # machines that already hold AWS credentials; Hatchway registers with activations.
        raise ServiceError(
            "InvalidActivation", "Activation ID or activation code is invalid or expired."
        )
    key = _checked_key(params["PublicKey"])
    now = datetime.now(UTC)
    return register_node(
        state,
        {"ActivationId": params["ActivationId"], "ActivationCode": params["ActivationCode"]},
        key_auth={
            "agent_kind": AGENT_KIND,
            "agent_name": AGENT_KIND,
            "public_key": key,
            "public_key_type": params.get("PublicKeyType") or "Rsa",
            "fingerprint": params["Fingerprint"],
            "key_created": now.isoformat(),
        },
    )


def _node(state: ServerState, instance_id: str) -> dict[str, Any] | None:
    row = state.store.get(t.instances, instance_id=instance_id)
    if row is None or row["deregistered"] or row["data"].get("agent_kind") != AGENT_KIND:
        return None
    return row


def _public_keys(state: ServerState, instance_id: str) -> list[str]:
    row = _node(state, instance_id)
    if row is None:
        return []
    data = row["data"]
    keys = [str(data["public_key"])]
    previous, until = data.get("previous_public_key"), data.get("previous_key_until")
    if previous and until and datetime.fromisoformat(until) > datetime.now(UTC):
        keys.append(str(previous))
    return keys


def _authenticate(state: ServerState, incoming: sigv4.IncomingRequest) -> tuple[str, int]:
    try:
        signed = rsaauth.verify(
            incoming,
            lambda iid: _public_keys(state, iid),
            datetime.now(UTC),
            region=state.config.region,
        )
    except sigv4.AuthError as exc:
        raise _auth_error(exc) from None
    return signed.instance_id, signed.key_index


def _role_token(
    state: ServerState, instance_id: str, params: dict[str, Any], key_index: int
) -> dict[str, Any]:
    row = _node(state, instance_id)
    if row is None:  # deregistered since it was authenticated, a moment ago
        raise ServiceError("InvalidInstanceId", "Instance Id is invalid")
    data = row["data"]
    if not hmac.compare_digest(str(data.get("fingerprint", "")), params["Fingerprint"]):
        # The node's hardware fingerprint changed: another machine holds its key, or the
        # machine was rebuilt. AWS refuses; an operator registers the machine again.
        raise ServiceError(
            "InvalidInstanceId",
            f"The fingerprint does not match the one {instance_id} registered with.",
        )
    role = iamdata.get_entity(state.store, "role", str(data.get("role_name", "")))
    if role is None or role["entity_id"] != data.get("role_id"):
        raise ServiceError(
            "AccessDeniedException",
            f"The IAM role of {instance_id}'s activation no longer exists.",
        )
    now = datetime.now(UTC)
    expires = (now + ROLE_TOKEN_TTL).replace(microsecond=0)
    akid = crypto.access_key_id(temporary=True)
    session_token = crypto.token(96)
    with state.store.transaction() as c:
        for old in state.store.select(
            t.access_keys, conn=c, owner_kind="node", owner_name=instance_id
        ):
            if old["expires"] is not None and old["expires"] <= now:
                state.store.delete(t.access_keys, c, access_key_id=old["access_key_id"])
        _, secret = create_access_key(
            state,
            "node",
            instance_id,
            akid,
            expires=expires,
            data={
                "role_name": role["name"],
                "role_id": role["entity_id"],
                "session_name": instance_id,
                "instance_id": instance_id,
                "session_token": state.box.seal(session_token, akid),
            },
            conn=c,
        )
    return {
        "AccessKeyId": akid,
        "SecretAccessKey": secret,
        "SessionToken": session_token,
        "TokenExpirationDate": expires,
        # True would ask the agent to rotate its key pair; no operator command asks it yet.
        "UpdateKeyPair": bool(data.get("rotate_key")) and key_index == 0,
    }


def _update_public_key(
    state: ServerState, instance_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    key = _checked_key(params["NewPublicKey"])
    row = _node(state, instance_id)
    if row is None:
        raise ServiceError("InvalidInstanceId", "Instance Id is invalid")
    data = dict(row["data"])
    now = datetime.now(UTC)
    if key != data["public_key"]:
        data.update(
            previous_public_key=data["public_key"],
            previous_key_until=(now + KEY_GRACE).isoformat(),
            public_key=key,
            public_key_type=params["NewPublicKeyType"],
            key_created=now.isoformat(),
        )
    data.pop("rotate_key", None)
    state.store.update(t.instances, {"instance_id": instance_id}, {"data": data})
    return {}


_INFO: dict[str, str] = {
    "AgentName": "agent_name",
    "AgentVersion": "agent_version",
    "PlatformName": "platform_name",
    "PlatformVersion": "platform_version",
    "ComputerName": "computer_name",
    "IPAddress": "ip_address",
    "AgentStatus": "agent_status",
}


@operation("ssm", "UpdateInstanceInformation")
async def update_instance_information(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """The agent's health report: a node updates its own facts (AWS's managed policy grants
    ``ssm:UpdateInstanceInformation`` on ``*``; a node's credentials name only itself)."""
    iid = params["InstanceId"]
    call.authorize("ssm:UpdateInstanceInformation", target_arn(iid, call.region, call.account))
    row = call.store.get(t.instances, instance_id=iid)
    if row is None or row["deregistered"] or call.caller.kind != "node" or call.caller.name != iid:
        raise ServiceError("InvalidInstanceId", "Instance Id is invalid")
    data = dict(row["data"])
    for member, key in _INFO.items():
        value = params.get(member)
        if value:
            data[key] = str(value)[:255]
    call.store.update(
        t.instances, {"instance_id": iid}, {"data": data, "last_ping": datetime.now(UTC)}
    )
    return {}


async def _ec2messages(
    state: ServerState, request: web.Request, incoming: sigv4.IncomingRequest, name: str
) -> web.Response:
    """Run Command's old message service: a node's GetMessages is held and answered empty
    (Hatchway runs commands over the control channel); anything else is refused."""
    logs.OPERATION.set(f"ec2messages:{name}")
    call_id = logs.request_id()
    try:
        verified = sigv4.verify(
            incoming,
            credential_lookup(state),
            datetime.now(UTC),
            regions=(state.config.region,),
            service="ec2messages",
        )
    except sigv4.AuthError as exc:
        return _error(_auth_error(exc), call_id)
    entry = lookup_key(state, verified.access_key_id)
    caller = resolve_caller(state, entry.row) if entry is not None else None
    if caller is None or caller.kind != "node":
        return _error(
            ServiceError("AccessDeniedException", "Only a managed node may poll for messages."),
            call_id,
        )
    if name != "GetMessages":
        return _error(
            ServiceError("UnknownOperationException", f"Hatchway does not implement {name}."),
            call_id,
        )
    if not state.draining:
        await asyncio.sleep(max(0.0, state.config.ping_interval))
    try:
        body = jsonproto.load_document(incoming.body) if incoming.body else {}
    except ServiceError as exc:
        return _error(exc, call_id)
    destination = body.get("Destination") if isinstance(body, dict) else None
    return web.json_response(
        {
            "Destination": destination or caller.name,
            "Messages": [],
            "MessagesRequestId": str(uuid.uuid4()),
        },
        content_type=_JSON_TYPE,
        headers={"x-amzn-RequestId": call_id},
    )
