"""Starting the broker: store, master key, bootstrap, HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sqlite3
import ssl
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from hatchway.server.accounts.bootstrap import bootstrap
from hatchway.server.app import create_app, create_metrics_app, open_state
from hatchway.server.base import metrics
from hatchway.server.base.crypto import SecretBox
from hatchway.server.base.tls import CertStore
from hatchway.server.control.nodes import follow_deregistrations
from hatchway.server.front import limits
from hatchway.server.ops import seed_account
from hatchway.server.process.boot import load_scps, settle_memory
from hatchway.server.process.cluster import join as join_cluster
from hatchway.server.process.workers import COUNTERS_FILE, Listener, WorkerPool
from hatchway.server.runtime.state import ServerConfig, ServerState
from hatchway.server.store import Store

log = logging.getLogger("hatchway.server")


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def private_data_dir(path: Path) -> None:
    """The data directory holds the master key, the SQLite store (recordings, sealed secrets)
    and the audit log: it is mode 0700, so only the broker's user reaches anything inside,
    whatever the files' own modes (SQLite creates its files 0644). Files left group- or
    world-readable by an older start are tightened too."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    tighten(path)


def tighten(path: Path) -> None:
    """Drop group and other permissions from the files in ``path``."""
    for child in path.iterdir():
        if child.is_file() and not child.is_symlink():
            child.chmod(child.stat().st_mode & 0o700)


class StartError(Exception):
    """What keeps the broker from starting, in one line for the operator (the command line
    prints it and exits with status 2, no traceback)."""


def _reason(exc: BaseException) -> str:
    """An OS or database error's own words, on one line (no SQLAlchemy background link)."""
    if isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)  # asyncio's bind error wraps it in more words
    else:
        text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split()) or type(exc).__name__


def _redacted_url(url: str) -> str:
    """A database URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def build_state(config: ServerConfig) -> tuple[ServerState, tuple[str, str] | None]:
    try:
        private_data_dir(config.data_dir)
        box = SecretBox.from_dir(config.data_dir)
    except OSError as exc:
        raise StartError(
            f"cannot use the data directory {config.data_dir}: {_reason(exc)}"
        ) from exc
    try:
        store = Store(config.store_url)
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise StartError(
            f"cannot open the store {_redacted_url(config.store_url)}: {_reason(exc)}"
        ) from exc
    try:
        # A write at once: a read-only database (or one the broker may not write) is found
        # here, not by the first API call.
        store.meta_set("last_start", datetime.now(UTC).isoformat())
        state = open_state(config, store, box, load_scps(config.scp_files))  # type: ignore[arg-type]
        generated = bootstrap(state, seed_account)
        seed_account(state)  # refresh AWS-owned documents on every start (idempotent)
        tighten(config.data_dir)  # the store's files, created 0644 by SQLite
    except (SQLAlchemyError, sqlite3.Error) as exc:
        store.close()
        raise StartError(
            f"cannot write to the store {_redacted_url(config.store_url)}: {_reason(exc)}"
        ) from exc
    except OSError as exc:
        store.close()
        raise StartError(
            f"cannot use the data directory {config.data_dir}: {_reason(exc)}"
        ) from exc
    return state, generated


SHUTDOWN_TIMEOUT = 2.0
"""Seconds aiohttp gives requests still running once the channels are closed (its default,
60 s, is what let a stop take ~48 s)."""


async def wait_for_stop(state: ServerState | None = None, grace: float = 0.0) -> None:
    """Until SIGINT or SIGTERM. With ``grace``, the broker then drains for that many seconds
    (``/readyz`` answers 503 while it still serves) or until a second signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if state is None:
        return
    state.draining = True
    if grace > 0:
        log.info("draining for %.0f s (/readyz answers 503); a second signal stops now", grace)
        stop.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), grace)
    log.info("stopping")


def announce_admin_credentials(path: Path, access_key_id: str, secret: str) -> None:
    """Tell the operator where the generated admin key is. The secret itself is shown only on
    a terminal: standard output is often kept (journald, container logs, CI logs), and a
    secret there outlives the 0600 file that is meant to hold it."""
    print(f"Hatchway admin credentials: {path} (mode 0600)", flush=True)
    if sys.stdout.isatty():
        print(
            f"  (shown once) aws_access_key_id = {access_key_id}\n"
            f"  aws_secret_access_key = {secret}",
            flush=True,
        )
    else:
        print(
            f"  aws_access_key_id = {access_key_id}; the secret key is in that file only "
            "(standard output is not a terminal)",
            flush=True,
        )


TLS_WITH_WORKERS = (
    "--workers cannot be combined with --tls-cert: API workers are handed each connection's "
    "descriptor before any byte is read, which a TLS connection cannot be (its handshake and "
    "keys would stay in the primary). Terminate TLS in a reverse proxy in front of a --workers "
    "broker, or serve TLS without --workers (docs/tls.md)."
)


