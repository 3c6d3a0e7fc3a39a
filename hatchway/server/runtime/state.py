"""Broker configuration and the state shared by every request."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web

from hatchway.iam import Policy
from hatchway.server.base.crypto import SecretBox
from hatchway.server.runtime import auditexport, retention
from hatchway.server.runtime.audit import AuditLog
from hatchway.server.runtime.channels import Channels
from hatchway.server.runtime.throttle import Throttle
from hatchway.server.store import SessionRow, Store
from hatchway.ssm import StartSessionMode

_T = TypeVar("_T")


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    data_dir: Path = Path("hatchway-data")
    database_url: str | None = None
    region: str = "us-east-1"
    account_id: str = "123456789012"
    scp_files: list[Path] = field(default_factory=list)
    start_session_mode: StartSessionMode = StartSessionMode.LEGACY
    public_url: str | None = None  # base URL clients reach us at (StreamUrl); default from listen
    token_ttl: float = 60.0  # seconds a data-channel token stays valid unused
    ping_interval: float = 20.0  # agent heartbeat period the broker asks for
    resume_window: float = 300.0  # seconds a Disconnected session waits for its peers
    timeout_unit: float = 60.0  # seconds per "minute" of idleSessionTimeout/maxSessionDuration
    s3_endpoint_url: str | None = None  # session logs to S3 (default: AWS_ENDPOINT_URL_S3 / AWS)
    logs_endpoint_url: str | None = None  # ... and to CloudWatch Logs (AWS_ENDPOINT_URL_LOGS)
    record_input: bool = False  # keep keystrokes ("i" events) in recordings, not only the echo
    log_stream_interval: float = 1.0  # seconds between CloudWatch streaming events
    workers: int = 0  # API worker processes beside this one (docs/broker.md, "Processes")
    # Refuse client data-channel upgrades that are not SigV4-signed (docs/broker-sigv4.md).
    require_signed_data_channel: bool = False
    tls_cert: Path | None = None  # serve HTTPS / wss:// with this certificate chain (PEM)
    tls_key: Path | None = None  # ... and this private key (docs/tls.md)
    recording_session_limit: int = 64 << 20  # bytes of one session's recording kept
    recording_total_limit: int = 4 << 30  # bytes of all recordings together
    recording_retention_days: float = 30.0  # recordings older than this are deleted (0: kept)
    # Limits (docs/broker.md, "Limits"; hatchway.server.front.limits)
    header_timeout: float = 10.0  # seconds for a request's head, from its first byte
    body_timeout: float = 30.0  # seconds for a request's body, from its head
    keepalive_timeout: float = 60.0  # seconds a connection may stay idle between requests
    max_connections_per_address: int = 100
    max_connections: int = 0  # 0: from RLIMIT_NOFILE
    node_reserve: int | None = None  # connections kept for control channels (None: a tenth)
    trusted_proxies: list[str] = field(default_factory=list)  # CIDRs
    throttle_rate: float = 200.0  # API requests per second and principal (0: unthrottled)
    throttle_burst: int = 1000
    shutdown_grace: float = 0.0  # seconds of draining (/readyz 503) after SIGTERM before stopping
    # Observability (docs/observability.md)
    log_format: str = "text"  # "text" | "json", also for API worker processes
    access_log: bool = True  # one line per HTTP request under logger hatchway.access
    metrics_listen: str | None = None  # HOST:PORT serving /metrics and /health apart
    # Audit retention, rotation and export (docs/audit.md)
    audit_retention_days: float = 90.0  # audit rows older than this are deleted (0: kept)
    audit_rotate_size: int = 100 << 20  # bytes of audit.jsonl before it is rotated (0: never)
    audit_rotate_age: float = 0.0  # hours before audit.jsonl is rotated (0: never)
    audit_rotate_keep: int = 10  # rotated files kept (audit.jsonl.1 … .N)
    audit_webhook_url: str | None = None  # POST audit events here in batches
    audit_webhook_batch: int = 100
    audit_webhook_interval: float = 1.0  # seconds a batch waits to fill
    audit_syslog: str | None = None  # udp://host:514 | tcp://host:601 | unix:///dev/log
    audit_syslog_facility: str = "authpriv"

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hatchway.db').resolve()}"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def base_url(self) -> str:
        return self.public_url or f"{'https' if self.tls else 'http'}://{self.listen}"


def stream_url(config: ServerConfig, session_id: str, *, secure: bool = False) -> str:
    """A session's data-channel URL (StreamUrl, and the node's ``streamUrl``): the broker's base
    URL with ``ws://`` for ``http://`` and ``wss://`` for ``https://`` or when the request that
    asks for it came over TLS (``secure``: as a trusted proxy's X-Forwarded-Proto or PROXY
    header says). The one place that picks the StreamUrl's scheme and host."""
    base = config.base_url.rstrip("/")
    host = base.removeprefix("https://").removeprefix("http://")
    scheme = "wss" if secure or base.startswith("https://") else "ws"
    return f"{scheme}://{host}/v1/data-channel/{session_id}?role=publish_subscribe"


# -- what the shared state holds ---------------------------------------------------------------
#
# The broker's shared state sits beneath the modules that fill it (nodes, data channels, API
# workers, identity, recordings, the audit log), which all import this one. So that mypy sees
# what it holds without this module importing them back, each kind of value is described by a
# Protocol of what is used through the state; the concrete class (named in each docstring) is
# checked against it wherever it is stored. The owning module narrows back to its own class
# where it needs more (``isinstance``, or one typed accessor).


