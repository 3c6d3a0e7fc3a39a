"""Who is asking: principals parsed from their ARNs, and the context keys AWS derives."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from hatchway.iam.context import Context

_IAM = re.compile(r"^arn:([^:]+):iam::(\d{12}|[^:]*):(root|user/.+|role/.+)$")
_STS = re.compile(r"^arn:([^:]+):sts::([^:]*):(assumed-role|federated-user)/(.+)$")

_TYPES = {
    "root": "Account",
    "user": "User",
    "role": "Role",
    "assumed-role": "AssumedRole",
    "federated-user": "FederatedUser",
    "anonymous": "Anonymous",
    "service": "Service",
    "other": "Unknown",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller. ``kind`` is root, user, role, assumed-role, federated-user, anonymous,
    service or other. ``role_arn`` is the role behind an assumed-role session."""

    arn: str
    kind: str
    account: str | None = None
    name: str | None = None
    partition: str = "aws"
    role_arn: str | None = None
    session_name: str | None = None

    @classmethod
    def anonymous(cls) -> Principal:
        return cls("anonymous", "anonymous")

    @classmethod
    def from_arn(cls, arn: str, role_arn: str | None = None) -> Principal:
        """Parse ``arn``; ``role_arn`` overrides the role derived from a session ARN (whose
        path the session ARN does not carry). Principals are immutable: parses are cached."""
        return _parse(arn, role_arn)

    @classmethod
    def _from_arn(cls, arn: str, role_arn: str | None) -> Principal:
        if arn in ("*", "anonymous"):
            return cls.anonymous()
        if arn.endswith(".amazonaws.com") and ":" not in arn:
            return cls(arn, "service")
        m = _IAM.match(arn)
        if m:
            partition, account, rest = m.groups()
            if rest == "root":
                return cls(arn, "root", account, None, partition)
            kind, _, path_name = rest.partition("/")
            return cls(arn, kind, account, path_name.rsplit("/", 1)[-1], partition)
        m = _STS.match(arn)
        if m:
            partition, account, kind, rest = m.groups()
            if kind == "assumed-role":
                role, _, session = rest.partition("/")
                derived = f"arn:{partition}:iam::{account}:role/{role}"
                return cls(arn, kind, account, role, partition, role_arn or derived, session)
            return cls(arn, kind, account, rest, partition)
        parts = arn.split(":")
        account = parts[4] if len(parts) > 5 and parts[4] else None
        return cls(arn, "other", account)

    @property
    def principal_type(self) -> str:
        """The value of ``aws:PrincipalType``."""
        return _TYPES[self.kind]

    @property
    def is_session(self) -> bool:
        return self.kind in ("assumed-role", "federated-user")

    @property
    def root_arn(self) -> str | None:
        if self.account is None:
            return None
        return f"arn:{self.partition}:iam::{self.account}:root"

    def context(self) -> Context:
        """Context keys AWS derives from the principal alone (lower-cased names).

        ``aws:userid`` needs the principal's unique id, which an ARN does not carry; callers
        that know it (the broker) add it, and so can a user of the CLI.
        """
        ctx: Context = {"aws:principaltype": self.principal_type}
        if self.kind == "anonymous":
            ctx["aws:userid"] = "anonymous"
            ctx["aws:principalaccount"] = "anonymous"
            return ctx
        ctx["aws:principalarn"] = (
            self.role_arn if self.kind == "assumed-role" and self.role_arn else self.arn
        )
        if self.account:
            ctx["aws:principalaccount"] = self.account
        if self.kind == "user" and self.name:
            ctx["aws:username"] = self.name
        if self.kind == "root" and self.account:
            ctx["aws:userid"] = self.account
        if self.kind == "federated-user" and self.account and self.name:
            ctx["aws:userid"] = f"{self.account}:{self.name}"
        return ctx

    def identities(self) -> list[str]:
        """The chain AWS checks for NotPrincipal: account, then role, then the caller."""
        chain: list[str] = []
        if self.root_arn:
            chain.append(self.root_arn)
        if self.kind == "assumed-role" and self.role_arn:
            chain.append(self.role_arn)
        if self.kind != "root":
            chain.append(self.arn)
        return chain


@lru_cache(maxsize=4096)
def _parse(arn: str, role_arn: str | None) -> Principal:
    return Principal._from_arn(arn, role_arn)