def check_tls(config: ServerConfig) -> CertStore | None:
    """The certificate store for ``config`` (None without TLS); raises ValueError with what is
    wrong (one of the pair missing, --workers, files that do not load)."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if config.tls_cert is None or config.tls_key is None:
        return None
    if config.workers:
        raise ValueError(TLS_WITH_WORKERS)
    try:
        return CertStore(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot load the TLS certificate {config.tls_cert} with key {config.tls_key}: {exc}"
        ) from exc


def reload_on_sighup(certs: CertStore | None) -> None:
    """SIGHUP loads the certificate files again (new handshakes get the new certificate)."""
    if certs is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, certs.reload)


METRICS_DIR = "metrics"
"""With --workers: every process's metric files (prometheus_client multiprocess mode)."""


async def serve_metrics(state: ServerState) -> web.AppRunner | None:
    """``--metrics-listen HOST:PORT``: /metrics and /health there (plain HTTP), not on the API's
    address."""
    if state.config.metrics_listen is None:
        return None
    runner = web.AppRunner(create_metrics_app(state), access_log=None)
    await runner.setup()
    host, _, port = state.config.metrics_listen.rpartition(":")
    sock = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)))
    bound = sock.getsockname()[:2]
    await web.SockSite(runner, sock).start()
    print(f"Hatchway metrics on http://{url_host(bound[0])}:{bound[1]}/metrics", flush=True)
    return runner


async def serve(config: ServerConfig, notify: Callable[[str], object] | None = None) -> None:
    """Run the broker until SIGTERM/SIGINT. ``notify`` (systemd's ``Type=notify``, from the
    command line) is told ``READY=1`` once the API listens and ``STOPPING=1`` when it stops."""
    if config.workers:  # before any metric is made: every process writes its own files
        metrics.multiprocess(config.data_dir / METRICS_DIR, clear=True)
    certs = check_tls(config)
    scheme = "https" if certs is not None else "http"
    state, generated = build_state(config)
    if generated is not None:
        announce_admin_credentials(config.data_dir / "admin-credentials", *generated)
    if config.workers:
        counters = config.data_dir / COUNTERS_FILE
        counters.unlink(missing_ok=True)
        state.store.join_processes(counters, 0, config.workers + 1)
    follow_deregistrations(state, asyncio.get_running_loop())
    state.store.follow_changes()  # other brokers' writes (PostgreSQL), within POLL_INTERVAL
    cluster = join_cluster(state, asyncio.get_running_loop())  # PostgreSQL: docs/scale-out.md
    app = create_app(state)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    guard = limits.install(config)
    host, _, port = config.listen.rpartition(":")
    pool: WorkerPool | None = None
    listener: Listener | None = None
    server: asyncio.Server | None = None
    if config.workers:
        try:
            sock = socket.create_server((host or "127.0.0.1", int(port)), backlog=1024)
        except OSError as exc:
            await runner.cleanup()
            state.store.close()
            raise StartError(f"cannot listen on {config.listen}: {_reason(exc)}") from exc
        bound = sock.getsockname()[:2]
        if config.public_url is None:  # StreamUrls must name the port actually bound
            config.public_url = f"http://{bound[0]}:{bound[1]}"
        pool = WorkerPool(state, config.workers, lambda conn, head: listener.serve(conn, head))  # type: ignore[union-attr]
        listener = Listener(sock, runner, pool, guard)
        await pool.start()
        listener.start()
    else:
        # Every connection goes through the guard (deadlines, caps, forwarded addresses).
        try:
            server = await asyncio.get_running_loop().create_server(
                guard.wrap(runner.server),
                host or "127.0.0.1",
                int(port),
                backlog=guard.backlog,
                ssl=certs.context if certs is not None else None,
            )
        except OSError as exc:
            await runner.cleanup()
            state.store.close()
            raise StartError(f"cannot listen on {config.listen}: {_reason(exc)}") from exc
        bound = server.sockets[0].getsockname()[:2]
        if config.public_url is None:  # StreamUrls must name the port actually bound
            config.public_url = f"{scheme}://{url_host(bound[0])}:{bound[1]}"
    metrics_runner = await serve_metrics(state)
    reload_on_sighup(certs)
    print(
        f"Hatchway broker listening on {scheme}://{url_host(bound[0])}:{bound[1]} "
        f"(store: {state.store.dialect}, region {config.region}, "
        f"account {config.account_id})",
        flush=True,
    )
    settle_memory()
    if notify is not None:
        notify(f"READY=1\nSTATUS=listening on {scheme}://{url_host(bound[0])}:{bound[1]}")
    await wait_for_stop(state, config.shutdown_grace)
    if notify is not None:
        notify("STOPPING=1\nSTATUS=stopping")
    # Stop accepting, then (aiohttp's on_shutdown, app._drain) end the sessions with their
    # reason and close every channel with 1001, then the API workers.
    if listener is not None:
        listener.close()
    if server is not None:
        server.close()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await runner.cleanup()
    if pool is not None:
        await pool.stop()
    if cluster is not None:
        await cluster.stop()
    state.store.close()
