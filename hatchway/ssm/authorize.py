"""How ``ssm:StartSession`` is authorized: the seed document's SessionDocumentAccessCheck rule.

One StartSession call is several IAM authorizations and every one must allow
(docs/reference/session-manager.md#startsession-authorization):

=========================== ====================================== ==============================
call                        target ARN                             document ARN
=========================== ====================================== ==============================
no DocumentName             ``ssm:SessionDocumentAccessCheck`` =   legacy (default): not checked;
                            ``"false"``                            strict: the default document,
                                                                   key ``"false"``
DocumentName given          key absent                             the named document, key absent
=========================== ====================================== ==============================

So ``BoolIfExists {"ssm:SessionDocumentAccessCheck": "true"}`` on every statement that allows
StartSession forces callers to name a document, which is then checked on its own ARN; ``"false"``
changes nothing; ``Bool`` (without IfExists) denies sessions that name a document. The target and
the document each bring their own tags (``ssm:resourceTag/…`` and ``aws:ResourceTag/…``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hatchway.iam import ALLOWED, Decision, PolicySet, Request
from hatchway.iam.context import Context
from hatchway.iam.principal import Principal
from hatchway.ssm.arns import DEFAULT_SESSION_DOCUMENT, document_arn

ACTION = "ssm:StartSession"
ACCESS_CHECK_KEY = "ssm:sessiondocumentaccesscheck"


class StartSessionMode(StrEnum):
    """``legacy``: AWS's documented behaviour 2019–2023 (an omitted document needs no document
    permission unless the condition is used). ``strict``: AWS's 2025 text — an omitted document
    also requires the default document to be allowed."""

    LEGACY = "legacy"
    STRICT = "strict"


def resource_tag_context(tags: Mapping[str, str]) -> Context:
    """``ssm:resourceTag/<k>`` and ``aws:ResourceTag/<k>`` for a resource's tags."""
    ctx: Context = {}
    for k, v in tags.items():
        ctx[f"ssm:resourcetag/{k}".lower()] = v
        ctx[f"aws:resourcetag/{k}".lower()] = v
    return ctx


@dataclass(slots=True)
class Evaluation:
    """One of the authorizations a StartSession call consists of."""

    role: str  # "target" or "document"
    decision: Decision

    @property
    def resource(self) -> str:
        return self.decision.request.resource

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        ctx = self.decision.request.context
        check = ctx.get(ACCESS_CHECK_KEY)
        out: dict[str, Any] = {
            "role": self.role,
            "resource": self.resource,
            "context": {"ssm:SessionDocumentAccessCheck": check if check is not None else None},
        }
        out.update(self.decision.to_dict(explain))
        return out


@dataclass(slots=True)
class StartSessionDecision:
    """The overall answer: allowed only if every evaluation allows."""

    decision: str
    document_name: str
    document_named: bool
    evaluations: list[Evaluation] = field(default_factory=list)
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOWED

    @property
    def failed(self) -> Evaluation | None:
        """The first evaluation that did not allow (the target is checked first)."""
        for e in self.evaluations:
            if not e.decision.allowed:
                return e
        return None

    @property
    def message(self) -> str | None:
        f = self.failed
        return f.decision.message if f is not None else None

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "documentName": self.document_name,
            "message": self.message,
            "reason": {"documentNamed": self.document_named, "text": self.reason},
            "evaluations": [e.to_dict(explain) for e in self.evaluations],
        }


def authorize_start_session(
    policies: PolicySet,
    principal: Principal | None,
    *,
    target_arn: str,
    region: str,
    account: str,
    document_name: str | None = None,
    target_tags: Mapping[str, str] | None = None,
    document_tags: Mapping[str, str] | None = None,
    context: Context | None = None,
    mode: StartSessionMode = StartSessionMode.LEGACY,
    partition: str = "aws",
    explain: bool = False,
) -> StartSessionDecision:
    """Authorize StartSession as the seed document describes (see the module docstring).

    ``context`` holds the request's global keys (lower-cased): principal keys, aws:SourceIp, …;
    principal-derived keys are added when absent.
    """
    base: Context = principal.context() if principal is not None else {}
    base.update(context or {})
    named = document_name is not None
    doc_name = document_name if document_name is not None else DEFAULT_SESSION_DOCUMENT
    doc_arn = document_arn(doc_name, region, account, partition)

    target_ctx = {**base, **resource_tag_context(target_tags or {})}
    doc_ctx = {**base, **resource_tag_context(document_tags or {})}
    if not named:
        target_ctx[ACCESS_CHECK_KEY] = "false"
        doc_ctx[ACCESS_CHECK_KEY] = "false"

    checks: list[tuple[str, str, Context]] = [("target", target_arn, target_ctx)]
    if named or mode is StartSessionMode.STRICT:
        checks.append(("document", doc_arn, doc_ctx))
    evaluations = [
        Evaluation(role, policies.evaluate(Request(ACTION, arn, principal, ctx), explain))
        for role, arn, ctx in checks
    ]
    failed = next((e for e in evaluations if not e.decision.allowed), None)
    result = StartSessionDecision(
        failed.decision.decision if failed else ALLOWED, doc_name, named, evaluations
    )
    result.reason = _reason(policies, principal, result, target_ctx, mode)
    return result


def _reason(
    policies: PolicySet,
    principal: Principal | None,
    r: StartSessionDecision,
    target_ctx: Context,
    mode: StartSessionMode,
) -> str:
    """One sentence on why, in the seed document's terms."""
    doc = r.document_name
    failed = r.failed
    if failed is None:
        if r.document_named:
            return f"ssm:StartSession is allowed on both the target and the document {doc}."
        if mode is StartSessionMode.STRICT:
            return (
                f"No document was named: the target (ssm:SessionDocumentAccessCheck = "
                f'"false") and the default document {doc} are both allowed.'
            )
        return (
            "No document was named: the target was evaluated with "
            'ssm:SessionDocumentAccessCheck = "false" and allowed, so the default '
            f"{doc} is used without a document permission check."
        )
    explicit = failed.decision.decision == "explicitDeny"
    if failed.role == "target":
        if explicit:
            return f"An explicit Deny applies to the target {failed.resource}."
        if not r.document_named:
            retry = {k: v for k, v in target_ctx.items() if k != ACCESS_CHECK_KEY}
            again = policies.evaluate(Request(ACTION, failed.resource, principal, retry))
            if again.allowed:
                return (
                    "Every statement that allows ssm:StartSession on this target requires "
                    "the session document check (ssm:SessionDocumentAccessCheck), so the "
                    "default document cannot be used implicitly: name a session document "
                    "with --document-name, one the policy allows."
                )
        return f"No statement allows ssm:StartSession on the target {failed.resource}."
    if explicit:
        return f"An explicit Deny applies to the session document {doc} ({failed.resource})."
    if not r.document_named:
        return (
            f"Strict mode: starting a session without --document-name also needs "
            f"ssm:StartSession on the default document ({failed.resource})."
        )
    return (
        f"The named session document must be allowed explicitly, and no statement allows "
        f"ssm:StartSession on {failed.resource}."
    )
