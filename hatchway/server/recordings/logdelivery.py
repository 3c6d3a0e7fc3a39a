"""Session logs to Amazon S3 and CloudWatch Logs, with the broker's own AWS credentials.

The session preferences (``inputs``) name the destinations, as on AWS: ``s3BucketName`` and
``s3KeyPrefix`` (the transcript goes to ``<prefix>/<sessionId>.log`` when the session ends),
``cloudWatchLogGroupName`` (stream ``<sessionId>``: the transcript at the end, or with
``cloudWatchStreamingEnabled`` JSON events while the session runs), and the encryption checks
``s3EncryptionEnabled`` / ``cloudWatchEncryptionEnabled`` that refuse a session whose
destination is not encrypted, with AWS's texts.

boto3 clients use the standard credential chain and region (falling back to the broker's
``--region``); endpoints come from ``--s3-endpoint-url`` / ``--logs-endpoint-url``, else
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL_LOGS``, else botocore's own variables
(``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS``, ``AWS_ENDPOINT_URL``); S3 at a custom endpoint uses
path-style addressing. Every call here blocks: callers run them in a worker thread, never on
the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("hatchway.server.logdelivery")

S3_ENCRYPTION_ERROR = (
    "We couldn't start the session because encryption is not set up on the selected Amazon S3 "
    "bucket. Either encrypt the bucket or choose an option to enable logging without encryption."
)
CLOUDWATCH_ENCRYPTION_ERROR = (
    "We couldn't start the session because encryption is not set up on the selected CloudWatch "
    "Logs log group. Either encrypt the log group or choose an option to enable logging without "
    "encryption."
)
AwsError = (ClientError, BotoCoreError)
"""What a failed S3 or CloudWatch Logs call raises."""

# PutLogEvents limits: 1,048,576 bytes a batch (each event counts 26 bytes more than its
# message), 10,000 events, and a batch may not span more than 24 hours.
_BATCH_BYTES = 1_048_576
_BATCH_EVENTS = 10_000
_EVENT_OVERHEAD = 26
_BATCH_SPAN_MS = 23 * 3600 * 1000
_EVENT_BYTES = 200_000  # a streamed event's sessionData is cut well under the 256 KiB limit
_CHECK_TTL = 60.0  # seconds a passed encryption check is trusted for new sessions
_ENDPOINTS = {
    "s3": ("s3_endpoint_url", "AWS_ENDPOINT_URL_S3"),
    "logs": ("logs_endpoint_url", "AWS_ENDPOINT_URL_LOGS"),
}


def flag(value: Any) -> bool:
    """A boolean preference: ``true`` or the string ``"true"`` (AWS's agent accepts both)."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


@dataclass(frozen=True)
class Destinations:
    """Where a session's log goes besides the broker."""

    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_encryption: bool = False
    cw_group: str | None = None
    cw_encryption: bool = False
    cw_streaming: bool = False

    @classmethod
    def from_inputs(cls, inputs: dict[str, Any], session_type: str) -> Destinations:
        """The destinations of a session's preferences. Port (and SSH) sessions have none
        (AWS logs nothing for them); CloudWatch streaming is for shell sessions only."""
        if session_type == "Port":
            return cls()

        def text(key: str) -> str:
            value = inputs.get(key)
            return value.strip() if isinstance(value, str) else ""

        return cls(
            s3_bucket=text("s3BucketName") or None,
            s3_prefix=text("s3KeyPrefix"),
            s3_encryption=flag(inputs.get("s3EncryptionEnabled")),
            cw_group=text("cloudWatchLogGroupName") or None,
            cw_encryption=flag(inputs.get("cloudWatchEncryptionEnabled")),
            cw_streaming=flag(inputs.get("cloudWatchStreamingEnabled"))
            and session_type == "Standard_Stream",
        )

    @property
    def any(self) -> bool:
        return self.s3_bucket is not None or self.cw_group is not None

    @property
    def check_first(self) -> bool:
        """Whether the session must wait for an encryption check before it starts."""
        return (self.s3_bucket is not None and self.s3_encryption) or (
            self.cw_group is not None and self.cw_encryption
        )

    def s3_key(self, session_id: str) -> str:
        prefix = self.s3_prefix.strip("/")
        return f"{prefix}/{session_id}.log" if prefix else f"{session_id}.log"


def stream_event(
    *,
    region: str,
    target: str,
    owner: str,
    run_as: str | None,
    session_id: str,
    lines: list[str],
    when: datetime | None = None,
) -> str:
    """One CloudWatch streaming event, in the shape of AWS's agent."""
    return json.dumps(
        {
            "eventVersion": "1.0",
            "eventTime": (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "awsRegion": region,
            "target": {"id": target},
            "userIdentity": {"arn": owner},
            "runAsUser": run_as,
            "sessionId": session_id,
            "sessionData": lines,
        },
        ensure_ascii=False,
    )


def split_lines(lines: list[str], limit: int = _EVENT_BYTES) -> Iterator[list[str]]:
    """``lines`` in groups whose UTF-8 size stays under ``limit`` (one streamed event each)."""
    group: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode()) + 8  # quotes, comma, escapes: a margin
        if group and size + n > limit:
            yield group
            group, size = [], 0
        group.append(line)
        size += n
    if group:
        yield group


class LogDelivery:
    """The broker's S3 and CloudWatch Logs clients (thread-safe; blocking calls)."""

    def __init__(
        self,
        region: str,
        s3_endpoint_url: str | None = None,
        logs_endpoint_url: str | None = None,
    ) -> None:
        import boto3  # only brokers need it (the CLI imports this module too)

        self.region = boto3.session.Session().region_name or region
        self.s3_endpoint_url = s3_endpoint_url
        self.logs_endpoint_url = logs_endpoint_url
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._passed: dict[tuple[str, str], float] = {}

    def client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        with self._lock:  # creating boto3 clients is not thread-safe; using them is
            found = self._clients.get(service)
            if found is None:
                option, variable = _ENDPOINTS[service]
                # The option, else our variable, else botocore's own resolution (it reads
                # AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS, AWS_ENDPOINT_URL).
                endpoint = getattr(self, option) or os.environ.get(variable) or None
                custom = endpoint or os.environ.get("AWS_ENDPOINT_URL")
                config = Config(
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if custom else None,
                )
                found = boto3.session.Session().client(
                    service, region_name=self.region, endpoint_url=endpoint, config=config
                )
                self._clients[service] = found
            return found

    # -- checks at session start ------------------------------------------------------------

    def _recently_passed(self, kind: str, name: str) -> bool:
        when = self._passed.get((kind, name))
        return when is not None and time.monotonic() - when < _CHECK_TTL

    def s3_encrypted(self, bucket: str) -> bool:
        """Whether the bucket has default encryption (SSE-S3 or SSE-KMS). Anything that keeps
        us from knowing (no bucket, no permission, no endpoint) counts as no."""
        if self._recently_passed("s3", bucket):
            return True
        try:
            found = self.client("s3").get_bucket_encryption(Bucket=bucket)
        except AwsError as exc:
            log.warning("S3 bucket %s: no default encryption found: %s", bucket, exc)
            return False
        rules = found.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        ok = any(r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules)
        if ok:
            self._passed[("s3", bucket)] = time.monotonic()
        return ok

    def log_group(self, group: str) -> dict[str, Any] | None:
        """The log group's description, or None if there is no such group."""
        logs = self.client("logs")
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"logGroupNamePrefix": group}
            if token:
                kw["nextToken"] = token
            page = logs.describe_log_groups(**kw)
            for g in page.get("logGroups", []):
                if g.get("logGroupName") == group:
                    return dict(g)
            token = page.get("nextToken")
            if not token:
                return None

    def check(self, dest: Destinations) -> tuple[str | None, str | None]:
        """AWS's start-of-session checks: ``(failure, warning)``. A failure (AWS's text) ends
        the session; a warning (the log group does not exist) only turns CloudWatch off."""
        if (
            dest.s3_bucket is not None
            and dest.s3_encryption
            and not self.s3_encrypted(dest.s3_bucket)
        ):
            return S3_ENCRYPTION_ERROR, None
        if dest.cw_group is not None and dest.cw_encryption:
            if self._recently_passed("logs", dest.cw_group):
                return None, None
            try:
                group = self.log_group(dest.cw_group)
            except AwsError as exc:
                log.warning("log group %s: cannot check its encryption: %s", dest.cw_group, exc)
                return CLOUDWATCH_ENCRYPTION_ERROR, None
            if group is None:
                return None, missing_group(dest.cw_group)
            if not group.get("kmsKeyId"):
                return CLOUDWATCH_ENCRYPTION_ERROR, None
            self._passed[("logs", dest.cw_group)] = time.monotonic()
        return None, None

    # -- delivery -----------------------------------------------------------------------------

    def upload(self, bucket: str, key: str, body: IO[bytes]) -> str:
        """Put the transcript in S3 (multipart when large); returns its URL."""
        s3 = self.client("s3")
        s3.upload_fileobj(body, bucket, key, ExtraArgs={"ContentType": "text/plain; charset=utf-8"})
        return f"{s3.meta.endpoint_url.rstrip('/')}/{bucket}/{quote(key)}"

    def open_stream(self, group: str, stream: str) -> bool:
        """Create the log stream (fine if it exists); False if the group does not exist."""
        try:
            self.client("logs").create_log_stream(logGroupName=group, logStreamName=stream)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ResourceNotFoundException":
                return False
            if code != "ResourceAlreadyExistsException":
                raise
        return True

    def put_events(self, group: str, stream: str, events: Iterable[tuple[int, str]]) -> int:
        """Send ``(epoch ms, message)`` events in as few PutLogEvents calls as the limits
        allow, in order; returns how many were sent."""
        logs = self.client("logs")
        batch: list[dict[str, Any]] = []
        size = sent = 0
        last = 0
        for ts, message in events:
            if not message:
                continue  # CloudWatch refuses empty messages
            ts = last = max(ts, last)
            n = len(message.encode()) + _EVENT_OVERHEAD
            if batch and (
                size + n > _BATCH_BYTES
                or len(batch) >= _BATCH_EVENTS
                or ts - batch[0]["timestamp"] > _BATCH_SPAN_MS
            ):
                logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
                sent += len(batch)
                batch, size = [], 0
            batch.append({"timestamp": ts, "message": message})
            size += n
        if batch:
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
            sent += len(batch)
        return sent

    def console_url(self, group: str, stream: str) -> str:
        """Where a person finds the stream (AWS's console link form)."""
        return (
            f"https://console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#logEventViewer:group={group};stream={stream}"
        )


def missing_group(group: str) -> str:
    return (
        f"CloudWatch Logs log group {group} does not exist: "
        "CloudWatch logging is off for this session."
    )
