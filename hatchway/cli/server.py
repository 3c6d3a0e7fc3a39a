"""``hatchway server``: run the broker."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path
from typing import Any

import click

from hatchway.cli.notify import notify
from hatchway.cli.options import log_format_option, log_level_option
from hatchway.server.base import logs
from hatchway.server.process.main import StartError, check_tls, serve
from hatchway.server.runtime.state import ServerConfig
from hatchway.ssm import StartSessionMode

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class OperatorError(click.ClickException):
    """A mistake in how the broker was started: ``Error: <what is wrong>`` on one line of
    standard error and exit status 2 (click's own status for bad usage), no traceback."""

    exit_code = 2


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(ctx: click.Context, param: click.Parameter, value: Any) -> int:
    """A size in bytes: ``1048576``, ``64MiB``, ``64M``, ``4 GiB`` (binary units)."""
    m = re.fullmatch(r"\s*([0-9]+)\s*(?:([KMGT])(?:iB|B)?|B)?\s*", str(value), re.IGNORECASE)
    if m is None:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 1048576, 64MiB, 4GiB)")
    return int(m.group(1)) * _UNITS[(m.group(2) or "").upper()]


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as exc:
        raise click.BadParameter(
            f"{text!r} is not an address or CIDR", param_hint="--trusted-proxy"
        ) from exc


