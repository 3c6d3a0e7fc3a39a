"""The policy types IAM evaluates, with the words AWS uses for each in denial messages."""

from __future__ import annotations

from enum import StrEnum


class PolicyKind(StrEnum):
    """Where a policy document is attached; decides which elements it may carry."""

    IDENTITY = "identity"
    RESOURCE = "resource"
    BOUNDARY = "boundary"
    SESSION = "session"
    SCP = "scp"
    RCP = "rcp"
    TRUST = "trust"

    @property
    def label(self) -> str:
        """The policy-type phrase AWS puts in AccessDenied messages."""
        return _LABELS[self]


_LABELS = {
    PolicyKind.IDENTITY: "identity-based policy",
    PolicyKind.RESOURCE: "resource-based policy",
    PolicyKind.BOUNDARY: "permissions boundary",
    PolicyKind.SESSION: "session policy",
    PolicyKind.SCP: "service control policy",
    PolicyKind.RCP: "resource control policy",
    PolicyKind.TRUST: "role trust policy",
}
