"""CloudTrail's view of an audit event: identity type, user name, resources, read-only.

The broker records every call as a CloudTrail-like event (``call.audit``); these pure
functions add what CloudTrail's ``LookupEvents`` filters on and returns (``userIdentity.type``
and ``userName``, ``readOnly``, the resources a call names) and read them back for
``LookupEvents`` (docs/audit.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

READ_PREFIXES = ("Get", "List", "Describe", "Lookup")
"""Operations CloudTrail calls read-only (``readOnly: true``) by their name's verb."""

# Request parameter → CloudTrail resource type, for the parameters that name a resource.
_RESOURCE_PARAMS: tuple[tuple[str, str], ...] = (
    ("Target", "AWS::SSM::ManagedInstance"),
    ("InstanceId", "AWS::SSM::ManagedInstance"),
    ("SessionId", "AWS::SSM::Session"),
    ("DocumentName", "AWS::SSM::Document"),
    ("Name", "AWS::SSM::Document"),
    ("ActivationId", "AWS::SSM::Activation"),
    ("UserName", "AWS::IAM::User"),
    ("GroupName", "AWS::IAM::Group"),
    ("RoleName", "AWS::IAM::Role"),
    ("PolicyArn", "AWS::IAM::Policy"),
    ("AccessKeyId", "AWS::IAM::AccessKey"),
    ("RoleArn", "AWS::IAM::Role"),
    ("KeyId", "AWS::KMS::Key"),
)


def read_only(operation: str) -> bool:
    return operation.startswith(READ_PREFIXES)


def identity_type(arn: str) -> str:
    """CloudTrail's ``userIdentity.type`` for a principal ARN."""
    if arn.endswith(":root"):
        return "Root"
    if ":assumed-role/" in arn:
        return "AssumedRole"
    if ":user/" in arn:
        return "IAMUser"
    if ":federated-user/" in arn:
        return "FederatedUser"
    if arn.startswith("arn:"):
        return "AWSService"
    return "Unknown"


def user_name(arn: str) -> str:
    """CloudTrail's ``Username`` of an event: the IAM user's name, the role session's name,
    ``root`` for the account; else the principal as recorded (``anonymous``, the broker)."""
    if arn.endswith(":root"):
        return "root"
    resource = arn.split(":", 5)[-1]
    if resource.startswith(("user/", "assumed-role/", "federated-user/")):
        return resource.rsplit("/", 1)[-1]
    return arn


def resources(params: Mapping[str, Any]) -> list[dict[str, str]]:
    """The resources a call's parameters name, as CloudTrail lists them."""
    found: list[dict[str, str]] = []
    for key, kind in _RESOURCE_PARAMS:
        value = params.get(key)
        if isinstance(value, str) and value and value != "***":
            if key == "Name" and "DocumentVersion" not in params and "Content" not in params:
                continue  # "Name" is a document's only in the document operations
            found.append({"resourceType": kind, "resourceName": value})
    return found


def enrich(
    event: dict[str, Any], params: Mapping[str, Any], access_key_id: str, user_agent: str
) -> None:
    """Add CloudTrail's fields to an audit event built by ``call.audit``."""
    ident = event["userIdentity"]
    arn = str(ident.get("arn", ""))
    ident["type"] = identity_type(arn)
    ident["userName"] = user_name(arn)
    if access_key_id:
        ident["accessKeyId"] = access_key_id
    event["eventType"] = "AwsApiCall"
    event["eventCategory"] = "Management"
    event["managementEvent"] = True
    event["readOnly"] = read_only(str(event.get("eventName", "")))
    event["recipientAccountId"] = ident.get("accountId", "")
    if user_agent:
        event["userAgent"] = user_agent
    found = resources(params)
    if found:
        event["resources"] = found


def lookup_values(event: Mapping[str, Any]) -> dict[str, list[str]]:
    """What each of LookupEvents' attribute keys matches in a stored event."""
    ident = event.get("userIdentity") or {}
    arn = str(ident.get("arn", ""))
    names = [r.get("resourceName", "") for r in event.get("resources") or []]
    kinds = [r.get("resourceType", "") for r in event.get("resources") or []]
    return {
        "EventId": [str(event.get("eventID", ""))],
        "EventName": [str(event.get("eventName", ""))],
        "ReadOnly": [
            "true" if event.get("readOnly", read_only(str(event.get("eventName", "")))) else "false"
        ],
        "Username": [str(ident.get("userName") or user_name(arn))],
        "ResourceType": kinds,
        "ResourceName": names,
        "EventSource": [str(event.get("eventSource", ""))],
        "AccessKeyId": [str(ident.get("accessKeyId", ""))],
    }
