"""The HTTP front door: one endpoint for SSM and KMS (JSON 1.1), IAM and STS (Query).

Every API request is routed by ``X-Amz-Target`` (JSON: ``AmazonSSM.<Op>`` or
``TrentService.<Op>``) or ``Action`` + credential scope (Query),
authenticated with SigV4, parsed and validated from botocore's service models, handed to the
operation's handler (which takes the IAM decisions), serialized in AWS's shapes, and audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from urllib.parse import parse_qsl

from aiohttp import web
from botocore.model import OperationModel

from hatchway import __version__
from hatchway.iam import Policy
from hatchway.server.awswire import jsonproto, query
from hatchway.server.awswire.models import load_service
from hatchway.server.awswire.validate import validate_input
from hatchway.server.base import cpu, logs, metrics
from hatchway.server.base.crypto import SecretBox
from hatchway.server.base.errors import ServiceError
from hatchway.server.control.channels import LocalChannels
from hatchway.server.front import limits, pipeline, sigv4
from hatchway.server.front.call import INPUT_EXTENSIONS, OPERATIONS, Call
from hatchway.server.front.identity import (
    credential_lookup,
    lookup_key,
    resolve_caller,
    session_token_refusal,
)
from hatchway.server.front.pipeline import AuditEntry, outcome_of
from hatchway.server.gauges import StateCollector
from hatchway.server.ops import awsagent
from hatchway.server.recordings.keeper import Recordings
from hatchway.server.runtime import retention
from hatchway.server.runtime.state import STATE_KEY, ServerConfig, ServerState
from hatchway.server.store import Store

log = logging.getLogger("hatchway.server")

TASKS_KEY = web.AppKey("tasks", list)
_JSON_TYPE = "application/x-amz-json-1.1"
_JSON_SERVICES = {
    "AmazonSSM": "ssm",
    "TrentService": "kms",
    "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101": "cloudtrail",
    "Hatchway_20261201": "hatchway",
}
"""X-Amz-Target prefix → service (an unknown prefix is SSM's UnknownOperationException)."""


class _Route:
    """What a request asks for: protocol, service, operation model (or the error to send)."""

    def __init__(
        self,
        protocol: str,
        service: str,
        op: OperationModel | None,
        form: Mapping[str, str],
        error: ServiceError | None = None,
    ) -> None:
        self.protocol = protocol
        self.service = service
        self.op = op
        self.form = form
        self.error = error


def _route(req: sigv4.IncomingRequest) -> _Route:
    target = req.headers.get("X-Amz-Target") or req.headers.get("x-amz-target")
    if target is not None or req.headers.get("Content-Type", "").startswith(_JSON_TYPE):
        prefix = (target or "").strip().rpartition(".")[0]
        json_service = _JSON_SERVICES.get(prefix, "ssm")
        try:
            op = jsonproto.parse_target(target, load_service(json_service))
        except ServiceError as unknown:
            return _Route("json", json_service, None, {}, unknown)
        return _Route("json", json_service, op, {})
    form = dict(parse_qsl(req.query, keep_blank_values=True))
    if req.method == "POST":
        form.update(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
    scope = sigv4.signed_service_and_region(req)
    service = scope[0] if scope and scope[0] in ("iam", "sts") else None
    action = form.get("Action", "")
    if service is None:
        service = "sts" if load_service("sts").operation_names.count(action) else "iam"
    model = load_service(service)
    if action not in model.operation_names:
        err = ServiceError(
            "InvalidAction",
            f"Could not find operation {action} for version {model.api_version}"
            if action
            else "Missing Action",
            400,
        )
        return _Route("query", service, None, form, err)
    return _Route("query", service, model.operation_model(action), form)


GLOBAL_REGION = "us-east-1"
"""The region botocore signs IAM (and STS's global endpoint) with unless given an endpoint."""


def scope_regions(region: str, service: str) -> frozenset[str]:
    """The regions a credential scope may name for ``service`` on a broker in ``region``:
    IAM and STS also take ``us-east-1`` (global services; botocore signs them so), every
    other service (SSM, KMS, ssmmessages, ec2messages) only the broker's own region."""
    if service in ("iam", "sts"):
        return frozenset((region, GLOBAL_REGION))
    return frozenset((region,))


AUDIT_UNAVAILABLE = "The request was refused: its audit record cannot be written."


def _audit_unavailable(route: _Route) -> ServiceError:
    """Neither the store nor audit.jsonl takes audit events: AWS's server faults, JSON's
    InternalFailure (500) and Query's ServiceUnavailable (503)."""
    if route.protocol == "json":
        return ServiceError("InternalFailure", AUDIT_UNAVAILABLE, 500, sender=False)
    return ServiceError("ServiceUnavailable", AUDIT_UNAVAILABLE, 503, sender=False)


def _internal_error(route: _Route) -> ServiceError:
    """AWS's server fault for this protocol (JSON: InternalServerError; Query: InternalFailure)."""
    return ServiceError(
        "InternalServerError" if route.protocol == "json" else "InternalFailure",
        "An internal error occurred.",
        500,
        sender=False,
    )


def _error_response(route: _Route, err: ServiceError, request_id: str) -> web.Response:
    if route.protocol == "json":
        status, headers, body = jsonproto.serialize_json_error(err)
    else:
        status, headers, body = query.serialize_query_error(
            err, request_id, service=load_service(route.service)
        )
    return web.Response(
        status=status, body=body, headers={**headers, "x-amzn-RequestId": request_id}
    )


MAX_BODY = 4 * 1024 * 1024
"""Bytes of one API request's body (aiohttp's ``client_max_size``)."""


def _too_large(request: web.Request, request_id: str) -> web.Response:
    """A body over ``MAX_BODY``, refused unread with HTTP 413 in the protocol's own error shape
    (the Query protocol's service from the credential scope the Authorization header names)."""
    headers = request.headers
    message = f"Request must be smaller than {MAX_BODY} bytes."
    if "X-Amz-Target" in headers or headers.get("Content-Type", "").startswith(_JSON_TYPE):
        err = ServiceError("RequestEntityTooLargeException", message, 413)
        return _error_response(_Route("json", "ssm", None, {}), err, request_id)
    scope = headers.get("Authorization", "").partition("Credential=")[2].split("/")
    service = "sts" if len(scope) > 3 and scope[3] == "sts" else "iam"
    err = ServiceError("RequestEntityTooLarge", message, 413)
    return _error_response(_Route("query", service, None, {}), err, request_id)


def _json_error(err: ServiceError) -> web.Response:
    """An API error before the request's protocol is known: AWS JSON 1.1's shape."""
    status, headers, body = jsonproto.serialize_json_error(err)
    return web.Response(status=status, body=body, headers=headers)


async def handle_api(request: web.Request) -> web.Response:
    """The AWS API (``POST /``): route by protocol, verify SigV4, resolve the caller,
    throttle, parse and validate against botocore's model, run the operation. The pipeline
    (:mod:`hatchway.server.front.pipeline`) commits, audits and shapes errors around it."""
    outcome = outcome_of(request)
    outcome.api_call = True
    outcome.render = _json_error
    state = request.app[STATE_KEY]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request, logs.request_id())
    raw_path, _, raw_query = request.raw_path.partition("?")
    incoming = sigv4.IncomingRequest(
        request.method, raw_path, raw_query, dict(request.headers), body
    )
    answered = await awsagent.intercept(state, request, incoming)  # AWS's agent's own calls
    if answered is not None:
        return answered
    route = _route(incoming)
    call_id = logs.request_id()  # the access log's, the header's and the audit record's
    if route.op is not None:
        logs.OPERATION.set(f"{route.service}:{route.op.name}")
    if route.error is not None or route.op is None:
        logs.OPERATION.set(f"{route.service}:Unknown")
        return _error_response(route, route.error or ServiceError("InvalidAction", ""), call_id)
    op = route.op
    client = limits.client_of(request)
    source_ip = client.address
    try:
        verified = sigv4.verify(
            incoming,
            credential_lookup(state),
            datetime.now(UTC),
            regions=scope_regions(state.config.region, route.service),
            service=route.service,
        )
    except sigv4.AuthError as exc:
        code, status = sigv4.error_code(exc.kind, route.protocol)
        message = sigv4.error_message(exc, route.protocol)
        return _error_response(route, ServiceError(code, message, status), call_id)
    # The key was just found by the verification; a concurrent deletion is the only way the
    # lookup or the caller could now be missing.
    entry = lookup_key(state, verified.access_key_id)
    caller = resolve_caller(state, entry.row) if entry is not None else None
    if caller is None:
        code, status = sigv4.error_code("unknown_key", route.protocol)
        err = ServiceError(code, "The security token included in the request is invalid.", status)
        return _error_response(route, err, call_id)
    refusal = session_token_refusal(caller, route.service, op.name)
    if refusal is not None:
        kind, message = refusal
        if kind == "unknown_key":
            code, status = sigv4.error_code("unknown_key", route.protocol)
            return _error_response(route, ServiceError(code, message, status), call_id)
    logs.PRINCIPAL.set(caller.arn)
    # From here the call is audited, whatever its outcome, in its protocol's error shapes.
    outcome.render = partial(_error_response, route, request_id=call_id)
    outcome.internal = _internal_error(route)
    record = AuditEntry(route.service, op.name, caller.arn, caller.user_id, source_ip, call_id)
    record.access_key_id = verified.access_key_id
    record.user_agent = request.headers.get("User-Agent", "")
    outcome.audit = record
    if not state.throttle.allow(caller.arn):
        # AWS's ThrottlingException (JSON) or Throttling (Query), audited like any refusal.
        code = "ThrottlingException" if route.protocol == "json" else "Throttling"
        raise ServiceError(code, "Rate exceeded", 400)
    call = Call(
        state,
        route.service,
        op.name,
        route.protocol,
        caller,
        source_ip,
        request.headers.get("User-Agent", ""),
        client.secure,
        call_id,
    )
    record.decisions = call.decisions
    if not state.audit_log.available():
        raise _audit_unavailable(route)  # fail closed: nothing runs unaudited
    if route.protocol == "json":
        record.params = jsonproto.parse_json_body(op, body)
        extension = INPUT_EXTENSIONS.get((route.service, op.name))
        params = record.params
        validate_input(op, params if extension is None else extension(params))
    else:
        record.params = params = query.parse_query_input(op, route.form)
        validate_input(op, params, code="ValidationError")
    if refusal is not None:  # GetSessionToken credentials on an STS call AWS refuses them
        raise ServiceError("AccessDenied", refusal[1], 403)
    handler = OPERATIONS.get((route.service, op.name))
    if handler is None:
        raise ServiceError(
            "InvalidAction" if route.protocol == "query" else "UnknownOperationException",
            f"Hatchway does not implement {op.name}.",
        )
    result = await handler(call, params)
    if route.protocol == "json":
        response = web.Response(
            body=jsonproto.serialize_json_output(op, result), content_type=_JSON_TYPE
        )
    else:
        response = web.Response(
            body=query.serialize_query_output(op, result, call_id), content_type="text/xml"
        )
    response.headers["x-amzn-RequestId"] = call_id
    return response


async def handle_health(request: web.Request) -> web.Response:
    """Liveness only: 200 while the process runs (draining included). cpuJobs: simulations and
    the like running off this process's event loop right now."""
    return web.json_response({"status": "ok", "version": __version__, "cpuJobs": cpu.running()})


READY_TIMEOUT = 2.0
"""Seconds /readyz waits for the store's answer before calling it unreachable."""


async def handle_readyz(request: web.Request) -> web.Response:
    """Readiness: 503 while the broker drains (after SIGTERM) and while its store does not
    answer (a stopped PostgreSQL); else 200. Load balancers send new clients elsewhere."""
    state = request.app[STATE_KEY]
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    try:
        await asyncio.wait_for(asyncio.to_thread(state.store.ping), READY_TIMEOUT)
    except Exception as exc:  # unreachable, refused, timed out: not ready
        log.warning("readiness: the store does not answer: %s", " ".join(str(exc).split())[:300])
        return web.json_response({"status": "store unreachable"}, status=503)
    return web.json_response({"status": "ready"})


DRAIN_TIMEOUT = 2.0
"""Seconds the broker gives its websockets to close when it stops."""


async def _drain(app: web.Application) -> None:
    """On stop (aiohttp's on_shutdown, once the listener is closed): sessions end with
    "The broker is shutting down." sent to their clients, and every websocket, data and
    control channels alike, closes with 1001 so that agents reconnect at once."""
    from hatchway.server.control import nodes
    from hatchway.server.relay import datachannel

    state = app[STATE_KEY]
    state.draining = True
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            sessions = await datachannel.close_all(state)
            channels = await nodes.close_all(state)
    except TimeoutError:
        log.warning("stopping: some channels did not close within %.0f s", DRAIN_TIMEOUT)
    else:
        if sessions or channels:
            log.info("stopping: closed %d session(s) and %d node channel(s)", sessions, channels)


async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus' text format; unauthenticated and not audited, like /health (put it on
    another address with --metrics-listen)."""
    body = await asyncio.to_thread(metrics.exposition, StateCollector(request.app[STATE_KEY]))
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def _start_background(app: web.Application) -> None:
    from hatchway.server.relay.commanddelivery import run_command_duties
    from hatchway.server.relay.datachannel import enforce_timeouts, restore_relays

    state = app[STATE_KEY]
    restore_relays(state)  # sessions a previous run had open: resumed or ended, never stale
    if not state.config.workers:  # several processes: one commit per transaction
        state.store.batch_commits(asyncio.get_running_loop())
    app[TASKS_KEY] = [
        asyncio.create_task(state.audit_log.run()),
        asyncio.create_task(enforce_timeouts(state)),
        asyncio.create_task(state.recordings.run()),
        asyncio.create_task(run_command_duties(state)),
        asyncio.create_task(retention.run(state)),
    ]


async def _stop_background(app: web.Application) -> None:
    for task in app[TASKS_KEY]:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await app[STATE_KEY].recordings.close()  # audits deliveries: before the audit log closes
    app[STATE_KEY].audit_log.close()
    app[STATE_KEY].store.stop_batching()


def open_state(
    config: ServerConfig, store: Store, box: SecretBox, scps: list[list[Policy]]
) -> ServerState:
    """The state of a broker process with its services attached: the layers below the app
    cannot construct what sits above them (the session recordings, the channels)."""
    state = ServerState(config, store, box, scps)
    state.recordings = Recordings(state)
    state.channels = LocalChannels(state)  # an API worker or a cluster replaces it
    return state


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/health", handle_health, name="hatchway:Health")
    app.router.add_get("/readyz", handle_readyz, name="hatchway:Readiness")


def add_api_route(app: web.Application) -> None:
    """``POST /``: the AWS API (SSM, KMS, IAM, STS)."""
    app.router.add_post("/", handle_api, name="hatchway:Api")


def create_metrics_app(state: ServerState) -> web.Application:
    """``--metrics-listen``: /metrics, /health and /readyz on their own address."""
    app = web.Application(middlewares=pipeline.middlewares(guard=False))
    app[STATE_KEY] = state
    add_health_routes(app)
    app.router.add_get("/metrics", handle_metrics, name="hatchway:Metrics")
    return app


def create_app(state: ServerState) -> web.Application:
    """The aiohttp application; extra routes (registration, channels) come from other modules."""
    from hatchway.server.control import awsagent_channel, nodes
    from hatchway.server.ops import commandduty, register_all
    from hatchway.server.relay import datachannel

    register_all()
    app = web.Application(client_max_size=MAX_BODY, middlewares=pipeline.middlewares(guard=True))
    app[STATE_KEY] = state
    app.on_startup.append(_start_background)
    app.on_shutdown.append(_drain)
    app.on_cleanup.append(_stop_background)
    add_health_routes(app)
    if state.config.metrics_listen is None:
        app.router.add_get("/metrics", handle_metrics, name="hatchway:Metrics")
    add_api_route(app)
    nodes.add_routes(app, datachannel.reconcile_node, commandduty.on_channel_message)
    datachannel.add_routes(app)
    awsagent_channel.add_routes(app)
    return app
