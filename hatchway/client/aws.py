"""The AWS side of a session: SSM calls through botocore and the SigV4-signed upgrade.

Credentials come from botocore's standard chain for the profile the AWS CLI passed (argv[4],
``""`` for none) and the region of argv[2]; ResumeSession and TerminateSession go to the SSM
endpoint of argv[6], as the official plugin does
(docs/reference/data-channel.md#plugin-invocation). botocore is imported on first use, not with
the plugin: the plugin starts once per session and its imports are on the path to the first
prompt.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from hatchway.client.fastsign import sign_get, static_credentials
from hatchway.client.websocket import ca_bundle

__all__ = [
    "PRESIGN_KEYS",
    "BotoControlPlane",
    "ControlPlane",
    "http_form",
    "is_presigned",
    "upgrade_host",
]

log = logging.getLogger("hatchway.client")

PRESIGN_KEYS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    }
)
"""A StreamUrl carrying any of these is presigned: the upgrade is then not signed."""


class ControlPlane(Protocol):
    """What a session needs from SSM besides the data channel."""

    def resume(self, session_id: str) -> tuple[str | None, str | None]:
        """ResumeSession: ``(TokenValue or None, StreamUrl or None)``."""
        ...

    def terminate(self, session_id: str) -> None:
        """TerminateSession."""
        ...

    def sign_upgrade(self, url: str) -> dict[str, str]:
        """SigV4 headers for the websocket upgrade to ``url`` (raises if no credentials)."""
        ...


def is_presigned(url: str) -> bool:
    """True when ``url``'s query carries SigV4 presign parameters (plugin ≥ 1.2.764.0)."""
    return any(key in PRESIGN_KEYS for key, _ in parse_qsl(urlsplit(url).query))


def http_form(url: str) -> str:
    """``ws://`` → ``http://``, ``wss://`` → ``https://`` (what is signed), else unchanged."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


def upgrade_host(url: str) -> str:
    """The Host header a websocket client sends for ``url`` (no port when it is the default)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme in ("wss", "https") else 80
    if parts.port is not None and parts.port != default:
        return f"{host}:{parts.port}"
    return host


class BotoControlPlane:
    """:class:`ControlPlane` with botocore: region, profile and SSM endpoint as the CLI gave."""

    def __init__(self, region: str, profile: str = "", endpoint_url: str = "") -> None:
        self.region = region
        self.profile = profile
        self.endpoint_url = endpoint_url
        self._session: Any = None
        self._client: Any = None

    def session(self) -> Any:
        if self._session is None:
            import botocore.session

            session = botocore.session.Session(profile=self.profile or None)
            if self.region:
                session.set_config_variable("region", self.region)
            self._session = session
        return self._session

    def client(self) -> Any:
        if self._client is None:
            from botocore.config import Config

            self._client = self.session().create_client(
                "ssm",
                region_name=self._region(),
                endpoint_url=self.endpoint_url or None,
                config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
                # botocore reads AWS_CA_BUNDLE itself; SSL_CERT_FILE too, as the Go plugin does.
                verify=ca_bundle(),
            )
        return self._client

    def resume(self, session_id: str) -> tuple[str | None, str | None]:
        out = self.client().resume_session(SessionId=session_id)
        return out.get("TokenValue") or None, out.get("StreamUrl") or None

    def terminate(self, session_id: str) -> None:
        self.client().terminate_session(SessionId=session_id)

    def _region(self) -> str:
        return self.region or self.session().get_config_variable("region") or "us-east-1"

    def sign_upgrade(self, url: str) -> dict[str, str]:
        if self.region:
            static = static_credentials(self.profile)
            if static is not None:  # the fast path: no botocore import (fastsign.py)
                return sign_get(http_form(url), upgrade_host(url), static, self.region)
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = self.session().get_credentials()
        if credentials is None:
            raise RuntimeError("no AWS credentials found to sign the data channel upgrade")
        region = self._region()
        request = AWSRequest(method="GET", url=http_form(url), headers={"Host": upgrade_host(url)})
        SigV4Auth(credentials.get_frozen_credentials(), "ssmmessages", region).add_auth(request)
        return {k: v for k, v in request.headers.items()}
