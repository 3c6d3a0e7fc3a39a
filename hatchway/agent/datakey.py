"""The agent's KMS calls: ``kms:Decrypt`` of a session's data key
(docs/reference/data-channel.md#kms-encryption).

By default the agent asks the broker it is registered with (the broker serves KMS on its API
endpoint) and signs with the node's own credentials, so the node's IAM role decides. With
``hatchway agent --kms-endpoint-url URL`` it asks another KMS endpoint instead, for instance
AWS's (``https://kms.<region>.amazonaws.com``) when clients use real AWS KMS keys; with
``--kms-credentials default`` it signs with botocore's standard credential chain (environment,
profile, instance role) rather than the node's Hatchway credentials, which only a Hatchway
broker accepts. botocore is synchronous: :meth:`KmsDecrypter.decrypt_data_key` runs it in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from hatchway.agent.registration import Registration

__all__ = ["CREDENTIAL_SOURCES", "KmsDecrypter", "KmsError", "KmsSettings"]

CREDENTIAL_SOURCES = ("node", "default")


@dataclass(frozen=True)
class KmsSettings:
    """Where the agent's ``kms:Decrypt`` goes.

    ``endpoint_url``: None = the broker when signing with the node's credentials, else
    botocore's own choice (AWS's regional endpoint, or ``AWS_ENDPOINT_URL_KMS``).
    ``credentials``: ``"node"`` (the node's registration key) or ``"default"`` (botocore's
    chain). ``region``: None = the node's region.
    """

    endpoint_url: str | None = None
    credentials: str = "node"
    region: str | None = None

    def __post_init__(self) -> None:
        if self.credentials not in CREDENTIAL_SOURCES:
            raise ValueError(f"credentials must be one of {CREDENTIAL_SOURCES}")


class KmsError(Exception):
    """A failed KMS call; the message is what the user is told."""


class KmsDecrypter:
    """``kms:Decrypt`` for one node, with a client made on first use and then reused."""

    def __init__(self, reg: Registration, settings: KmsSettings | None = None) -> None:
        self.reg = reg
        self.settings = settings or KmsSettings()
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str | None:
        """The KMS endpoint the calls go to (None: botocore decides)."""
        if self.settings.endpoint_url:
            return self.settings.endpoint_url
        return self.reg.endpoint if self.settings.credentials == "node" else None

    def _make_client(self) -> Any:
        region = self.settings.region or self.reg.region
        config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2})
        if self.settings.credentials == "node":
            session = boto3.session.Session(
                aws_access_key_id=self.reg.access_key_id,
                aws_secret_access_key=self.reg.secret_access_key,
                region_name=region,
            )
        else:
            session = boto3.session.Session(region_name=region)
        endpoint = self.endpoint_url
        # The broker's certificate is checked against the agent's --ca-file, as on its channels.
        verify = self.reg.ca_bundle if endpoint == self.reg.endpoint else None
        return session.client("kms", endpoint_url=endpoint, config=config, verify=verify)

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def decrypt(self, ciphertext: bytes, context: dict[str, str], key_id: str) -> bytes:
        """The plaintext of ``ciphertext`` (blocking); :class:`KmsError` with the reason."""
        try:
            out = self.client().decrypt(
                CiphertextBlob=ciphertext, EncryptionContext=context, KeyId=key_id
            )
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code, message = err.get("Code", "Unknown"), err.get("Message", "")
            raise KmsError(f"{code}: {message}" if message else str(code)) from exc
        except BotoCoreError as exc:
            raise KmsError(str(exc)) from exc
        plaintext: bytes = out["Plaintext"]
        return plaintext

    async def decrypt_data_key(
        self, ciphertext: bytes, context: dict[str, str], key_id: str
    ) -> bytes:
        """:meth:`decrypt` in a worker thread."""
        return await asyncio.to_thread(self.decrypt, ciphertext, context, key_id)
