"""ARNs of the resources Session Manager authorizes against
(docs/reference/session-manager.md#resource-arns).

* EC2-style targets ``i-…``  → ``arn:P:ec2:R:A:instance/i-…``
* hybrid nodes ``mi-…``      → ``arn:P:ssm:R:A:managed-instance/mi-…``
* ECS targets ``ecs:C_T_R``  → ``arn:P:ecs:R:A:task/C/T``
* documents                  → ``arn:P:ssm:R:A:document/NAME``, with an **empty account** for
  AWS-owned documents (``AWS-…``), as AWS's AccessDenied messages show
* sessions                   → ``arn:P:ssm:R:A:session/ID``
"""

from __future__ import annotations

import re

DEFAULT_SESSION_DOCUMENT = "SSM-SessionManagerRunShell"

# InstanceId in the SSM model: (^i-(\w{8}|\w{17})$)|(^mi-\w{17}$); ids like the docs'
# i-02573cafcfEXAMPLE fit it.
_INSTANCE = re.compile(r"i-(?:\w{8}|\w{17})")
_MANAGED = re.compile(r"mi-\w{17}")
_ECS = re.compile(r"ecs:([^_]+)_([^_]+)_(.+)")
# Names reserved for documents AWS owns; customers cannot create documents with them.
_AWS_PREFIXES = ("aws", "amazon", "amzn")


class InvalidTarget(ValueError):
    """The target is not an instance, managed-instance or ECS task id."""


def target_arn(target: str, region: str, account: str, partition: str = "aws") -> str:
    """The ARN StartSession authorizes for ``target``."""
    if target.startswith("arn:"):
        return target
    if _INSTANCE.fullmatch(target):
        return f"arn:{partition}:ec2:{region}:{account}:instance/{target}"
    if _MANAGED.fullmatch(target):
        return f"arn:{partition}:ssm:{region}:{account}:managed-instance/{target}"
    m = _ECS.fullmatch(target)
    if m:
        return f"arn:{partition}:ecs:{region}:{account}:task/{m.group(1)}/{m.group(2)}"
    raise InvalidTarget(target)


def is_aws_owned_document(name: str) -> bool:
    return name.lower().startswith(_AWS_PREFIXES)


def document_arn(name: str, region: str, account: str, partition: str = "aws") -> str:
    """A document's ARN; a name that already is an ARN is returned unchanged."""
    if name.startswith("arn:"):
        return name
    owner = "" if is_aws_owned_document(name) else account
    return f"arn:{partition}:ssm:{region}:{owner}:document/{name}"


def session_arn(session_id: str, region: str, account: str, partition: str = "aws") -> str:
    return f"arn:{partition}:ssm:{region}:{account}:session/{session_id}"
