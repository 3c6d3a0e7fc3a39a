"""The pipeline every request of every broker application goes through: aiohttp middleware, so
no endpoint can leave a step out (tests/server/test_pipeline.py walks every route to hold it).

Outermost first (:func:`middlewares`):

1. :func:`access_middleware`: the request id (``x-amzn-RequestId``, the id of the request's log
   lines and of its audit record), the logging context, the access-log line;
2. the connection guard (:func:`hatchway.server.front.limits.guard_middleware`) on the
   applications that serve the broker's listener;
3. :func:`call_middleware`, the call itself:

   * ``store.begin_call()`` before the endpoint runs, and ``await store.settled()`` after it:
     nothing is answered before the writes it made are committed (a commit that failed turns
     the answer into the endpoint's server error);
   * errors in AWS's shape: a :class:`ServiceError` the endpoint raises is rendered in the
     endpoint's format (:attr:`Outcome.render`: JSON 1.1 or Query XML for the API, AWS's JSON
     shape elsewhere), aiohttp's own refusals (404, 405, 413) in AWS's JSON shape, and any
     other exception, a bug, becomes the endpoint's 500 (:attr:`Outcome.internal`), logged
     once per cause per minute: never aiohttp's text, never the process down;
   * the audit record, written after the commit so that it says what the client was answered:
     the event the endpoint described (:attr:`Outcome.audit`, once it knows the caller), and
     for a failure (an exception or a failed commit) that no event describes, an anonymous one
     named after the route (``service:Operation``, the route's name);
   * the API's request metrics (``hatchway_api_calls``) for endpoints that ask for them.

An endpoint tells the pipeline about its call through the :class:`Outcome` in
``request[OUTCOME]`` (:func:`outcome_of`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hatchway.iam import Decision
from hatchway.server.base import crypto, logs, metrics
from hatchway.server.base.errors import ServiceError
from hatchway.server.base.ratelog import RateLimitedLog
from hatchway.server.front import limits
from hatchway.server.runtime.audit import audit
from hatchway.server.runtime.state import STATE_KEY

log = logging.getLogger("hatchway.server")

FAILURES = RateLimitedLog(log)
"""Failures of calls, logged once per cause per minute (a full disk failed every call)."""

HANDED_BACK = web.RequestKey("handed_back", bool)
"""Set on a request an API worker handed back to the primary (which logs it, not the worker)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(err: ServiceError) -> web.Response:
    """AWS's JSON error shape (``{"__type", "message"}``), the default format."""
    return web.json_response({"__type": err.code, "message": err.message}, status=err.status)


def internal_failure() -> ServiceError:
    return ServiceError("InternalFailure", "An internal error occurred.", 500, sender=False)


@dataclass
class AuditEntry:
    """One call's audit event, as :func:`hatchway.server.runtime.audit.audit` writes it."""

    service: str
    operation: str
    principal: str
    user_id: str
    source_ip: str
    request_id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    error: ServiceError | None = None
    access_key_id: str = ""  # the credentials the call was signed with (CloudTrail's)
    user_agent: str = ""


@dataclass
class Outcome:
    """What an endpoint tells the pipeline about the call it serves."""

    render: Callable[[ServiceError], web.Response] = json_error
    """The endpoint's error format."""
    internal: ServiceError = field(default_factory=internal_failure)
    """The endpoint's server error (an exception, a failed commit)."""
    audit: AuditEntry | None = None
    """The call's audit event, once the caller is known (its ``error`` is filled in here)."""
    api_call: bool = False
    """Counted in the API's metrics (service and operation from the logging context)."""


OUTCOME = web.RequestKey("outcome", Outcome)
"""Where the :class:`Outcome` the pipeline gives every request is kept."""


def outcome_of(request: web.Request) -> Outcome:
    """The :class:`Outcome` of this request (the pipeline put it there)."""
    return request[OUTCOME]


_HTTP_ERRORS = {
    404: "NotFoundException",
    405: "MethodNotAllowedException",
    413: "RequestEntityTooLargeException",
}


def _route_name(request: web.Request) -> tuple[str, str]:
    """``(service, operation)``: the API operation being served, else the route's name
    (``service:Operation``)."""
    name = logs.OPERATION.get() or request.match_info.route.name or "hatchway:Unknown"
    service, _, operation = name.partition(":")
    return service, operation or "Unknown"


