"""A TCP proxy the test controls, to put network faults between a peer and the broker.

It runs its own asyncio loop in a thread, so that tests (sync or async) drive it with plain
calls::

    with TcpProxy("127.0.0.1", broker_port) as proxy:   # listens on proxy.port
        ...                     # point the agent / client at proxy.url(broker.url)
        proxy.cut()             # every open connection is reset, new ones flow
        proxy.hold()            # new connections wait (accepted, nothing forwarded)…
        proxy.release()         # …until now; they then flow as usual
        proxy.refuse()          # new connections are closed at once (a dead broker)
        proxy.accept()          # back to normal

``cut()`` closes both sides of every connection with a TCP reset (SO_LINGER 0), as a
dropped NAT entry or a restarted middlebox would: neither side gets a websocket close frame.
Counters (``accepted``, ``cuts``) let tests wait for a reconnection instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_port = listen_port
        self.port = 0
        self.accepted = 0
        self.cuts = 0
        self._mode = "accept"  # accept | hold | refuse
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._released: asyncio.Event | None = None

    # -- life -------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, url: str) -> str:
        """``url`` (the broker's) with the host and port replaced by this proxy's."""
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, f"127.0.0.1:{self.port}", parts.path, "", ""))

    # -- faults -----------------------------------------------------------------------------

    def cut(self) -> int:
        """Reset every open connection (both ends); returns how many were cut."""
        return self._call(self._cut())

    def hold(self) -> None:
        """New connections are accepted but nothing flows until :meth:`release`."""
        self._call(self._set_mode("hold"))

    def release(self) -> None:
        self._call(self._set_mode("accept"))

    def refuse(self) -> None:
        """New connections are reset as soon as they are accepted."""
        self._call(self._set_mode("refuse"))

    def accept(self) -> None:
        self._call(self._set_mode("accept"))

    def retarget(self, upstream_host: str, upstream_port: int) -> None:
        """Send new connections elsewhere (a broker restarted on another port)."""
        self.upstream = (upstream_host, upstream_port)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- inside the loop --------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start(self) -> None:
        self._released = asyncio.Event()
        self._released.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _set_mode(self, mode: str) -> None:
        assert self._released is not None
        self._mode = mode
        if mode == "hold":
            self._released.clear()
        else:
            self._released.set()

    async def _cut(self) -> int:
        conns = list(self._conns)
        self._conns.clear()
        for down, up in conns:
            _reset(down)
            if up is not None:
                _reset(up)
        self.cuts += 1
        return len(conns)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode == "refuse":
            _reset(writer)
            return
        entry: list[asyncio.StreamWriter | None] = [writer, None]
        key = (writer, None)
        self._conns.add(key)
        assert self._released is not None
        await self._released.wait()
        if key not in self._conns:  # cut while held
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._conns.discard(key)
            _reset(writer)
            return
        self._conns.discard(key)
        pair = (writer, up_writer)
        self._conns.add(pair)
        entry[1] = up_writer
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )
        self._conns.discard(pair)
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: the peer sees a dropped connection, not a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
