"""IAM policy engine: parse, validate, compile, evaluate, explain. Pure: no I/O.

Typical use::

    from hatchway.iam import PolicySet, make_request, parse_policy
    ps = PolicySet([parse_policy(text)])
    decision = ps.evaluate(make_request("ssm:StartSession", arn, "arn:aws:iam::1:user/alice"))
"""

from hatchway.iam.context import Context, make_context
from hatchway.iam.errors import LimitExceeded, MalformedPolicyDocument, PolicyError
from hatchway.iam.evaluate import (
    ALLOWED,
    EXPLICIT_DENY,
    IMPLICIT_DENY,
    Decision,
    PolicySet,
    Request,
    evaluate,
    make_request,
)
from hatchway.iam.kinds import PolicyKind
from hatchway.iam.messages import denial_message
from hatchway.iam.policy import Policy, Statement, compile_policy, parse_policy
from hatchway.iam.principal import Principal

__all__ = [
    "ALLOWED",
    "EXPLICIT_DENY",
    "IMPLICIT_DENY",
    "Context",
    "Decision",
    "LimitExceeded",
    "MalformedPolicyDocument",
    "Policy",
    "PolicyError",
    "PolicyKind",
    "PolicySet",
    "Principal",
    "Request",
    "Statement",
    "compile_policy",
    "denial_message",
    "evaluate",
    "make_context",
    "make_request",
    "parse_policy",
]
