"""Broker configuration and the state shared by every request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatchway.iam import Policy
from hatchway.server.crypto import SecretBox
from hatchway.server.store import Store
from hatchway.ssm import StartSessionMode


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
    # Limits (docs/broker.md, "Limits"; hatchway.server.limits)
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


class ServerState:
    """Everything a request handler may need, created once at start."""

    def __init__(
        self, config: ServerConfig, store: Store, box: SecretBox, scps: list[list[Policy]]
    ) -> None:
        self.config = config
        self.store = store
        self.box = box
        self.scps = scps
        self.policy_cache: dict[tuple[str, int], Any] = {}
        self.nodes: dict[str, Any] = {}  # instance id -> live control channel
        self.relays: dict[str, Any] = {}  # session id -> live data-channel relay
        # In an API worker: how to ask the primary, which holds nodes and relays, to act.
        self.link: Any = None
        # Set on SIGTERM: /readyz answers 503 and the channels are being closed (app.py).
        self.draining = False
        self.key_cache: dict[str, tuple[tuple[int, int], Any]] = {}
        self.doc_cache: dict[str, tuple[tuple[int, int], Any]] = {}
        self.audit_path = config.data_dir / "audit.jsonl"
        from hatchway.server.call import AuditLog
        from hatchway.server.limits import Throttle
        from hatchway.server.recordings import Recordings

        self.throttle = Throttle(config.throttle_rate, config.throttle_burst)
        self.audit_log = AuditLog(store, self.audit_path)
        from hatchway.server import auditexport, retention

        self.audit_log.exporters = auditexport.exporters(config)
        self.audit_log.rotation = retention.Rotation(
            self.audit_path,
            max_bytes=config.audit_rotate_size,
            max_age=config.audit_rotate_age * 3600,
            keep=config.audit_rotate_keep,
        )
        self.recordings = Recordings(self)

    @property
    def generation(self) -> int:
        """Bumped on every IAM write (by any process of the broker, once committed): compiled
        policy sets are cached per (key, generation)."""
        return self.store.version("iam")

    def iam_changed(self) -> None:
        self.store.bump("iam")
        self.policy_cache.clear()
        self.key_cache.clear()
