"""Session Manager rules: resource ARNs and how each action is authorized. Pure: no I/O."""

from hatchway.ssm.arns import (
    DEFAULT_SESSION_DOCUMENT,
    document_arn,
    is_aws_owned_document,
    session_arn,
    target_arn,
)
from hatchway.ssm.authorize import (
    Evaluation,
    StartSessionDecision,
    StartSessionMode,
    authorize_start_session,
    resource_tag_context,
)

__all__ = [
    "DEFAULT_SESSION_DOCUMENT",
    "Evaluation",
    "StartSessionDecision",
    "StartSessionMode",
    "authorize_start_session",
    "document_arn",
    "is_aws_owned_document",
    "resource_tag_context",
    "session_arn",
    "target_arn",
]