@web.middleware
async def call_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Commit before answering, errors in AWS's shape, the audit record (see the module)."""
    state = request.app[STATE_KEY]
    outcome = Outcome()
    request[OUTCOME] = outcome
    started = time.perf_counter()
    failure: ServiceError | None = None  # a server error the pipeline answered with
    error: ServiceError | None = None  # the error the client was answered with
    passed: web.HTTPException | None = None  # aiohttp's answer, raised on once settled
    state.store.begin_call()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        code = _HTTP_ERRORS.get(exc.status, "ValidationException" if exc.status < 500 else "")
        if exc.status < 400 or not code:
            passed = exc
            response = exc
        else:
            body = {"__type": code, "message": exc.reason}
            response = web.json_response(body, status=exc.status)
    except ServiceError as exc:
        error = exc
        response = outcome.render(exc)
    except Exception as exc:  # a bug in an endpoint must not take the process down
        where = ".".join(_route_name(request))
        FAILURES.failure(f"internal error in {where}", exc, where=where)
        error = failure = outcome.internal
        response = outcome.render(failure)
    try:
        await state.store.settled()  # nothing is answered before its writes are committed
    except Exception as exc:
        request_id = logs.request_id()
        FAILURES.failure(
            f"the store could not commit the writes of {request_id}", exc, where="commit"
        )
        error = failure = outcome.internal
        if not response.prepared:  # a websocket's answer (101) left long ago
            response, passed = outcome.render(failure), None
    _audit(request, outcome, error, failure)
    if outcome.api_call:
        service, _, operation = (logs.OPERATION.get() or "unknown:Unknown").partition(":")
        metrics.api_call(service, operation, response.status, time.perf_counter() - started)
    if passed is not None:  # a redirect, or a server error aiohttp answers itself
        raise passed
    return response


def _audit(
    request: web.Request,
    outcome: Outcome,
    error: ServiceError | None,
    failure: ServiceError | None,
) -> None:
    """After the commit: the record says what the client was answered."""
    entry = outcome.audit
    if entry is None and failure is not None:
        service, operation = _route_name(request)
        entry = AuditEntry(
            service,
            operation,
            "anonymous",
            "anonymous",
            limits.client_of(request).address,
            logs.request_id(),
        )
    if entry is None:
        return
    if error is not None:
        entry.error = error
    try:
        audit(
            request.app[STATE_KEY],
            service=entry.service,
            operation=entry.operation,
            principal=entry.principal,
            user_id=entry.user_id,
            source_ip=entry.source_ip,
            params=entry.params,
            decisions=entry.decisions,
            error=entry.error,
            request_id=entry.request_id,
            access_key_id=entry.access_key_id,
            user_agent=entry.user_agent,
        )
    except Exception as exc:
        FAILURES.failure(
            f"could not write the audit record for {entry.request_id}", exc, where="audit"
        )


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: gives the request its id (``x-amzn-RequestId`` on every answer that has not
    been sent yet, the id of its log lines and of its audit record), holds the logging context
    while the request is served, and writes its access-log line (logger ``hatchway.access``)."""
    started = time.perf_counter()
    tokens = [
        (logs.REQUEST_ID, logs.REQUEST_ID.set(crypto.request_id())),
        (logs.PRINCIPAL, logs.PRINCIPAL.set(None)),
        (logs.OPERATION, logs.OPERATION.set(None)),
        (logs.SESSION_ID, logs.SESSION_ID.set(None)),
    ]
    status = 500
    response: web.StreamResponse | None = None
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            if not exc.headers.get("x-amzn-RequestId"):
                exc.headers["x-amzn-RequestId"] = logs.REQUEST_ID.get() or ""
            raise
        status = response.status
        if not response.prepared and "x-amzn-RequestId" not in response.headers:
            response.headers["x-amzn-RequestId"] = logs.REQUEST_ID.get() or ""
        return response
    finally:
        if logs.access_log.isEnabledFor(logging.INFO) and not request.get(HANDED_BACK):
            _log_access(request, response, status, time.perf_counter() - started)
        for var, token in reversed(tokens):
            var.reset(token)


def _log_access(
    request: web.Request, response: web.StreamResponse | None, status: int, elapsed: float
) -> None:
    size = 0
    if response is not None:
        if response.prepared:
            size = response.body_length
        elif isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
            size = len(response.body)
    client = limits.client_of(request).address
    duration_ms = round(elapsed * 1000, 3)
    logs.access_log.info(
        '%s "%s %s" %d %dB %.3fms',
        client,
        request.method,
        request.path,
        status,
        size,
        duration_ms,
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "bytes": size,
            "duration_ms": duration_ms,
            "client": client,
        },
    )


def middlewares(*, guard: bool) -> list[Any]:
    """The pipeline, for ``web.Application(middlewares=...)``: every application of the broker
    is built with it (``guard``: it serves the broker's listener, behind the connection
    guard)."""
    return [access_middleware, *([limits.guard_middleware] if guard else []), call_middleware]