@click.command("server")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT (0: any)")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("hatchway-data"),
    show_default=True,
    help="The broker's data directory (its store, master.key, audit.jsonl).",
)
@click.option("--database-url", help="postgresql://… (default: SQLite in the data dir)")
@click.option(
    "--region", default="us-east-1", show_default=True, help="The region the broker serves."
)
@click.option(
    "--account-id",
    default="123456789012",
    show_default=True,
    help="The AWS account id of every ARN the broker makes.",
)
@click.option(
    "--scp-file",
    "scp_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Service control policy applied to every principal; repeat for levels.",
)
@click.option(
    "--strict-session-documents",
    is_flag=True,
    help="2025 AWS docs: a session without --document-name also needs the default "
    "document allowed.",
)
@click.option("--public-url", help="Base URL clients use to reach this broker (StreamUrl).")
@click.option(
    "--session-token-ttl",
    default=60.0,
    show_default=True,
    help="Seconds a data-channel token stays valid if unused.",
)
@click.option(
    "--ping-interval", default=20.0, show_default=True, help="Seconds between agent heartbeats."
)
@click.option(
    "--resume-window",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Seconds a session waits, Disconnected, for its client or node to reconnect "
    "before it ends (docs/reliability.md).",
)
@click.option(
    "--timeout-unit",
    default=60.0,
    show_default=True,
    hidden=True,
    help="Seconds per minute of idle/max session timeouts (tests shorten it).",
)
@click.option(
    "--s3-endpoint-url",
    help="S3 endpoint for session logs (default: AWS_ENDPOINT_URL_S3, else AWS).",
)
@click.option(
    "--logs-endpoint-url",
    help="CloudWatch Logs endpoint for session logs (default: AWS_ENDPOINT_URL_LOGS, else AWS).",
)
@click.option(
    "--record-input",
    is_flag=True,
    help="Keep keystrokes in recordings (input typed with echo off, passwords, included).",
)
@click.option(
    "--cloudwatch-stream-interval",
    default=1.0,
    show_default=True,
    help="Seconds between events of CloudWatch session-log streaming.",
)
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=click.IntRange(0, 64),
    help="API worker processes beside the broker's own (0: one process serves everything).",
)
@click.option(
    "--require-signed-data-channel",
    is_flag=True,
    help="Refuse data-channel websockets a client opens without a SigV4 signature "
    "(session-manager-plugin older than 1.2.688, presigned StreamUrls, some third-party clients); "
    "signed ones need ssmmessages:OpenDataChannel allowed.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Serve HTTPS and wss:// with this certificate chain (PEM); reloaded on SIGHUP.",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The private key (PEM) of --tls-cert.",
)
@click.option(
    "--recording-session-limit",
    callback=byte_size,
    default="64MiB",
    show_default=True,
    help="Bytes of one session's recording kept; beyond, it is truncated with a marker.",
)
@click.option(
    "--recording-total-limit",
    callback=byte_size,
    default="4GiB",
    show_default=True,
    help="Bytes of all recordings together; beyond, new recording is truncated with a marker.",
)
@click.option(
    "--recording-retention-days",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Delete recordings whose last output is older than this many days (0: keep them).",
)
@click.option(
    "--audit-retention-days",
    type=click.FloatRange(min=0),
    default=90.0,
    show_default=True,
    help="Delete audit rows (the store's, not audit.jsonl's) older than this many days "
    "(0: keep them).",
)
@click.option(
    "--audit-rotate-size",
    callback=byte_size,
    default="100MiB",
    show_default=True,
    help="Rotate audit.jsonl when it reaches this size (0: never).",
)
@click.option(
    "--audit-rotate-age",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Rotate audit.jsonl after this many hours of writing to it (0: never).",
)
@click.option(
    "--audit-rotate-keep",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Rotated audit files kept (audit.jsonl.1 is the newest).",
)
@click.option(
    "--audit-webhook-url",
    help='POST audit events as {"Records": [...]} to this URL in batches, retried with '
    "back-off (never delaying a call).",
)
@click.option(
    "--audit-webhook-batch",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="Most audit events in one webhook POST.",
)
@click.option(
    "--audit-webhook-interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds a webhook batch waits to fill before it is sent.",
)
@click.option(
    "--audit-syslog",
    metavar="URL",
    help="Send audit events to syslog (RFC 5424): udp://HOST:PORT, tcp://HOST:PORT or "
    "unix:///dev/log.",
)
@click.option(
    "--audit-syslog-facility",
    type=click.Choice(
        ["auth", "authpriv", "daemon", "user", "syslog"] + [f"local{i}" for i in range(8)]
    ),
    default="authpriv",
    show_default=True,
    help="The syslog facility of audit events.",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    help="Seconds a client has to send a request's head (0: no limit).",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    help="Seconds a client has to send a request's body after its head (0: no limit).",
)
@click.option(
    "--keepalive-timeout",
    default=60.0,
    show_default=True,
    help="Seconds an idle connection stays open between requests (0: no limit).",
)
@click.option(
    "--max-connections-per-address",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Open connections from one client address (behind --trusted-proxy: the forwarded one).",
)
@click.option(
    "--max-connections",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Open connections in all, per process (0: the descriptor limit less 128).",
)
@click.option(
    "--node-reserve",
    type=click.IntRange(0),
    help="Connections of --max-connections kept for nodes' control channels [default: a tenth].",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    help="CIDR of a reverse proxy whose PROXY v2 header or X-Forwarded-For/-Proto is "
    "believed; repeatable.",
)
@click.option(
    "--throttle-rate",
    default=200.0,
    show_default=True,
    help="API requests per second per principal, after the burst (0: no throttling).",
)
@click.option(
    "--throttle-burst",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="API requests a principal may send at once before --throttle-rate applies.",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to keep serving after SIGTERM with /readyz answering 503, so that load "
    "balancers stop sending clients here first (a second signal cuts it short).",
)
@log_level_option
@log_format_option
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One line per HTTP request at INFO under logger hatchway.access.",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve /metrics and /health on this address instead of the API's "
    "(then /metrics is not on the API port).",
)
def server_cmd(
    listen: str,
    data_dir: Path,
    database_url: str | None,
    region: str,
    account_id: str,
    scp_files: tuple[Path, ...],
    strict_session_documents: bool,
    public_url: str | None,
    session_token_ttl: float,
    ping_interval: float,
    resume_window: float,
    timeout_unit: float,
    s3_endpoint_url: str | None,
    logs_endpoint_url: str | None,
    record_input: bool,
    cloudwatch_stream_interval: float,
    workers: int,
    require_signed_data_channel: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    recording_session_limit: int,
    recording_total_limit: int,
    recording_retention_days: float,
    audit_retention_days: float,
    audit_rotate_size: int,
    audit_rotate_age: float,
    audit_rotate_keep: int,
    audit_webhook_url: str | None,
    audit_webhook_batch: int,
    audit_webhook_interval: float,
    audit_syslog: str | None,
    audit_syslog_facility: str,
    header_timeout: float,
    body_timeout: float,
    keepalive_timeout: float,
    max_connections_per_address: int,
    max_connections: int,
    node_reserve: int | None,
    trusted_proxies: tuple[str, ...],
    throttle_rate: float,
    throttle_burst: int,
    shutdown_grace: float,
    log_level: str,
    log_format: str,
    access_log: bool,
    metrics_listen: str | None,
) -> None:
    """Run the broker: SSM, IAM and STS APIs with SigV4 and enforced IAM policies."""
    level = log_level.upper()
    if level not in LOG_LEVELS:
        raise OperatorError(
            f"--log-level {log_level!r} is not a log level (one of {', '.join(LOG_LEVELS)})"
        )
    logs.configure(level, log_format)
    logs.set_access_log(access_log)
    config = ServerConfig(
        listen=listen,
        data_dir=data_dir,
        database_url=database_url,
        region=region,
        account_id=account_id,
        scp_files=list(scp_files),
        start_session_mode=StartSessionMode.STRICT
        if strict_session_documents
        else StartSessionMode.LEGACY,
        public_url=public_url,
        token_ttl=session_token_ttl,
        ping_interval=ping_interval,
        resume_window=resume_window,
        timeout_unit=timeout_unit,
        s3_endpoint_url=s3_endpoint_url,
        logs_endpoint_url=logs_endpoint_url,
        record_input=record_input,
        log_stream_interval=cloudwatch_stream_interval,
        workers=workers,
        require_signed_data_channel=require_signed_data_channel,
        tls_cert=tls_cert,
        tls_key=tls_key,
        recording_session_limit=recording_session_limit,
        recording_total_limit=recording_total_limit,
        recording_retention_days=recording_retention_days,
        audit_retention_days=audit_retention_days,
        audit_rotate_size=audit_rotate_size,
        audit_rotate_age=audit_rotate_age,
        audit_rotate_keep=audit_rotate_keep,
        audit_webhook_url=audit_webhook_url,
        audit_webhook_batch=audit_webhook_batch,
        audit_webhook_interval=audit_webhook_interval,
        audit_syslog=audit_syslog,
        audit_syslog_facility=audit_syslog_facility,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keepalive_timeout=keepalive_timeout,
        max_connections_per_address=max_connections_per_address,
        max_connections=max_connections,
        node_reserve=node_reserve,
        trusted_proxies=[_cidr(c) for c in trusted_proxies],
        throttle_rate=throttle_rate,
        throttle_burst=throttle_burst,
        shutdown_grace=shutdown_grace,
        log_format=log_format,
        access_log=access_log,
        metrics_listen=metrics_listen,
    )
    try:
        check_tls(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if audit_syslog:
        from hatchway.server.runtime.auditexport import SyslogExporter

        try:
            SyslogExporter(audit_syslog, facility=audit_syslog_facility)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--audit-syslog") from None
    if audit_webhook_url and not audit_webhook_url.startswith(("https://", "http://")):
        raise click.BadParameter(
            f"{audit_webhook_url!r} is not an http(s):// URL", param_hint="--audit-webhook-url"
        )
    try:
        asyncio.run(serve(config, notify=notify))
    except StartError as exc:
        raise OperatorError(str(exc)) from None
