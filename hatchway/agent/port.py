"""Port sessions on the node: TCP forwarding to ``host:portNumber``
(docs/reference/data-channel.md#port-sessions).

Three ways to run, chosen from the document's properties and the client's version (the
handshake tells both ends the properties, so they agree):

* **mux** — ``type: LocalPortForwarding`` and a client ≥ 1.1.70: the client's Output is one
  smux v1 session; every stream the client opens is a new TCP connection to the destination.
  A failed dial sends Flag ConnectToPortError and closes that stream; the session goes on.
* **basic** — ``type: LocalPortForwarding`` with an older client: one TCP connection, raw
  bytes. When the destination closes, or the client sends DisconnectToPort, the next data
  from the client dials again.
* **stream** — no ``type`` (``AWS-StartSSHSession``): one TCP connection, raw bytes; when the
  destination closes, the session ends.

Flow control: destination data goes out in frames of up to 256 KiB as soon as it is read;
when the session's send window is full every destination socket stops being read until
acknowledgements free it. Toward a destination, each connection buffers at most
:data:`HIGH_WATER` bytes; above that the plugin stops accepting client data, which then waits
unacknowledged (the client stops at its window) until the buffer drains below
:data:`LOW_WATER`. smux v1 has no per-stream window, so one slow destination holds up the other
streams of its session, as with AWS.

Remote hosts are resolved on every dial and each address is checked against the instance
metadata and Amazon DNS addresses AWS's agent refuses, plus the addresses (or networks) in
``HATCHWAY_DENIED_PORT_FORWARDING_IPS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from hatchway.agent.plugin import PluginError, SessionIO, SessionPlugin
from hatchway.protocol import Flag, PayloadError, PayloadType, build_flag, parse_flag, parse_version
from hatchway.protocol.outbox import Outbox
from hatchway.protocol.port import (
    FRAME_BYTES,
    HIGH_WATER,
    KEEPALIVE_INTERVAL,
    LOCAL_PORT_FORWARDING,
    LOW_WATER,
    READ_BYTES,
    PortMode,
)
from hatchway.protocol.smux import (
    Reply,
    SmuxError,
    SmuxRole,
    SmuxSession,
    StreamClosed,
    StreamData,
    StreamOpened,
)

__all__ = [
    "DENIED_ENV",
    "DENIED_REMOTE_IPS",
    "HIGH_WATER",
    "LOW_WATER",
    "ForbiddenAddress",
    "PortMode",
    "PortPlugin",
    "denied_networks",
    "is_forbidden",
]

log = logging.getLogger("hatchway.agent.port")

MUX_CLIENT_VERSION = (1, 1, 70)
"""Clients from this version on speak smux (AWS's agent: ``muxSupportedClientVersion``)."""
KEEPALIVE_CLIENT_VERSION = (1, 2, 331, 0)
"""Clients up to this version run smux keepalive and drop a session silent for 30 s."""
MAX_STREAMS = 1024
"""Concurrent connections per session; more are refused like a failed dial."""
DIAL_TIMEOUT = 30.0

DENIED_REMOTE_IPS = (
    "169.254.169.254",
    "fd00:ec2::254",
    "169.254.169.253",
    "fd00:ec2::253",
    "169.254.169.123",
    "fd00:ec2::123",
    "169.254.169.250",
    "169.254.169.251",
    "fd00:ec2::240",
)
"""What AWS's agent refuses by default (instance metadata, Amazon DNS, time sync, …)."""
DENIED_ENV = "HATCHWAY_DENIED_PORT_FORWARDING_IPS"
"""Extra addresses or networks to refuse, comma or space separated (an agent setting)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForbiddenAddress(Exception):
    """The destination resolves to an address port forwarding must not reach."""


def denied_networks(extra: str | None = None) -> list[Network]:
    """AWS's denied addresses plus ``extra`` (default: the :data:`DENIED_ENV` variable).
    Entries that are neither an address nor a network are logged and skipped."""
    text = os.environ.get(DENIED_ENV, "") if extra is None else extra
    out = [ipaddress.ip_network(a) for a in DENIED_REMOTE_IPS]
    for item in text.replace(",", " ").split():
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            log.error("%s: %r is not an IP address or network; ignored", DENIED_ENV, item)
    return out


def is_forbidden(address: str, denied: Iterable[Network]) -> bool:
    """Whether ``address`` (as resolved; IPv4-mapped IPv6 counts as IPv4) is denied."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # not an address we can judge: do not connect to it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in denied)


def _version(text: str | None) -> tuple[int, ...] | None:
    return parse_version(text) if text else None


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection to the destination (one smux stream, or the basic connection).

    Reads land in the plugin's one read buffer (the loop runs one callback at a time and the
    data is framed, i.e. copied, before the next read), sized so that one read plus its smux
    headers is one full data-channel frame.
    """

    def __init__(self, plugin: PortPlugin, stream_id: int) -> None:
        self.plugin = plugin
        self.stream_id = stream_id
        self.transport: asyncio.Transport | None = None
        self.address: tuple[str, int] | None = None
        self.pending: list[bytes | memoryview] = []  # client data that came while dialing
        self.pending_size = 0
        self.bytes_in = 0  # from the destination
        self.bytes_out = 0  # to the destination
        self.write_paused = False
        self.closing = False  # the client closed the stream while we were dialing
        self.ended = False
        self.opened = False  # the "open" record was made
        self.recorded = False  # …and the "close" record
        self.error: str | None = None

    @property
    def blocked(self) -> bool:
        return self.write_paused or self.pending_size > HIGH_WATER

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.address = (str(peer[0]), int(peer[1]))
        if self.plugin.reading_paused:
            transport.pause_reading()
        # What the client sent while we dialed goes first, before anything delivered later.
        self.attach_pending()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.plugin.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_in += nbytes
        self.plugin.from_destination(self, self.plugin.read_buffer[:nbytes])

    def eof_received(self) -> bool:
        return False  # smux v1 has no half-close: the connection ends

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = str(exc) or type(exc).__name__
        self.plugin.destination_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.plugin.update_blocked(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.plugin.update_blocked(self)

    # the plugin's side

    def write(self, data: bytes | memoryview) -> None:
        self.bytes_out += len(data)
        if self.transport is None:
            self.pending.append(data)
            self.pending_size += len(data)
            self.plugin.update_blocked(self)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def attach_pending(self) -> None:
        assert self.transport is not None
        pending, self.pending, self.pending_size = self.pending, [], 0
        if pending:
            self.transport.writelines(pending)
        self.plugin.update_blocked(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first
        else:
            self.closing = True


class PortPlugin(SessionPlugin):
    """``Port``: forwarding to ``host:portNumber`` in mux, basic or stream mode."""

    session_types = ("Port",)

    def __init__(self, io: SessionIO) -> None:
        super().__init__(io)
        self.mode: PortMode | None = None
        self.host = ""
        self.port = 0
        self.denied = denied_networks()
        self.smux: SmuxSession | None = None
        self.conns: dict[int, _Connection] = {}
        self.basic: _Connection | None = None
        self.reading_paused = False
        self.started = False
        self.closed = False
        self._outbox = Outbox(FRAME_BYTES)
        self.read_buffer = memoryview(bytearray(READ_BYTES))
        self._flush_scheduled = False
        self._blocked: set[int] = set()
        self._resume_scheduled = False
        self._exit_code: int | None = None
        self._exit_reported = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_basic_id = 0

    # --- contract ------------------------------------------------------------------------

    def handshake_properties(self) -> Any:
        """The resolved document properties: the client reads portNumber, localPortNumber,
        type (and host) from them."""
        props = self.io.document.get("properties")
        return props if isinstance(props, dict) else None

    async def start(self) -> None:
        props = self.io.document.get("properties")
        if not isinstance(props, dict):
            raise PluginError(f"Unable to remarshal session properties. {props}")
        port_text = str(props.get("portNumber") or "").strip()
        if not port_text:
            raise PluginError(f"Port number is empty in session properties. {props}")
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise PluginError(f"Invalid port number {port_text} in session properties.")
        self.port = int(port_text)
        self.host = str(props.get("host") or "").strip()
        if self.host:
            await self._check_host()
        port_type = str(props.get("type") or "")
        client = _version(self.io.handshake.client_version if self.io.handshake else None)
        if (
            port_type == LOCAL_PORT_FORWARDING
            and client is not None
            and client >= MUX_CLIENT_VERSION
        ):
            self.mode = PortMode.MUX
            self.smux = SmuxSession(SmuxRole.SERVER)
            if client <= KEEPALIVE_CLIENT_VERSION:
                self._spawn(self._keepalive())
        else:
            self.mode = PortMode.BASIC if port_type == LOCAL_PORT_FORWARDING else PortMode.STREAM
            conn = self._new_basic()
            try:
                await self._dial(conn)
            except (OSError, TimeoutError, ForbiddenAddress) as exc:
                self.conns.pop(conn.stream_id, None)
                raise PluginError(f"Unable to connect to specified port: {_reason(exc)}") from None
        log.info(
            "session %s: port forwarding to %s:%d (%s)",
            self.io.session_id,
            self.host or "localhost",
            self.port,
            self.mode,
        )
        self.started = True
        self._schedule_resume()

    def accepting(self) -> bool:
        return self.closed or (self.started and not self._blocked)

    def on_input(self, payload_type: int, payload: bytes) -> None:
        if self.closed:
            return
        if payload_type == PayloadType.OUTPUT:
            if self.mode is PortMode.MUX:
                self._mux_input(payload)
            else:
                self._basic_input(payload)
        elif payload_type == PayloadType.FLAG:
            try:
                flag = parse_flag(payload)
            except PayloadError as exc:
                log.warning("session %s: bad flag from the client: %s", self.io.session_id, exc)
                return
            self._on_flag(flag)

    def on_writable(self) -> None:
        if self._outbox:
            self._flush()
        elif self.reading_paused and self.io.writable:
            self._set_reading(True)

    def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
            self._record_end(conn)
        self.conns.clear()
        self._blocked.clear()

    # --- client → destination --------------------------------------------------------

    def _mux_input(self, payload: bytes) -> None:
        assert self.smux is not None
        try:
            events = self.smux.receive(payload)
        except SmuxError as exc:
            log.warning(
                "session %s: broken smux stream from the client: %s", self.io.session_id, exc
            )
            self._end(1)
            return
        for event in events:
            if isinstance(event, StreamData):
                conn = self.conns.get(event.stream_id)
                if conn is not None:
                    conn.write(event.data)
            elif isinstance(event, StreamOpened):
                self._open_stream(event.stream_id)
            elif isinstance(event, StreamClosed):
                conn = self.conns.get(event.stream_id)
                if conn is not None:
                    conn.close()
                else:
                    self._send(PayloadType.OUTPUT, self.smux.close(event.stream_id))
            elif isinstance(event, Reply):
                self._send(PayloadType.OUTPUT, event.data)

    def _open_stream(self, stream_id: int) -> None:
        if len(self.conns) >= MAX_STREAMS:
            self._refuse(stream_id, f"more than {MAX_STREAMS} connections in this session")
            return
        conn = _Connection(self, stream_id)
        self.conns[stream_id] = conn
        self._spawn(self._connect_stream(conn))

    async def _connect_stream(self, conn: _Connection) -> None:
        try:
            await self._dial(conn)
        except (OSError, TimeoutError, ForbiddenAddress) as exc:
            self.conns.pop(conn.stream_id, None)
            self.update_blocked(conn)
            self._refuse(conn.stream_id, _reason(exc))
            return

    def _refuse(self, stream_id: int, reason: str) -> None:
        log.warning(
            "session %s: connection to %s:%d failed: %s",
            self.io.session_id,
            self.host or "localhost",
            self.port,
            reason,
        )
        self.io.record(
            "conn",
            {
                "event": "refused",
                "stream": stream_id,
                "host": self.host or "localhost",
                "port": self.port,
                "bytes_in": 0,
                "bytes_out": 0,
                "error": reason,
            },
        )
        self._send(PayloadType.FLAG, build_flag(Flag.CONNECT_TO_PORT_ERROR))
        if self.smux is not None:
            self._send(PayloadType.OUTPUT, self.smux.close(stream_id))

    def _basic_input(self, payload: bytes) -> None:
        conn = self.basic
        if conn is None or conn.ended:
            # The destination went away (or the client disconnected): this data dials again.
            conn = self._new_basic()
            self._spawn(self._redial(conn))
        conn.write(payload)

    async def _redial(self, conn: _Connection) -> None:
        try:
            await self._dial(conn)
        except (OSError, TimeoutError, ForbiddenAddress) as exc:
            self.conns.pop(conn.stream_id, None)
            self.update_blocked(conn)
            log.warning("session %s: reconnecting to the port failed: %s", self.io.session_id, exc)
            self.io.record("conn", self._conn_record(conn, "refused", _reason(exc)))
            self._end(1)

    def _new_basic(self) -> _Connection:
        self._next_basic_id += 1
        conn = _Connection(self, self._next_basic_id)
        self.conns[conn.stream_id] = conn
        self.basic = conn
        return conn

    def _on_flag(self, flag: int) -> None:
        if flag == Flag.TERMINATE_SESSION:
            log.info("session %s: the client ended the session", self.io.session_id)
            self._end(0)
        elif flag == Flag.DISCONNECT_TO_PORT and self.mode is not PortMode.MUX:
            conn = self.basic
            if conn is not None:
                conn.ended = True  # the next data from the client dials again
                conn.close()

    # --- dialing -------------------------------------------------------------------------

    async def _addresses(self) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            if is_forbidden(address, self.denied):
                raise ForbiddenAddress(f"Forwarding to IP address {self.host} is forbidden.")
        return addresses

    async def _check_host(self) -> None:
        try:
            await self._addresses()
        except ForbiddenAddress as exc:
            raise PluginError(str(exc)) from None
        except OSError as exc:
            # AWS's agent also starts and fails each dial; so do we (mux) or fail below.
            log.warning("session %s: cannot resolve %s: %s", self.io.session_id, self.host, exc)

    async def _dial(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        if not self.host:
            targets = ["localhost"]
        else:
            targets = await self._addresses()
        first: BaseException | None = None
        for target in targets:
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: conn, target, self.port), DIAL_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                first = first or exc
                continue
            if self.closed:
                if conn.transport is not None:
                    conn.transport.abort()
                return
            conn.opened = True
            self.io.record("conn", self._conn_record(conn, "open", None))
            if conn.closing and conn.transport is not None:
                conn.transport.close()  # the client let go while we were dialing
            return
        if first is None:
            raise OSError("missing address")
        raise first

    # --- destination → client --------------------------------------------------------

    def from_destination(self, conn: _Connection, data: memoryview) -> None:
        """Destination bytes (a view of the read buffer, valid during this call only)."""
        if self.smux is not None:
            self._send(PayloadType.OUTPUT, self.smux.send(conn.stream_id, data))
        else:
            self._send(PayloadType.OUTPUT, bytes(data))

    def destination_closed(self, conn: _Connection) -> None:
        if self.closed:
            return
        self.conns.pop(conn.stream_id, None)
        self._blocked.discard(conn.stream_id)
        self._record_end(conn)
        if self.smux is not None:
            self._send(PayloadType.OUTPUT, self.smux.close(conn.stream_id))
        elif self.mode is PortMode.STREAM and conn is self.basic:
            self._end(0 if conn.error is None else 1)  # sshd closed: the session is over
        else:
            conn.ended = True  # basic: the next data from the client dials again
        self._schedule_resume()

    def _record_end(self, conn: _Connection) -> None:
        if conn.opened and not conn.recorded:
            conn.recorded = True
            self.io.record("conn", self._conn_record(conn, "close", conn.error))

    def _conn_record(self, conn: _Connection, event: str, error: str | None) -> dict[str, Any]:
        return {
            "event": event,
            "stream": conn.stream_id if self.smux is not None else 0,
            "host": conn.address[0] if conn.address else self.host or "localhost",
            "port": self.port,
            "bytes_in": conn.bytes_in,
            "bytes_out": conn.bytes_out,
            "error": error,
        }

    # --- output and flow control ---------------------------------------------------------

    def _send(self, payload_type: int, data: bytes) -> None:
        if not data or self.closed:
            return
        self._outbox.add(payload_type, data)
        if not self._flush_scheduled:
            # Gather what the other connections read in this loop turn into the same frames.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed:
            return
        while self._outbox and self.io.writable:
            payload_type, data = self._outbox.take()
            self.io.output(data, payload_type)
        if self._outbox or not self.io.writable:
            self._set_reading(False)
        elif self.reading_paused:
            self._set_reading(True)
        if not self._outbox and self._exit_code is not None and not self._exit_reported:
            self._exit_reported = True
            self.io.exited(self._exit_code)

    def _set_reading(self, on: bool) -> None:
        if self.reading_paused == (not on):
            return
        self.reading_paused = not on
        for conn in self.conns.values():
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            with contextlib.suppress(RuntimeError):
                if on:
                    transport.resume_reading()
                else:
                    transport.pause_reading()

    def update_blocked(self, conn: _Connection) -> None:
        """Keep :attr:`_blocked` (connections whose destination buffer is full) current."""
        if conn.blocked and conn.stream_id in self.conns:
            self._blocked.add(conn.stream_id)
        elif conn.stream_id in self._blocked:
            self._blocked.discard(conn.stream_id)
            self._schedule_resume()

    def _schedule_resume(self) -> None:
        if self._resume_scheduled or self._blocked or not self.started:
            return
        self._resume_scheduled = True
        asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_scheduled = False
        if self.accepting() and not self.closed:
            self.io.resume_input()

    def _end(self, code: int) -> None:
        """End the session once what we have for the client has left."""
        if self._exit_code is None:
            self._exit_code = code
        if not self._outbox and not self._flush_scheduled and not self._exit_reported:
            self._exit_reported = True
            self.io.exited(code)

    async def _keepalive(self) -> None:
        assert self.smux is not None
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            self._send(PayloadType.OUTPUT, self.smux.nop())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: port task failed", self.io.session_id, exc_info=task.exception())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    return str(exc) or type(exc).__name__
