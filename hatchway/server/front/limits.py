"""Connection limits and forwarded client addresses (throttling: ``runtime/throttle.py``).

Every connection the broker accepts (in every process, ``--workers`` included) is wrapped in a
:class:`GuardedProtocol` before aiohttp sees it. The guard

* closes a connection whose request head is not complete ``header_timeout`` seconds after it
  opened (or after the first byte of a later request on a kept-alive connection), whose body is
  not complete ``body_timeout`` seconds after its head, or that stays idle between requests for
  ``keepalive_timeout`` seconds (a websocket is one long request: these never apply to it);
* caps the connections open from one client address and in total (below the descriptor limit),
  keeping ``node_reserve`` of them for the nodes' control channels: when the cap is reached the
  oldest connection without a request in progress is closed for the newcomer, and a connection
  admitted into the reserve must turn out to be a control channel;
* takes the client's address (and whether it used TLS) from the PROXY protocol v2 header or the
  ``X-Forwarded-For`` / ``X-Forwarded-Proto`` headers, from ``--trusted-proxy`` peers only
  (:func:`client_of`): the per-address cap, ``aws:SourceIp``, ``aws:SecureTransport``, audit
  records and StreamUrls all use that address.

:class:`Throttle` is the per-principal token bucket of the API (``ThrottlingException``).
See docs/broker.md, "Limits".
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from hatchway.server.runtime.state import ServerConfig

log = logging.getLogger("hatchway.server.limits")

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_PROXY_V2_MAX = 16 + 4096  # a header longer than this (TLVs included) is refused
_CONTROL_CHANNEL = "/v1/control-channel/"
_FILES_MARGIN = 128  # descriptors kept for the store, logs, worker links, recordings


def _http(status: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


TOO_MANY = _http("503 Service Unavailable", "Too many connections.\n")
TIMED_OUT = _http("408 Request Timeout", "Request timeout.\n")
BAD_PROXY = _http("400 Bad Request", "Invalid PROXY protocol header.\n")


# -- addresses ------------------------------------------------------------------------------


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalize(text: str) -> str:
    """An address as the broker records it (IPv4-mapped IPv6 as IPv4); garbage unchanged."""
    addr = _address(text)
    return str(addr) if addr is not None else text


@dataclass(frozen=True)
class Client:
    """Who is at the other end of a request: address, and whether it came over TLS."""

    address: str
    secure: bool


class TrustedProxies:
    """The ``--trusted-proxy`` networks and how forwarded headers are read through them."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def __contains__(self, address: str) -> bool:
        addr = _address(address)
        return addr is not None and any(addr in net for net in self.networks)

    def client(self, peer: str, secure: bool, xff: str | None, xfp: str | None) -> Client:
        """The client behind ``peer``: ``X-Forwarded-For`` is read from the right, hop by hop,
        while the hop is a trusted proxy; the first untrusted hop (or the last valid one) is
        the client. ``X-Forwarded-Proto`` gives ``secure`` for that hop. A peer that is not
        trusted is the client, whatever it sent."""
        if not self.networks or peer not in self:
            return Client(peer, secure)
        address, depth = peer, -1
        hops = [h.strip() for h in (xff or "").split(",")]
        for i, hop in enumerate(reversed(hops)):
            if _address(hop) is None:
                break
            address, depth = normalize(hop), i
            if address not in self:
                break
        protos = [p.strip().lower() for p in (xfp or "").split(",") if p.strip()]
        if protos:
            proto = protos[max(0, len(protos) - 1 - max(depth, 0))]
            secure = proto in ("https", "wss")
        return Client(address, secure)


