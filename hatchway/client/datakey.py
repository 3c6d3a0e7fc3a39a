"""The client's KMS call: ``kms:GenerateDataKey`` for a KMS-encrypted session
(docs/reference/data-channel.md#kms-encryption).

The data key is generated with the user's credentials — the region and profile the AWS CLI
passed the plugin (argv[2], argv[4]) — as AWS's plugin does. The endpoint:

1. ``AWS_ENDPOINT_URL_KMS`` when set (botocore's own variable for a service endpoint);
2. else the SSM endpoint the CLI passed (argv[6]) when it is not an AWS endpoint: a Hatchway
   broker serves KMS on the same front door as SSM, so ``aws ssm start-session --endpoint-url
   http://broker`` needs nothing more;
3. else botocore's choice, AWS's regional KMS (``kms.<region>.amazonaws.com``).

botocore and the cipher are imported on first use: sessions without KMS never load them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = [
    "AWS_HOST_SUFFIXES",
    "ENDPOINT_ENV",
    "BotoDataKeys",
    "DataKeySource",
    "is_aws_endpoint",
    "kms_endpoint",
]

ENDPOINT_ENV = "AWS_ENDPOINT_URL_KMS"
AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")
"""Hosts of AWS's own endpoints: an SSM endpoint there means the user talks to AWS."""


class DataKeySource(Protocol):
    """Where a session's data key comes from."""

    def generate_data_key(self, key_id: str, context: dict[str, str]) -> tuple[bytes, bytes]:
        """``GenerateDataKey(NumberOfBytes=64)``: ``(plaintext, ciphertext blob)``; raises."""
        ...


def is_aws_endpoint(url: str) -> bool:
    """True for ``https://ssm.us-east-1.amazonaws.com`` and AWS's other service hosts."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host.endswith(AWS_HOST_SUFFIXES)


def kms_endpoint(ssm_endpoint: str, environ: Mapping[str, str]) -> str | None:
    """The KMS endpoint for a session (None: botocore's default), by the rules above."""
    explicit = environ.get(ENDPOINT_ENV, "").strip()
    if explicit:
        return explicit
    if ssm_endpoint and not is_aws_endpoint(ssm_endpoint):
        return ssm_endpoint
    return None


class BotoDataKeys:
    """:class:`DataKeySource` with botocore, sharing the session (credentials) of the SSM
    calls: ``session`` returns a boto3 or a botocore session. Blocking: call it from a worker
    thread."""

    def __init__(
        self, session: Callable[[], Any], endpoint_url: str | None, region: str | None = None
    ) -> None:
        self.session = session
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from botocore.config import Config

            session = self.session()
            # botocore's Session.create_client, or boto3's Session.client: same arguments.
            create = getattr(session, "create_client", None) or session.client
            self._client = create(
                "kms",
                region_name=self.region or None,
                endpoint_url=self.endpoint_url,
                config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
            )
        return self._client

    def generate_data_key(self, key_id: str, context: dict[str, str]) -> tuple[bytes, bytes]:
        from hatchway.protocol.crypto import DATA_KEY_SIZE

        out = self.client().generate_data_key(
            KeyId=key_id, NumberOfBytes=DATA_KEY_SIZE, EncryptionContext=context
        )
        return out["Plaintext"], out["CiphertextBlob"]
