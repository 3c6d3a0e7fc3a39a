"""Port sessions on the client (docs/reference/data-channel.md#port-sessions): local listeners or
stdin/stdout, like AWS's plugin.

The mode follows the handshake's properties and the agent's version:

* **mux** (``type: LocalPortForwarding``, agent newer than 3.0.196.0): listen on
  ``localhost:localPortNumber`` (``0`` or empty: a free port) or on ``localUnixSocket`` when
  ``localConnectionType`` is ``unix``; every accepted connection is one smux v1 stream.
* **basic** (``LocalPortForwarding`` with an older agent): the same listener, one connection at
  a time, raw bytes; when it closes we send Flag DisconnectToPort and serve the next one.
* **stream** (no ``type``: ``AWS-StartSSHSession`` as an ssh ``ProxyCommand``): stdin and
  stdout are the connection; the end of stdin ends the session.

Ctrl-C (and Ctrl-Z, Ctrl-\\) in mux and basic mode send Flag TerminateSession and end the
session. Flow control: local sockets are read only while less than :data:`HIGH_WATER` bytes
wait for the send window; output for a local client that reads slowly is buffered up to
:data:`HIGH_WATER` bytes, then the agent's frames wait unacknowledged until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from collections import deque
from typing import Any

from hatchway.client.handler import SessionContext, SessionHandler
from hatchway.client.terminal import StdinReader
from hatchway.protocol import (
    Flag,
    PayloadError,
    PayloadType,
    build_flag,
    compare_versions,
    parse_flag,
)
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
)

__all__ = [
    "CONNECT_ERROR_MESSAGE",
    "HIGH_WATER",
    "LOW_WATER",
    "PortHandler",
    "PortMode",
]

log = logging.getLogger("hatchway.client")

MUX_AFTER_AGENT = "3.0.196.0"
"""Agents newer than this speak smux (AWS plugin: TCPMultiplexingSupportedAfter…)."""
KEEPALIVE_OFF_AFTER_AGENT = "3.1.1511.0"
"""Agents up to this version may run smux keepalive and drop a session silent for 30 s."""
TERMINATE_FLAG_AFTER_AGENT = "2.3.722.0"
CONNECT_ERROR_MESSAGE = "\nConnection to destination port failed, check SSM Agent logs.\n"
TERMINATE_SIGNALS = (signal.SIGINT, signal.SIGTSTP, signal.SIGQUIT)


def _newer(version: str | None, than: str) -> bool:
    return version is not None and compare_versions(version, than) == 1


class _Local(asyncio.BufferedProtocol):
    """One accepted local connection; reads land in the handler's one read buffer."""

    def __init__(self, handler: PortHandler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.stream_id = 0
        self.write_paused = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.handler.accepted(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.handler.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.handler.from_local(self, self.handler.read_buffer[:nbytes])

    def eof_received(self) -> bool:
        return False  # smux v1 has no half-close: the connection ends

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.handler.local_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.handler.maybe_resume()

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def set_reading(self, on: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(RuntimeError):
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()


class PortHandler(SessionHandler):
    """``Port`` sessions: mux, basic or stream forwarding."""

    def __init__(self, ctx: SessionContext, session_type: str, properties: Any = None) -> None:
        super().__init__(ctx, session_type, properties)
        props = properties if isinstance(properties, dict) else {}
        self.port_number = str(props.get("portNumber") or "")
        self.local_port = str(props.get("localPortNumber") or "").strip() or "0"
        self.unix_socket = str(props.get("localUnixSocket") or "")
        self.unix = str(props.get("localConnectionType") or "") == "unix"
        agent = ctx.handshake.agent_version
        if str(props.get("type") or "") == LOCAL_PORT_FORWARDING:
            self.mode = PortMode.MUX if _newer(agent, MUX_AFTER_AGENT) else PortMode.BASIC
        else:
            self.mode = PortMode.STREAM
        self.agent_version = agent
        self.smux = SmuxSession(SmuxRole.CLIENT) if self.mode is PortMode.MUX else None
        self.conns: dict[int, _Local] = {}
        self.active: _Local | None = None  # basic mode: the connection being forwarded
        self.waiting: deque[_Local] = deque()  # basic mode: accepted, not yet served
        self.server: asyncio.AbstractServer | None = None
        self.bound_port: int | None = None
        self.connections = 0
        self._outbox = Outbox(FRAME_BYTES)
        self.read_buffer = memoryview(bytearray(READ_BYTES))
        self._wakeup = asyncio.Event()
        self._reading = True
        self._tasks: list[asyncio.Task[Any]] = []
        self._signals: list[int] = []
        self._socket_made: str | None = None
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._sender(), "port-sender")
        if self.mode is PortMode.STREAM:
            self._spawn(self._pump_stdin(), "port-stdin")
            return
        for signum in TERMINATE_SIGNALS:
            try:
                self.ctx.add_signal_handler(signum, self._on_terminate_signal)
            except (ValueError, RuntimeError, NotImplementedError):
                continue
            self._signals.append(signum)
        try:
            await self._listen()
        except (OSError, ValueError, OverflowError) as exc:  # in use, no permission, bad port
            where = self.unix_socket if self.unix else f"localhost:{self.local_port}"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.ctx.io.say(f"\nCannot listen on {where}: {reason}\n")
            self.ctx.end_locally(1)
            return
        if self.mode is PortMode.MUX and not _newer(self.agent_version, KEEPALIVE_OFF_AFTER_AGENT):
            self._spawn(self._keepalive(), "port-keepalive")

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        if self.unix:
            path = self.unix_socket
            self.server = await loop.create_unix_server(lambda: _Local(self), path)
            self._socket_made = path
            shown = f"Unix socket {path} opened for sessionId {self.ctx.session_id}."
        else:
            sock = _bind_localhost(int(self.local_port))
            self.server = await loop.create_server(lambda: _Local(self), sock=sock)
            self.bound_port = int(sock.getsockname()[1])
            shown = f"Port {self.bound_port} opened for sessionId {self.ctx.session_id}."
        if self.mode is PortMode.MUX:
            self.ctx.io.say(f"{shown}\nWaiting for connections...\n")
        else:
            self.ctx.io.say(f"{shown}\n")

    async def stop(self) -> None:
        self._stopping = True
        for signum in self._signals:
            self.ctx.remove_signal_handler(signum)
        self._signals.clear()
        if self.server is not None:
            self.server.close()
        for conn in [*self.conns.values(), *self.waiting, *([self.active] if self.active else [])]:
            if conn.transport is not None:
                conn.transport.abort()
        self.conns.clear()
        self.waiting.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._socket_made is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self._socket_made).st_mode):
                    os.unlink(self._socket_made)

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _on_terminate_signal(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.ctx.io.say("Terminate signal received, exiting.\n")
        self._spawn(self._terminate(), "port-terminate")

    async def _terminate(self) -> None:
        if self.mode is PortMode.MUX or _newer(self.agent_version, TERMINATE_FLAG_AFTER_AGENT):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.ctx.send(PayloadType.FLAG, build_flag(Flag.TERMINATE_SESSION)), 2.0
                )
        self.ctx.end_locally(0)

    # --- local side → agent --------------------------------------------------------------

    def accepted(self, conn: _Local) -> None:
        self.connections += 1
        if self.connections == 1:
            if self.mode is PortMode.MUX:
                self.ctx.io.say(f"\nConnection accepted for session [{self.ctx.session_id}]\n")
            else:
                self.ctx.io.say(f"Connection accepted for session {self.ctx.session_id}.\n")
        if self.smux is not None:
            conn.stream_id, syn = self.smux.open_stream()
            self.conns[conn.stream_id] = conn
            self._queue(PayloadType.OUTPUT, syn)
            if not self._reading:
                conn.set_reading(False)
        elif self.active is None:
            self.active = conn
            self.maybe_resume()  # output waiting for a local client can go now
        else:
            conn.set_reading(False)
            self.waiting.append(conn)

    def from_local(self, conn: _Local, data: memoryview) -> None:
        """Local bytes (a view of the read buffer, valid during this call only)."""
        if self.smux is not None:
            self._queue(PayloadType.OUTPUT, self.smux.send(conn.stream_id, data))
        elif conn is self.active:
            self._queue(PayloadType.OUTPUT, bytes(data))

    def local_closed(self, conn: _Local) -> None:
        if self._stopping:
            return
        if self.smux is not None:
            if self.conns.pop(conn.stream_id, None) is not None:
                self._queue(PayloadType.OUTPUT, self.smux.close(conn.stream_id))
            self.maybe_resume()
            return
        if conn is not self.active:
            with contextlib.suppress(ValueError):
                self.waiting.remove(conn)
            return
        # Basic: the agent closes its connection too and dials again on the next data.
        self._queue(PayloadType.FLAG, build_flag(Flag.DISCONNECT_TO_PORT))
        self.active = None
        while self.waiting:
            nxt = self.waiting.popleft()
            if not nxt.closed:
                self.active = nxt
                nxt.set_reading(self._reading)
                self.maybe_resume()
                break

    async def _pump_stdin(self) -> None:
        reader = StdinReader(self.ctx.io.stdin_fd, FRAME_BYTES)
        while True:
            while self._outbox.size > HIGH_WATER:
                self._wakeup.clear()
                await self._wakeup.wait()
            data = await reader.read_or_end()
            if not data:
                while self._outbox:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                self.ctx.input_ended()
                return
            self._queue(PayloadType.OUTPUT, data)

    def _queue(self, payload_type: int, data: bytes) -> None:
        if not data:
            return
        self._outbox.add(payload_type, data)
        self._wakeup.set()
        if self._outbox.size > HIGH_WATER and self._reading:
            self._set_reading(False)

    async def _sender(self) -> None:
        while True:
            while not self._outbox:
                self._wakeup.clear()
                await self._wakeup.wait()
            payload_type, data = self._outbox.take()
            if payload_type == PayloadType.OUTPUT:
                await self.ctx.send_data(data)
            else:
                await self.ctx.send(payload_type, data)
            if not self._reading and self._outbox.size < LOW_WATER:
                self._set_reading(True)
            self._wakeup.set()  # for _pump_stdin waiting on a full outbox

    def _set_reading(self, on: bool) -> None:
        self._reading = on
        if self.smux is not None:
            for conn in self.conns.values():
                conn.set_reading(on)
        elif self.active is not None:
            self.active.set_reading(on)

    async def _keepalive(self) -> None:
        assert self.smux is not None
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            self._queue(PayloadType.OUTPUT, self.smux.nop())

    # --- agent → local side --------------------------------------------------------------

    async def on_payload(self, payload_type: int, payload: bytes) -> None:
        if payload_type == PayloadType.OUTPUT:
            if self.smux is not None:
                self._mux_output(payload)
            elif self.mode is PortMode.STREAM:
                self.ctx.io.write(payload)
            elif self.active is not None:
                self.active.write(payload)
            else:
                log.warning("dropping %d bytes: no local connection", len(payload))
        elif payload_type == PayloadType.FLAG:
            try:
                flag = parse_flag(payload)
            except PayloadError as exc:
                log.warning("bad flag from the agent: %s", exc)
                return
            if flag == Flag.CONNECT_TO_PORT_ERROR:
                self.ctx.io.say(CONNECT_ERROR_MESSAGE)
        else:
            log.debug("ignoring payload type %s", payload_type)

    def _mux_output(self, payload: bytes) -> None:
        assert self.smux is not None
        try:
            events = self.smux.receive(payload)
        except SmuxError as exc:
            log.error("broken smux stream from the agent: %s", exc)
            self.ctx.io.say(f"\nPort forwarding failed: {exc}\n")
            self.ctx.end_locally(1)
            return
        for event in events:
            if isinstance(event, StreamData):
                conn = self.conns.get(event.stream_id)
                if conn is not None:
                    conn.write(event.data)
            elif isinstance(event, StreamClosed):
                conn = self.conns.get(event.stream_id)
                if conn is not None and conn.transport is not None:
                    conn.transport.close()  # flushes first; connection_lost sends our FIN
                else:
                    self._queue(PayloadType.OUTPUT, self.smux.close(event.stream_id))
            elif isinstance(event, Reply):
                self._queue(PayloadType.OUTPUT, event.data)

    def accepting(self) -> bool:
        if self._stopping or self.mode is PortMode.STREAM:
            return True
        if self.mode is PortMode.BASIC:
            # Like AWS's plugin: output waits for a local client to connect.
            return self.active is not None and not self.active.write_paused
        return not any(conn.write_paused for conn in self.conns.values())

    def maybe_resume(self) -> None:
        if self.accepting():
            self.ctx.resume_input()


def _bind_localhost(port: int) -> socket.socket:
    """A listening socket on localhost (IPv4 if it resolves to it, as Go's net.Listen picks)."""
    infos = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    last: OSError | None = None
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError("localhost does not resolve")