def parse_proxy_v2(buf: bytes) -> tuple[int, str | None, bool] | None:
    """A PROXY protocol v2 header at the start of ``buf`` (which starts with the signature):
    ``(its length, the source address or None (LOCAL, or not TCP), TLS)``; None: more bytes
    needed. ValueError: not a valid header."""
    if len(buf) < 16:
        return None
    ver_cmd, family = buf[12], buf[13]
    (length,) = struct.unpack("!H", buf[14:16])
    if ver_cmd >> 4 != 2 or ver_cmd & 0x0F > 1 or 16 + length > _PROXY_V2_MAX:
        raise ValueError("bad PROXY v2 header")
    total = 16 + length
    if len(buf) < total:
        return None
    body = buf[16:total]
    if ver_cmd & 0x0F == 0:  # LOCAL: the proxy's own connection (its health checks)
        return total, None, False
    source: str | None = None
    tlv = len(body)
    if family >> 4 == 1:
        if len(body) < 12:
            raise ValueError("short PROXY v2 IPv4 addresses")
        source, tlv = str(ipaddress.IPv4Address(body[:4])), 12
    elif family >> 4 == 2:
        if len(body) < 36:
            raise ValueError("short PROXY v2 IPv6 addresses")
        source, tlv = normalize(str(ipaddress.IPv6Address(body[:16]))), 36
    tls = False
    while tlv + 3 <= len(body):
        kind = body[tlv]
        (size,) = struct.unpack("!H", body[tlv + 1 : tlv + 3])
        if kind == 0x20 and size >= 1:  # PP2_TYPE_SSL: client bit 0x01 = over TLS
            tls = bool(body[tlv + 3] & 0x01)
        tlv += 3 + size
    return total, source, tls


# -- the connection guard -------------------------------------------------------------------


def descriptor_budget(config: ServerConfig) -> tuple[int, int, int]:
    """``(total connection cap, reserve for control channels, accept backlog)``. The soft
    RLIMIT_NOFILE is raised to the hard limit first. asyncio accepts up to a backlog's worth
    of connections before the guard sees the first of them, so the cap leaves room for one
    such batch, and ``_FILES_MARGIN`` descriptors for everything else; the default reserve is
    a tenth of the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    backlog = min(1024, max(16, limit // 8))
    ceiling = max(16, limit - _FILES_MARGIN - backlog)
    total = min(config.max_connections or ceiling, ceiling)
    reserve = config.node_reserve if config.node_reserve is not None else max(1, total // 10)
    return total, min(reserve, total - 1), backlog


class Held:
    """Something the guard counts: a connection being served, or one the primary is sniffing."""

    pool = "gone"  # general | reserve | node once admitted; gone: not (or no longer) counted
    address: str | None = None  # the address it is counted under (per-address cap)
    active = 0  # requests in progress
    served = 0  # requests begun on it so far

    def evict(self) -> None:
        """Close it to make room (one that never sent a request is answered 503 first)."""
        raise NotImplementedError


class ConnectionGuard:
    """One per process: the connections it holds, by address and pool."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.proxies = TrustedProxies(config.trusted_proxies)
        self.total, self.reserve, self.backlog = descriptor_budget(config)
        self.per_address: Counter[str] = Counter()
        self.pools: Counter[str] = Counter()
        self.idle: dict[Held, None] = {}  # no request in progress, oldest first: evictable
        self.idle_at: dict[str, dict[Held, None]] = {}  # the same, by counted address
        self.by_transport: dict[asyncio.BaseTransport, GuardedProtocol] = {}
        self.refused = 0  # connections refused or closed by the caps, since the start
        self._warned = -1e9

    @property
    def open(self) -> int:
        return sum(self.pools.values())

    def wrap(self, server: web.Server | None, head: bytes = b"") -> Callable[[], asyncio.Protocol]:
        """A protocol factory: aiohttp's ``server`` (a runner's) behind this guard; ``head``:
        bytes already read from the connection, fed first."""
        assert server is not None, "the runner is set up"
        return lambda: GuardedProtocol(self, server(), head)

    def admit(self, held: Held, address: str | None) -> bool:
        """Count ``held`` (under ``address`` unless None); False: refuse it.

        The general pool holds up to ``total - reserve``; when it is full, the oldest idle
        general connection makes way, so the reserve is used only when every general
        connection is busy, and a reserve place is freed from the reserve's own idle ones."""
        if address is not None and not self.count_address(held, address):
            return False
        room = self.pools["general"] < self.total - self.reserve and self.open < self.total
        if room or self._evict_one("general"):
            pool = "general"
        elif self.open < self.total or self._evict_one("reserve"):
            pool = "reserve"
        else:
            self.uncount_address(held)
            self._refusing("connection cap reached")
            return False
        held.pool = pool
        self.pools[pool] += 1
        self.rested(held)
        return True

    def _evict_one(self, pool: str) -> bool:
        """Close the oldest connection of ``pool`` without a request in progress."""
        victim = next((h for h in self.idle if h.pool == pool and h.active == 0), None)
        if victim is None:
            return False
        self._refusing("connection cap reached: closing idle connections")
        victim.evict()
        self.release(victim)
        return True

    def _refusing(self, why: str) -> None:
        """Count a refusal; say so in the log at most once a minute (a flood must not
        flood the log too)."""
        self.refused += 1
        now = time.monotonic()
        if now - self._warned >= 60.0:
            self._warned = now
            log.warning("%s (%d connections refused or closed so far)", why, self.refused)

    def count_address(self, held: Held, address: str) -> bool:
        """Count ``held`` under ``address``. At the address's cap its own oldest idle
        connection makes way; if all of them are busy, False (refuse ``held``)."""
        if held.address == address:
            return True
        if self.per_address[address] >= self.config.max_connections_per_address:
            victim = next(iter(self.idle_at.get(address, ())), None)
            if victim is None or victim is held:
                self._refusing(f"per-address connection cap reached by {address}")
                return False
            self._refusing(f"per-address connection cap reached by {address}: closing idle ones")
            victim.evict()
            self.release(victim)
        was_idle = held in self.idle
        self.busy(held)
        self.uncount_address(held)
        self.per_address[address] += 1
        held.address = address
        if was_idle:
            self.rested(held)
        return True

    def uncount_address(self, held: Held) -> None:
        if held.address is not None:
            was_idle = held in self.idle
            self.busy(held)
            if was_idle:
                self.idle[held] = None
            self.per_address[held.address] -= 1
            if self.per_address[held.address] <= 0:
                del self.per_address[held.address]
            held.address = None

    def promote(self, held: Held) -> None:
        """``held`` is a control channel: counted in the total only, in the node pool."""
        self.uncount_address(held)
        if held.pool not in ("node", "gone"):
            self.pools[held.pool] -= 1
            held.pool = "node"
            self.pools["node"] += 1

    def busy(self, held: Held) -> None:
        self.idle.pop(held, None)
        if held.address is not None:
            mine = self.idle_at.get(held.address)
            if mine is not None:
                mine.pop(held, None)
                if not mine:
                    del self.idle_at[held.address]

    def rested(self, held: Held) -> None:
        self.idle[held] = None
        if held.address is not None:
            self.idle_at.setdefault(held.address, {})[held] = None

    def release(self, held: Held) -> None:
        if held.pool != "gone":
            self.pools[held.pool] -= 1
            held.pool = "gone"
        self.busy(held)
        self.uncount_address(held)


