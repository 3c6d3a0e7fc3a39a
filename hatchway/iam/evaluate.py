"""The authorizer: IAM's decision across every policy type, with an explanation.

Order (docs/reference/iam-evaluation.md#decision-order): an applicable Deny in any policy (SCPs,
RCPs, resource policy, identity policies, permissions boundary, session policy) is an explicit
deny; then every SCP and RCP level must allow; then an Allow is needed from an identity policy
or — in the same account — from the resource policy (which, naming the caller directly, also
lifts the boundary and session-policy limits,
docs/reference/iam-evaluation.md#resource-policies-in-the-same-account); the boundary and the
session policy can only take away. Cross-account requests need both the identity side and the
resource policy to allow.

Statements are indexed by action per policy group and candidate lists are memoised per action,
so a large policy set costs little more than a small one when few statements name the action.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hatchway.iam.context import Context, make_context
from hatchway.iam.kinds import PolicyKind
from hatchway.iam.messages import denial_message
from hatchway.iam.policy import Policy, PrincipalMatch, Statement
from hatchway.iam.principal import Principal
from hatchway.iam.wildcard import has_wildcard

ALLOWED = "allowed"
EXPLICIT_DENY = "explicitDeny"
IMPLICIT_DENY = "implicitDeny"

_MEMO_LIMIT = 4096
_ALWAYS_ALLOWED = frozenset({"sts:getcalleridentity"})


class StatementIndex:
    """Statements of one policy group, indexed by action."""

    __slots__ = ("_exact", "_generic", "_memo", "_order", "_service")

    def __init__(self, statements: Iterable[Statement]) -> None:
        self._exact: dict[str, list[Statement]] = {}
        self._service: dict[str, list[Statement]] = {}
        self._generic: list[Statement] = []
        self._order: dict[int, int] = {}
        self._memo: dict[str, tuple[tuple[Statement, ...], tuple[Statement, ...]]] = {}
        for n, s in enumerate(statements):
            self._order[id(s)] = n
            if s.not_action:
                self._generic.append(s)
                continue
            for a in s.actions:
                if not has_wildcard(a):
                    self._exact.setdefault(a, []).append(s)
                    continue
                svc, sep, _ = a.partition(":")
                if sep and not has_wildcard(svc):
                    self._service.setdefault(svc, []).append(s)
                else:
                    self._generic.append(s)

    def candidates(self, action: str) -> tuple[tuple[Statement, ...], tuple[Statement, ...]]:
        """(Deny statements, Allow statements) whose Action/NotAction covers ``action``."""
        hit = self._memo.get(action)
        if hit is not None:
            return hit
        found: dict[int, Statement] = {id(s): s for s in self._exact.get(action, ())}
        svc = action.partition(":")[0]
        for s in (*self._service.get(svc, ()), *self._generic):
            if id(s) not in found and s.matches_action(action):
                found[id(s)] = s
        ordered = sorted(found.values(), key=lambda s: self._order[id(s)])
        result = (
            tuple(s for s in ordered if not s.allow),
            tuple(s for s in ordered if s.allow),
        )
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[action] = result
        return result


class PolicyGroup:
    """Policies of one kind that are evaluated together (e.g. one SCP level)."""

    __slots__ = ("index", "kind", "level", "policies")

    def __init__(self, kind: PolicyKind, policies: Sequence[Policy], level: int = 0) -> None:
        self.kind = kind
        self.policies = tuple(policies)
        self.level = level
        self.index = StatementIndex(s for p in self.policies for s in p.statements)


@dataclass(slots=True)
class Request:
    """One authorization: ``action`` on ``resource`` by ``principal`` with ``context``.

    ``context`` keys must be lower-cased (use :func:`make_request`, which also adds the keys
    AWS derives from the principal).
    """

    action: str
    resource: str = "*"
    principal: Principal | None = None
    context: Context = field(default_factory=dict)
    resource_account: str | None = None

    @property
    def principal_arn(self) -> str:
        return self.principal.arn if self.principal is not None else "anonymous"


def make_request(
    action: str,
    resource: str = "*",
    principal: str | Principal | None = None,
    context: Mapping[str, object] | None = None,
    resource_account: str | None = None,
) -> Request:
    """Build a request; principal-derived keys (aws:PrincipalArn, aws:username, …) are added
    unless ``context`` sets them itself."""
    p = Principal.from_arn(principal) if isinstance(principal, str) else principal
    ctx: Context = p.context() if p is not None else {}
    ctx.update(make_context(context))
    return Request(action, resource, p, ctx, resource_account)


@dataclass(slots=True)
class Decision:
    """The outcome, the deciding policy type and statements, and AWS's message."""

    decision: str
    request: Request
    kind: PolicyKind | None = None
    statements: tuple[Statement, ...] = ()
    trace: list[dict[str, Any]] | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOWED

    @property
    def message(self) -> str | None:
        if self.decision == ALLOWED or self.kind is None:
            return None
        explicit = self.decision == EXPLICIT_DENY
        policy_arn = self.statements[0].policy.arn if explicit and self.statements else None
        r = self.request
        return denial_message(
            r.principal_arn,
            r.action,
            r.resource,
            self.kind,
            explicit=explicit,
            policy_arn=policy_arn,
        )

    def matched_statements(self) -> list[dict[str, object]]:
        return [s.ref() for s in self.statements]

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision": self.decision,
            "matchedStatements": self.matched_statements(),
            "message": self.message,
        }
        if self.kind is not None and not self.allowed:
            out["deniedBy"] = self.kind.value
        if explain and self.trace is not None:
            out["explanation"] = self.trace
        return out


