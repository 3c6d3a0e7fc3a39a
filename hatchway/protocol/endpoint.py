"""The websocket-facing half of a data-channel peer, shared by the agent and the client.

:class:`~hatchway.protocol.stream.Stream` is sans-I/O: it says which frames to send, which to
re-send and what to deliver. :class:`Endpoint` is the one loop that drives it over a websocket:
it holds the current socket (``None`` while reconnecting), writes frames to it, feeds received
frames into the stream, re-sends what is due every :data:`RESEND_INTERVAL` (while connected),
re-sends everything unacknowledged after a reconnect, and runs the role's deadline checks (the
agent's handshake timeout) on the same tick. It does no I/O of its own: the websocket (anything
with ``closed`` and ``send_bytes``), the clock, the sleep and the way frames go out are handed
in, so tests drive it with a fake socket and a fake clock, and each role specialises it with
hooks — the agent queues frames through its writer task, the client writes them directly.
What a session *does* (handshake, plugin or handler, reconnection policy) stays in the role's
session; this module is the channel layer under it (asyncssh's split between its connection
and its sessions is the model).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from hatchway.protocol.errors import GaveUp
from hatchway.protocol.stream import RESEND_INTERVAL, SendBytes, Stream

__all__ = ["Endpoint", "Link"]

log = logging.getLogger("hatchway.protocol.endpoint")


class Link(Protocol):
    """What the endpoint needs of a websocket: whether it closed, and sending a binary frame."""

    @property
    def closed(self) -> bool: ...

    async def send_bytes(self, data: bytes) -> None: ...


async def _ignore_gave_up(exc: GaveUp) -> None:
    log.warning("the peer stopped acknowledging: %s", exc)


class Endpoint:
    """One data channel's stream over whichever websocket is current.

    ``clock`` gives the ``now`` of every stream call (``time.time`` in the shells, a fake in
    tests); ``sleep`` waits between resend ticks; ``send`` is how a frame goes out (default:
    :meth:`write`, straight to the socket); ``on_gave_up`` runs when the stream gives up on an
    unacknowledged frame (the resend loop then ends); ``on_tick`` runs with the clock's time
    on every resend tick while connected (the role's deadlines).
    """

    def __init__(
        self,
        stream: Stream,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        interval: float = RESEND_INTERVAL,
        send: Callable[[bytes], Awaitable[None]] | None = None,
        on_gave_up: Callable[[GaveUp], Awaitable[None]] = _ignore_gave_up,
        on_tick: Callable[[float], None] | None = None,
        write_errors: tuple[type[BaseException], ...] = (ConnectionError, OSError, RuntimeError),
    ) -> None:
        self.stream = stream
        self.clock = clock
        self.sleep = sleep
        self.interval = interval
        self.send = send if send is not None else self.write
        self.on_gave_up = on_gave_up
        self.on_tick = on_tick
        self.write_errors = write_errors
        self.ws: Link | None = None
        """The current websocket; ``None`` while the channel is being reconnected."""
        self.connections = 0
        """Websockets attached so far (1 + reconnects)."""
        self.rx = asyncio.Lock()
        """Held while received frames (or pumped deliveries) are handled: they reach the role
        in order."""

    @property
    def connected(self) -> bool:
        ws = self.ws
        return ws is not None and not ws.closed

    # -- sockets ---------------------------------------------------------------------------

    async def attach(self, ws: Link) -> int:
        """Make ``ws`` the current socket. After the first, re-send everything unacknowledged
        (the sequence numbers continue: nothing lost, nothing repeated); how many were."""
        self.ws = ws
        self.connections += 1
        if self.connections == 1:
            return 0
        frames = self.stream.resend_all(self.clock())
        for data in frames:
            await self.send(data)
        return len(frames)

    def detach(self) -> None:
        """The socket dropped: frames are only buffered (in the stream) until :meth:`attach`."""
        self.ws = None

    async def write(self, data: bytes) -> None:
        """Send ``data`` on the current socket; dropped while disconnected or if the write
        fails (a stream frame is re-sent; the reconnect notices the socket is gone)."""
        ws = self.ws
        if ws is None or ws.closed:
            return
        try:
            await ws.send_bytes(data)
        except self.write_errors as exc:
            log.debug("write failed (will reconnect): %s", exc)

    # -- the stream ------------------------------------------------------------------------

    async def send_stream(self, payload_type: int, payload: bytes) -> None:
        """A new stream frame carrying ``payload`` (sent now, re-sent until acknowledged)."""
        await self.send(self.stream.send(payload_type, payload, self.clock()))

    async def receive(self, data: bytes) -> list[Any]:
        """Feed a received frame into the stream; acks (``SendBytes``) go out here, the other
        events are returned for the role. Raises ``FrameError`` (a ``ValueError``)."""
        return await self._sent(self.stream.receive(data, self.clock()))

    async def pump(self) -> list[Any]:
        """Deliveries the stream held back until the receiver was ready again."""
        return await self._sent(self.stream.pump(self.clock()))

    async def resend_all(self) -> None:
        """Re-send everything unacknowledged now (the peer says it reconnected)."""
        for data in self.stream.resend_all(self.clock()):
            await self.send(data)

    async def _sent(self, events: list[Any]) -> list[Any]:
        rest = []
        for event in events:
            if isinstance(event, SendBytes):
                await self.send(event.data)
            else:
                rest.append(event)
        return rest

    async def resend_due(self, now: float | None = None) -> None:
        """Re-send the frames whose retransmission timeout passed. Raises ``GaveUp``."""
        for data in self.stream.due(self.clock() if now is None else now):
            await self.send(data)

    # -- the reader ------------------------------------------------------------------------

    async def serve(
        self,
        frames: Callable[[Link], AsyncIterator[bytes]],
        handle: Callable[[list[Any]], Awaitable[bool]],
        reconnect: Callable[[Link], Awaitable[Link | None]],
    ) -> None:
        """Read the current socket's binary frames (``frames``) into the stream and hand the
        events to ``handle`` (True: the session is over) until it closes; then ``reconnect``
        (the role's: told the closed socket, it returns a new one or None to end) and go on
        on the new socket, everything unacknowledged re-sent. When it ends, ``ws`` is the last
        socket (closed unless ``handle`` ended the session)."""
        while True:
            ws = self.ws
            if ws is None:
                return
            async for data in frames(ws):
                async with self.rx:
                    try:
                        events = await self.receive(data)
                    except ValueError as exc:  # FrameError
                        log.warning("dropping an undecodable frame: %s", exc)
                        continue
                    if await handle(events):
                        return
            self.detach()
            new = await reconnect(ws)
            if new is None:
                self.ws = ws  # the last socket, closed: the role may still close() it
                return
            resent = await self.attach(new)
            log.info("data channel reconnected (%d unacked re-sent)", resent)

    # -- the timer -------------------------------------------------------------------------

    async def tick(self) -> bool:
        """One resend tick: re-send what is due and run ``on_tick``; nothing while
        disconnected (the reconnect re-sends it all). False once the stream gave up."""
        if not self.connected:
            return True
        now = self.clock()
        try:
            await self.resend_due(now)
        except GaveUp as exc:
            await self.on_gave_up(exc)
            return False
        if self.on_tick is not None:
            self.on_tick(now)
        return True

    async def resend_loop(self) -> None:
        """:meth:`tick` every ``interval`` until the stream gives up (or the task is
        cancelled)."""
        while True:
            await self.sleep(self.interval)
            if not await self.tick():
                return