class GuardedProtocol(Held, asyncio.Protocol):
    """aiohttp's protocol for one connection, with deadlines, caps and the forwarded client."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol, head: bytes = b"") -> None:
        self.guard = guard
        self.inner = inner
        self.head = head
        self.transport: asyncio.Transport | None = None
        self.peer = Client("", False)  # the socket's peer, or the PROXY header's source
        self.trusted_peer = False
        self.proxy_buf: bytearray | None = None  # a trusted peer's PROXY header, if any
        self.admitted = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""
        self.request: web.BaseRequest | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        address = normalize(str(peer[0])) if isinstance(peer, tuple) and peer else ""
        self.peer = Client(address, transport.get_extra_info("sslcontext") is not None)
        self.trusted_peer = address in self.guard.proxies
        # A trusted proxy's connections count under the client they carry (PROXY header or
        # X-Forwarded-For), so not at all until it is known.
        if not self.guard.admit(self, None if self.trusted_peer else address):
            self._refuse(TOO_MANY)
            return
        self.admitted = True
        self.guard.by_transport[transport] = self
        if self.trusted_peer:
            self.proxy_buf = bytearray()
        self.inner.connection_made(transport)
        self._arm("header")
        if self.head:
            self.data_received(self.head)
            self.head = b""

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.proxy_buf is not None:
            self.proxy_buf += data
            buf = bytes(self.proxy_buf)
            if len(buf) < len(PROXY_V2_SIGNATURE) and PROXY_V2_SIGNATURE.startswith(buf):
                return
            if buf.startswith(PROXY_V2_SIGNATURE):
                try:
                    parsed = parse_proxy_v2(buf)
                except ValueError:
                    self._refuse(BAD_PROXY)
                    return
                if parsed is None:
                    return
                size, source, tls = parsed
                if source is not None:
                    self.peer = Client(source, tls or self.peer.secure)
                    self.trusted_peer = source in self.guard.proxies
                    if not self.trusted_peer and not self.guard.count_address(self, source):
                        self._refuse(TOO_MANY)
                        return
                buf = buf[size:]
            self.proxy_buf = None
            data = buf
            if not data:
                return
        if self.active == 0 and self.timer_kind == "idle":
            self._arm("header")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self.transport is not None:
            self.guard.by_transport.pop(self.transport, None)
        self.guard.release(self)
        if self.admitted:
            self.admitted = False
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # Held

    def evict(self) -> None:
        if self.served == 0:
            self._refuse(TOO_MANY)
        else:  # idle between requests: a client retries a closed keep-alive connection
            self._cancel()
            if self.transport is not None:
                self.transport.close()

    # requests (from the middleware)

    def client(self, request: web.BaseRequest) -> Client:
        return self.guard.proxies.client(
            self.peer.address,
            self.peer.secure,
            request.headers.get("X-Forwarded-For"),
            request.headers.get("X-Forwarded-Proto"),
        )

    def request_started(self, request: web.BaseRequest) -> web.Response | None:
        """A request's head is in: the header deadline is met. None: serve it; else the
        refusal to send (the connection closes after it)."""
        self._cancel()
        self.active += 1
        self.served += 1
        self.guard.busy(self)
        if request.path.startswith(_CONTROL_CHANNEL):
            # A node's control channel: its signed upgrade is checked before anything else
            # (refused at once), then it is one long request that is never evicted and not
            # counted per address. It may use the reserve.
            self.guard.promote(self)
            return None
        if self.trusted_peer and not self.guard.count_address(self, self.client(request).address):
            return _refusal(503, "Too many connections.\n")
        if self.pool == "reserve":  # admitted into the room kept for channels
            return _refusal(503, "Too many connections.\n")
        if request.body_exists and not request.content.is_eof():
            self.request = request
            self._arm("body")
        return None

    def request_finished(self) -> None:
        self.active -= 1
        self.request = None
        if self.active == 0 and self.admitted:
            self.guard.rested(self)
            self._arm("idle")

    # deadlines

    def _arm(self, kind: str) -> None:
        self._cancel()
        config = self.guard.config
        seconds = {
            "header": config.header_timeout,
            "body": config.body_timeout,
            "idle": config.keepalive_timeout,
        }[kind]
        if seconds > 0:
            self.timer = asyncio.get_running_loop().call_later(seconds, self._expired, kind)
            self.timer_kind = kind

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = None
        self.timer_kind = ""

    def _expired(self, kind: str) -> None:
        self.timer = None
        self.timer_kind = ""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if kind == "body":
            if self.request is None or self.request.content.is_eof():
                return
            log.debug("closing a connection from %s: body not in time", self.peer.address)
            self._refuse(TIMED_OUT)
        elif kind == "header":
            log.debug("closing a connection from %s: head not in time", self.peer.address)
            self._refuse(TIMED_OUT)
        elif transport.get_write_buffer_size() > 0:  # idle, but still sending a response
            self._arm("idle")
        else:
            transport.close()

    def _refuse(self, answer: bytes) -> None:
        self._cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def _refusal(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=text)
    response.force_close()
    return response


def connection_of(request: web.BaseRequest) -> GuardedProtocol | None:
    transport = request.transport
    if transport is None:
        return None
    for guard in _GUARDS:
        conn = guard.by_transport.get(transport)
        if conn is not None:
            return conn
    return None


_GUARDS: list[ConnectionGuard] = []


def install(config: ServerConfig) -> ConnectionGuard:
    """This process's guard (one per process)."""
    guard = ConnectionGuard(config)
    _GUARDS.clear()
    _GUARDS.append(guard)
    return guard


def channel_opened(request: web.BaseRequest) -> None:
    """A data channel on ``request``'s connection has sent its first message (its token is
    checked at once, and a wrong one closes it): it no longer counts against the per-address
    cap (a node runs one per session; many users may share one NAT address). Until then it
    counts like any request, so an upgrade waiting for its first message holds a place of its
    address, and cannot use the reserve kept for control channels."""
    conn = connection_of(request)
    if conn is not None:
        conn.guard.uncount_address(conn)


def client_of(request: web.BaseRequest) -> Client:
    """The request's client: through trusted proxies, the forwarded one."""
    conn = connection_of(request)
    if conn is not None:
        return conn.client(request)
    return Client(normalize(request.remote or ""), request.secure)


@web.middleware
async def guard_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    conn = connection_of(request)
    if conn is None:
        response: web.StreamResponse = await handler(request)
        return response
    refusal = conn.request_started(request)
    try:
        if refusal is not None:
            return refusal
        response = await handler(request)
        if conn.pool == "node":  # a channel request ends its connection (no keep-alive)
            response.force_close()
        return response
    finally:
        conn.request_finished()
