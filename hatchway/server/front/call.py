"""One API call: who, what, the IAM decisions taken, and the audit record it leaves."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hatchway.iam import Decision, Request
from hatchway.iam.context import Context, make_context
from hatchway.server.base import crypto, metrics
from hatchway.server.base.errors import ServiceError, access_denied
from hatchway.server.front.identity import Caller
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import Store

log = logging.getLogger("hatchway.server.audit")


@dataclass
class Call:
    """The context a handler runs in."""

    state: ServerState
    service: str  # "ssm" | "iam" | "sts" | "kms"
    operation: str
    protocol: str  # "json" | "query"
    caller: Caller
    source_ip: str
    user_agent: str = ""
    secure: bool = False
    request_id: str = field(default_factory=crypto.request_id)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.state.store

    @property
    def account(self) -> str:
        return self.state.config.account_id

    @property
    def region(self) -> str:
        return self.state.config.region

    def base_context(self) -> Context:
        """The global condition keys AWS puts in every request context."""
        current, epoch = _clock()
        ctx = self.caller.context()
        ctx.update(
            {
                "aws:sourceip": self.source_ip,
                "aws:currenttime": current,
                "aws:epochtime": epoch,
                "aws:securetransport": "true" if self.secure else "false",
                "aws:requestedregion": self.region,
                "aws:useragent": self.user_agent,
            }
        )
        if self.caller.mfa_time is not None:
            # Seconds since the credentials were obtained with MFA (AWS: aws:MultiFactorAuthAge)
            age = int(epoch) - int(self.caller.mfa_time.timestamp())
            ctx["aws:multifactorauthage"] = str(max(0, age))
        return ctx

    def decide(
        self, action: str, resource: str = "*", context: Mapping[str, object] | None = None
    ) -> Decision:
        """Evaluate one authorization (recorded for the audit log)."""
        ctx = self.base_context()
        if context:
            ctx.update(make_context(context))
        d = self.caller.policies.evaluate(
            Request(action, resource, self.caller.principal, ctx, self.account)
        )
        self.decisions.append(d)
        metrics.authorization(d.allowed)
        return d

    def authorize(
        self, action: str, resource: str = "*", context: Mapping[str, object] | None = None
    ) -> Decision:
        """Evaluate and raise AWS's AccessDenied on anything but an allow."""
        d = self.decide(action, resource, context)
        if not d.allowed:
            raise access_denied(self._denial_text(d, action, resource), self.protocol)
        return d

    def _denial_text(self, d: Decision, action: str, resource: str) -> str:
        """AWS names ``arn:aws:ssm:<region>:<account>:*`` as the resource of the SSM read and
        list actions that have no resource type (docs/nodes.md)."""
        message = d.message or "Access denied"
        if resource == "*" and action in SSM_ACCOUNT_WIDE_READS:
            head = f"perform: {action} "
            where = f"arn:aws:ssm:{self.region}:{self.account}:*"
            message = message.replace(head, f"perform: {action} on resource: {where} ", 1)
        return message

    def deny(self, decision: Decision) -> ServiceError:
        return access_denied(decision.message or "Access denied", self.protocol)


SSM_ACCOUNT_WIDE_READS = frozenset(
    {
        "ssm:DescribeInstanceInformation",
        "ssm:DescribeInstanceProperties",
        "ssm:DescribeSessions",
        "ssm:ListDocuments",
        "ssm:DescribeActivations",
        "ssm:ListCommands",
        "ssm:ListCommandInvocations",
        "ssm:GetCommandInvocation",
    }
)
"""SSM's read/list actions without a resource type in the Service Authorization Reference,
whose AccessDenied names ``arn:aws:ssm:<region>:<account>:*`` (as AWS's messages for
DescribeInstanceInformation do). The write actions without one (CreateActivation,
DeleteActivation) keep the message without a resource: no published AWS message shows
otherwise."""

_CLOCK: list[tuple[int, str, str]] = [(0, "", "")]


def _clock() -> tuple[str, str]:
    """``aws:CurrentTime`` and ``aws:EpochTime`` for now (formatted once per second)."""
    second = int(time.time())
    hit = _CLOCK[0]
    if hit[0] != second:
        now = datetime.fromtimestamp(second, UTC)
        hit = _CLOCK[0] = (second, now.strftime("%Y-%m-%dT%H:%M:%SZ"), str(second))
    return hit[1], hit[2]


Handler = Callable[[Call, dict[str, Any]], Awaitable[dict[str, Any]]]
OPERATIONS: dict[tuple[str, str], Handler] = {}


INPUT_EXTENSIONS: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""Where Hatchway accepts more than AWS's model: (service, operation) → the part of the
parameters that the model still validates (see ``DeregisterManagedInstance``)."""


def operation(service: str, name: str) -> Callable[[Handler], Handler]:
    """Register ``async def handler(call, params) -> output`` for ``service``/``name``."""

    def register(fn: Handler) -> Handler:
        OPERATIONS[(service, name)] = fn
        return fn

    return register