class ControlChannel(Protocol):
    """A node's live control channel (:class:`hatchway.server.nodes.NodeChannel`)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def ws(self) -> web.WebSocketResponse: ...

    async def send(self, message: dict[str, Any]) -> None: ...


class DataChannelRelay(Protocol):
    """The two halves of one session's live data channel
    (:class:`hatchway.server.datachannel.Relay`)."""

    @property
    def session_id(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def agent(self) -> web.WebSocketResponse | None: ...

    @property
    def client(self) -> web.WebSocketResponse | None: ...

    async def close(
        self,
        output: str = "",
        *,
        to_agent: bool = True,
        code: int = ...,
        exit_code: int | None = None,
    ) -> None: ...


class PrimaryCalls(Protocol):
    """In an API worker, how to ask the primary to act on the channels it holds
    (:class:`hatchway.server.workers.PrimaryLink`)."""

    async def call(self, op: str, *args: object) -> None: ...


class CachedCaller(Protocol):
    """An authenticated principal with its compiled policies
    (:class:`hatchway.server.identity.Caller`)."""

    @property
    def arn(self) -> str: ...

    @property
    def user_id(self) -> str: ...


class CachedKey(Protocol):
    """An access key's row and unsealed secret (:class:`hatchway.server.identity.KeyEntry`)."""

    @property
    def secret(self) -> str: ...

    @property
    def session_token(self) -> str | None: ...


class CachedDocument(Protocol):
    """A session document version as StartSession needs it
    (:class:`hatchway.server.ops.documents.ResolvedDocument`)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...


class RequestThrottle(Protocol):
    """Requests per principal (:class:`hatchway.server.limits.Throttle`)."""

    def allow(self, principal: str) -> bool: ...


class AuditSink(Protocol):
    """Where audit events go (:class:`hatchway.server.call.AuditLog`)."""

    def available(self) -> bool: ...

    def record(self, event: dict[str, Any], row: dict[str, Any]) -> None: ...

    async def run(self) -> None: ...

    def close(self) -> None: ...


class SessionRecordings(Protocol):
    """Session logs: ingest, store, deliver (:class:`hatchway.server.recordings.Recordings`)."""

    @property
    def captured_total(self) -> int: ...

    def start_request(self) -> dict[str, Any]: ...

    async def prepare(self, session: SessionRow, session_type: str) -> str | None: ...

    def client_seen(self, session_id: str, address: str) -> None: ...

    def capture(self, session_id: str, data: bytes, payload_type: int) -> None: ...

    def ingest(self, session_id: str, data: bytes) -> None: ...

    async def finish(self, session_id: str) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


#: A cache entry valid while the versions it was built at are current.
Versioned = tuple[tuple[int, int], _T]


class ServerState:
    """Everything a request handler may need, created once at start. Every attribute is
    declared here with its type (tests/server/test_state_types.py holds that no ``Any`` is
    among them)."""

    config: ServerConfig
    store: Store
    box: SecretBox
    scps: list[list[Policy]]
    #: The session timers' time source (idle timeout, max duration, resume window; in
    #: relay/datachannel.py). Tests move it (tests/harness/clock.py); nothing else sets it.
    clock: Callable[[], float]
    #: Compiled callers by (access key id, IAM generation).
    policy_cache: dict[tuple[str, int], CachedCaller]
    #: Instance id -> the node's live control channel (in the primary process).
    nodes: dict[str, ControlChannel]
    #: Session id -> the session's live data-channel relay (in the primary process).
    relays: dict[str, DataChannelRelay]
    #: In an API worker: how to ask the primary, which holds nodes and relays, to act.
    link: PrimaryCalls | None
    #: Set on SIGTERM: /readyz answers 503 and the channels are being closed (app.py).
    draining: bool
    key_cache: dict[str, Versioned[CachedKey | None]]
    doc_cache: dict[str, Versioned[CachedDocument | None]]
    audit_path: Path
    throttle: RequestThrottle
    audit_log: AuditSink
    recordings: SessionRecordings
    #: Where the nodes' channels live (hatchway.server.runtime.channels): this process, the
    #: primary (in an API worker) or any broker of the cluster (process/cluster.py). Set by
    #: hatchway.server.app.open_state (its cases sit layers above this one).
    channels: Channels
    #: Whether this process runs the cluster's background duties now (a lease on PostgreSQL
    #: with several brokers; always with one).
    leader: Callable[[], bool]

    def __init__(
        self, config: ServerConfig, store: Store, box: SecretBox, scps: list[list[Policy]]
    ) -> None:
        self.config = config
        self.store = store
        self.box = box
        self.scps = scps
        self.clock = time.monotonic
        self.leader = lambda: True
        self.policy_cache = {}
        self.nodes = {}
        self.relays = {}
        self.link = None
        self.draining = False
        self.key_cache = {}
        self.doc_cache = {}
        self.audit_path = config.data_dir / "audit.jsonl"
        self.throttle = Throttle(config.throttle_rate, config.throttle_burst)
        audit_log = self.audit_log = AuditLog(store, self.audit_path)
        audit_log.exporters = auditexport.exporters(config)
        audit_log.rotation = retention.Rotation(
            self.audit_path,
            max_bytes=config.audit_rotate_size,
            max_age=config.audit_rotate_age * 3600,
            keep=config.audit_rotate_keep,
        )
        # self.recordings (hatchway.server.recordings.keeper.Recordings) sits a layer above
        # this one: attached by hatchway.server.app.open_state before the state is used.

    @property
    def generation(self) -> int:
        """Bumped on every IAM write (by any process of the broker, once committed): compiled
        policy sets are cached per (key, generation)."""
        return self.store.version("iam")

    def iam_changed(self) -> None:
        self.store.bump("iam")
        self.policy_cache.clear()
        self.key_cache.clear()


STATE_KEY = web.AppKey("state", ServerState)
"""Where an aiohttp application (and so each request) finds the broker's state."""
