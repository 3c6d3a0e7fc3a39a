"""Audit events leave the broker: to a webhook (HTTPS POST, batched, retried with back-off)
and to syslog (RFC 5424 over UDP, TCP or the local socket). docs/audit.md, "Export".

An exporter never blocks an API call: ``offer`` appends the event's JSON line to a bounded
queue (the oldest are dropped, counted and logged, when a destination stays down longer than
the queue lasts) and the exporter's own task sends it. Both run in every broker process that
records audit events (the primary and each API worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hatchway.server.base.ratelog import RateLimitedLog

log = logging.getLogger("hatchway.server.audit.export")

QUEUE_LIMIT = 10_000
"""Events kept waiting for one destination; beyond, the oldest are dropped."""


class Queue:
    """A bounded queue of JSON lines, and the event that wakes its sender."""

    def __init__(self, name: str, limit: int = QUEUE_LIMIT) -> None:
        self.name = name
        self.items: deque[str] = deque()
        self.limit = limit
        self.dropped = 0
        self.ready = asyncio.Event()
        self.failures = RateLimitedLog(log)

    def offer(self, line: str) -> None:
        if len(self.items) >= self.limit:
            self.items.popleft()
            self.dropped += 1
            self.failures.failure(
                f"audit export to {self.name}: queue full, {self.dropped} event(s) dropped",
                RuntimeError("destination unavailable"),
                where=f"export {self.name} queue",
            )
        self.items.append(line)
        self.ready.set()

    def take(self, n: int) -> list[str]:
        batch = [self.items.popleft() for _ in range(min(n, len(self.items)))]
        if not self.items:
            self.ready.clear()
        return batch

    def put_back(self, batch: list[str]) -> None:
        self.items.extendleft(reversed(batch))
        while len(self.items) > self.limit:
            self.items.popleft()
            self.dropped += 1
        self.ready.set()


Sleep = Callable[[float], Awaitable[None]]


class WebhookExporter:
    """POSTs ``{"Records": [event, …]}`` (CloudTrail's log file shape) to ``url``: up to
    ``batch`` events at once, at least every ``interval`` seconds while events wait. A batch
    that fails (no connection, a timeout, HTTP 408, 429 or 5xx) is tried again after
    ``backoff`` seconds, doubling up to ``max_backoff``; any other 4xx drops it (sending it
    again cannot help), logged."""

    def __init__(
        self,
        url: str,
        *,
        batch: int = 100,
        interval: float = 1.0,
        timeout: float = 10.0,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.batch = max(1, batch)
        self.interval = interval
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.queue = Queue(f"webhook {urlsplit(url).netloc}")
        self.sent = 0
        self.attempts = 0

    def offer(self, line: str) -> None:
        self.queue.offer(line)

    async def _post(self, http: aiohttp.ClientSession, batch: list[str]) -> bool | None:
        """True: delivered; False: try again; None: refused for good."""
        body = ('{"Records":[' + ",".join(batch) + "]}").encode()
        self.attempts += 1
        try:
            async with http.post(self.url, data=body, headers=self.headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return True
                if response.status in (408, 429) or response.status >= 500:
                    raise RuntimeError(f"HTTP {response.status}")
                log.error(
                    "audit webhook %s refused %d event(s) with HTTP %d: dropped",
                    self.url,
                    len(batch),
                    response.status,
                )
                return None
        except (aiohttp.ClientError, TimeoutError, RuntimeError, OSError) as exc:
            self.queue.failures.failure(
                f"audit webhook {self.url} failed; retrying", exc, where="webhook"
            )
            return False

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                while True:
                    await self.queue.ready.wait()
                    if len(self.queue.items) < self.batch:
                        await self.sleep(self.interval)  # gather a batch
                    await self._deliver(http)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):  # a last try when the broker stops
                    async with asyncio.timeout(2):
                        while self.queue.items:
                            if not await self._post(http, self.queue.take(self.batch)):
                                break
                raise

    async def _deliver(self, http: aiohttp.ClientSession) -> None:
        delay = self.backoff
        while self.queue.items:
            batch = self.queue.take(self.batch)
            result = await self._post(http, batch)
            if result:
                self.sent += len(batch)
                delay = self.backoff
            elif result is False:
                self.queue.put_back(batch)
                await self.sleep(delay)
                delay = min(delay * 2, self.max_backoff)


FACILITIES = {
    "kern": 0,
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}
_SEVERITY = {"allowed": 6, "denied": 5, "error": 4}  # info, notice, warning
MAX_DATAGRAM = 65_000
"""Bytes of one syslog message over UDP or the local socket; longer events are cut."""


def _printable(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit``."""
    clean = "".join(ch for ch in text if 33 <= ord(ch) <= 126)
    return clean[:limit] or "-"


def format_rfc5424(
    event: dict[str, Any],
    line: str,
    *,
    facility: int,
    hostname: str,
    app_name: str = "hatchway",
    procid: int | None = None,
) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG`` (RFC 5424): MSGID is the
    operation, MSG the event's JSON, severity info/notice/warning for allowed/denied/error."""
    severity = _SEVERITY.get(str(event.get("decision")), 6)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    head = (
        f"<{facility * 8 + severity}>1 {now} {_printable(hostname, 255)} "
        f"{_printable(app_name, 48)} {procid if procid is not None else os.getpid()} "
        f"{_printable(str(event.get('eventName', '')), 32)} - "
    )
    return head.encode() + b"\xef\xbb\xbf" + line.encode("utf-8", "surrogatepass")


class SyslogExporter:
    """Events to syslog: ``udp://host:514``, ``tcp://host:601`` (RFC 6587 octet counting)
    or ``unix:///dev/log`` (datagrams to the local syslog socket)."""

    def __init__(self, target: str, *, facility: str = "authpriv") -> None:
        parts = urlsplit(target)
        if parts.scheme not in ("udp", "tcp", "unix"):
            raise ValueError(f"{target!r}: syslog target must be udp://, tcp:// or unix://")
        if facility not in FACILITIES:
            raise ValueError(f"{facility!r} is not a syslog facility")
        self.scheme = parts.scheme
        self.path = parts.path
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (601 if parts.scheme == "tcp" else 514)
        if self.scheme == "unix" and not self.path:
            raise ValueError(f"{target!r}: unix:// needs a socket path, e.g. unix:///dev/log")
        self.facility = FACILITIES[facility]
        self.hostname = socket.gethostname()
        self.queue = Queue(f"syslog {target}")
        self.sent = 0

    def offer(self, line: str) -> None:
        self.queue.offer(line)

    def _message(self, line: str) -> bytes:
        try:
            event = json.loads(line)
        except ValueError:
            event = {}
        return format_rfc5424(event, line, facility=self.facility, hostname=self.hostname)

    async def run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        sock: socket.socket | None = None
        loop = asyncio.get_running_loop()
        delay = 0.5
        try:
            while True:
                await self.queue.ready.wait()
                batch = self.queue.take(100)
                try:
                    if self.scheme == "tcp":
                        if writer is None or writer.is_closing():
                            _reader, writer = await asyncio.open_connection(self.host, self.port)
                        for line in batch:
                            msg = self._message(line)
                            writer.write(str(len(msg)).encode() + b" " + msg)
                        await writer.drain()
                    else:
                        if sock is None:
                            family = socket.AF_UNIX if self.scheme == "unix" else socket.AF_INET
                            if self.scheme == "udp" and ":" in self.host:
                                family = socket.AF_INET6
                            sock = socket.socket(family, socket.SOCK_DGRAM)
                            sock.setblocking(False)
                        where: Any = self.path if self.scheme == "unix" else (self.host, self.port)
                        for line in batch:
                            await loop.sock_sendto(sock, self._message(line)[:MAX_DATAGRAM], where)
                except OSError as exc:
                    self.queue.put_back(batch)
                    self.queue.failures.failure(
                        f"audit export to syslog {self.scheme}://{self.host or self.path} failed",
                        exc,
                        where="syslog",
                    )
                    if writer is not None:
                        writer.close()
                        writer = None
                    if sock is not None:
                        sock.close()
                        sock = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 0.5
                self.sent += len(batch)
        finally:
            if writer is not None:
                writer.close()
            if sock is not None:
                sock.close()


Exporter = WebhookExporter | SyslogExporter


def exporters(config: Any) -> list[Exporter]:
    """The exporters ``--audit-webhook-url`` and ``--audit-syslog`` ask for."""
    out: list[Exporter] = []
    url = getattr(config, "audit_webhook_url", None)
    if url:
        out.append(
            WebhookExporter(
                url,
                batch=getattr(config, "audit_webhook_batch", 100),
                interval=getattr(config, "audit_webhook_interval", 1.0),
            )
        )
    target = getattr(config, "audit_syslog", None)
    if target:
        out.append(
            SyslogExporter(target, facility=getattr(config, "audit_syslog_facility", "authpriv"))
        )
    return out