def _applies(s: Statement, req: Request) -> bool:
    return s.matches_resource(req.resource, req.context) and s.matches_conditions(req.context)


class PolicySet:
    """Everything that governs one principal's requests, compiled and indexed once."""

    def __init__(
        self,
        identity: Sequence[Policy] = (),
        *,
        resource: Policy | None = None,
        boundary: Sequence[Policy] | None = None,
        session: Sequence[Policy] | None = None,
        scps: Sequence[Sequence[Policy]] = (),
        rcps: Sequence[Sequence[Policy]] = (),
    ) -> None:
        self.identity = PolicyGroup(PolicyKind.IDENTITY, identity)
        self.resource = PolicyGroup(PolicyKind.RESOURCE, [resource]) if resource else None
        self.boundary = PolicyGroup(PolicyKind.BOUNDARY, boundary) if boundary is not None else None
        self.session = PolicyGroup(PolicyKind.SESSION, session) if session is not None else None
        self.scps = tuple(PolicyGroup(PolicyKind.SCP, lvl, i) for i, lvl in enumerate(scps))
        self.rcps = tuple(PolicyGroup(PolicyKind.RCP, lvl, i) for i, lvl in enumerate(rcps))
        # Order in which an explicit deny is looked for and reported
        # (docs/reference/iam-evaluation.md#decision-order, step 2).
        groups: list[PolicyGroup] = [*self.scps, *self.rcps]
        if self.resource is not None:
            groups.append(self.resource)
        groups.append(self.identity)
        if self.boundary is not None:
            groups.append(self.boundary)
        if self.session is not None:
            groups.append(self.session)
        self._groups = tuple(groups)

    def with_resource(self, policy: Policy) -> PolicySet:
        """The same principal's policies with ``policy`` as the resource's (a role's trust
        policy, a KMS key policy), for evaluating a request against both together."""
        return PolicySet(
            self.identity.policies,
            resource=policy,
            boundary=self.boundary.policies if self.boundary else None,
            session=self.session.policies if self.session else None,
            scps=[g.policies for g in self.scps],
            rcps=[g.policies for g in self.rcps],
        )

    # -- matching helpers --

    @staticmethod
    def _rbp_match(s: Statement, req: Request) -> PrincipalMatch | None:
        m = s.principal_match(req.principal)
        if m is None or not (
            s.matches_resource(req.resource, req.context) and s.matches_conditions(req.context)
        ):
            return None
        return m

    def _first_allow(self, group: PolicyGroup, req: Request, action: str) -> Statement | None:
        for s in group.index.candidates(action)[1]:
            if _applies(s, req):
                return s
        return None

    def _first_deny(self, group: PolicyGroup, req: Request, action: str) -> Statement | None:
        for s in group.index.candidates(action)[0]:
            if group.kind is PolicyKind.RESOURCE:
                if self._rbp_match(s, req) is not None:
                    return s
            elif _applies(s, req):
                return s
        return None

    def resource_policy_match(self, req: Request) -> PrincipalMatch | None:
        """How the resource policy's applicable Allow names the caller ("direct", "role",
        "account"), or None. Role trust and KMS key policies must always name the caller."""
        if self.resource is None:
            return None
        best: PrincipalMatch | None = None
        for s in self.resource.index.candidates(req.action.lower())[1]:
            m = self._rbp_match(s, req)
            if m is not None and (best is None or _STRENGTH[m] > _STRENGTH[best]):
                best = m
        return best

    # -- the decision --

    def evaluate(self, req: Request, explain: bool = False) -> Decision:
        """Decide ``req``; with ``explain`` the decision carries a trace of every group."""
        decision = self._decide(req)
        if explain:
            decision.trace = self._trace(req)
        return decision

    def _decide(self, req: Request) -> Decision:
        action = req.action.lower()
        p = req.principal
        if action in _ALWAYS_ALLOWED:
            return Decision(ALLOWED, req)
        for group in self._groups:
            deny = self._first_deny(group, req, action)
            if deny is not None:
                return Decision(EXPLICIT_DENY, req, group.kind, (deny,))
        granted: list[Statement] = []
        for level in self.scps:
            s = self._first_allow(level, req, action)
            if s is None:
                return Decision(IMPLICIT_DENY, req, PolicyKind.SCP)
            granted.append(s)
        for level in self.rcps:
            s = self._first_allow(level, req, action)
            if s is None:
                return Decision(IMPLICIT_DENY, req, PolicyKind.RCP)
            granted.append(s)

        rbp: PrincipalMatch | None = None
        rbp_stmt: Statement | None = None
        if self.resource is not None:
            for s in self.resource.index.candidates(action)[1]:
                m = self._rbp_match(s, req)
                if m is not None and (rbp is None or _STRENGTH[m] > _STRENGTH[rbp]):
                    rbp, rbp_stmt = m, s
        same_account = (
            req.resource_account is None
            or p is None
            or p.account is None
            or req.resource_account == p.account
        )
        id_stmt = self._first_allow(self.identity, req, action)
        is_root = p is not None and p.kind == "root"
        identity_ok = id_stmt is not None or (is_root and same_account)
        if same_account:
            if not identity_ok and rbp not in ("direct", "role"):
                return Decision(IMPLICIT_DENY, req, PolicyKind.IDENTITY)
        else:
            if not identity_ok:
                return Decision(IMPLICIT_DENY, req, PolicyKind.IDENTITY)
            if rbp is None:
                return Decision(IMPLICIT_DENY, req, PolicyKind.RESOURCE)
        # A same-account resource policy naming the caller itself lifts boundary/session limits.
        bypass = same_account and rbp == "direct"
        if id_stmt is not None:
            granted.append(id_stmt)
        if rbp_stmt is not None:
            granted.append(rbp_stmt)
        if self.boundary is not None and not is_root and not bypass:
            s = self._first_allow(self.boundary, req, action)
            if s is None:
                return Decision(IMPLICIT_DENY, req, PolicyKind.BOUNDARY)
            granted.append(s)
        if p is not None and p.is_session and not bypass:
            if self.session is not None:
                s = self._first_allow(self.session, req, action)
                if s is None:
                    return Decision(IMPLICIT_DENY, req, PolicyKind.SESSION)
                granted.append(s)
            elif p.kind == "federated-user":
                return Decision(IMPLICIT_DENY, req, PolicyKind.SESSION)
        return Decision(ALLOWED, req, None, tuple(granted))

    # -- explanation --

    def _trace(self, req: Request) -> list[dict[str, Any]]:
        action = req.action.lower()
        out: list[dict[str, Any]] = []
        for group in self._groups:
            denies, allows = group.index.candidates(action)
            entries = [_explain_statement(s, req, group.kind) for s in (*denies, *allows)]
            step: dict[str, Any] = {"policyType": group.kind.value, "statements": entries}
            if group.kind in (PolicyKind.SCP, PolicyKind.RCP):
                step["level"] = group.level
            applicable = [e for e in entries if e["applies"]]
            if any(e["effect"] == "Deny" for e in applicable):
                step["result"] = "Deny"
            elif applicable:
                step["result"] = "Allow"
            else:
                step["result"] = "NotApplicable"
            out.append(step)
        return out


_STRENGTH = {"account": 0, "role": 1, "direct": 2}


def _explain_statement(s: Statement, req: Request, kind: PolicyKind) -> dict[str, Any]:
    entry: dict[str, Any] = s.ref()
    reason = None
    if kind is PolicyKind.RESOURCE and s.principal_match(req.principal) is None:
        reason = "Principal does not name the caller"
    elif not s.matches_resource(req.resource, req.context):
        element = "NotResource" if s.not_resource else "Resource"
        reason = f"{element} does not cover {req.resource}"
    elif s.conditions is not None:
        failed = s.conditions.first_failure(req.context)
        if failed is not None:
            value = req.context.get(failed.key)
            seen = (
                "absent"
                if value is None
                else repr(value if isinstance(value, str) else list(value))
            )
            reason = (
                f"Condition {failed.operator} {failed.raw_key} {list(failed.values)} "
                f"is false (request value: {seen})"
            )
    entry["applies"] = reason is None
    if reason is not None:
        entry["reason"] = reason
    return entry


def evaluate(policies: PolicySet, request: Request, explain: bool = False) -> Decision:
    """Module-level shorthand for ``policies.evaluate(request, explain)``."""
    return policies.evaluate(request, explain)
