"""Errors of the policy engine, as values carrying AWS's error code and message."""

from __future__ import annotations


class PolicyError(Exception):
    """A policy document was refused. ``code`` and ``message`` are AWS's."""

    code = "PolicyError"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class MalformedPolicyDocument(PolicyError):
    """IAM's ``MalformedPolicyDocument`` (HTTP 400)."""

    code = "MalformedPolicyDocument"


class LimitExceeded(PolicyError):
    """IAM's ``LimitExceeded`` (HTTP 409), e.g. a policy over its size quota."""

    code = "LimitExceeded"
    http_status = 409
