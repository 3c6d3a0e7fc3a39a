"""A minimal data-channel client built on hatchway.protocol, for broker/agent tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

from hatchway.protocol import (
    ChannelClosed,
    ClientHandshake,
    Deliver,
    PayloadType,
    Role,
    SendBytes,
    Stream,
    build_open_data_channel,
    build_size,
)


@dataclass
class Result:
    output: bytes = b""
    closed: ChannelClosed | None = None
    close_code: int | None = None
    frames: list[bytes] = field(default_factory=list)


class Client:
    """Opens a session's data channel and speaks the reliable stream."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.stream = Stream(Role.CLIENT)
        self.result = Result()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.handshake: ClientHandshake | None = None
        """Set to answer the agent's handshake (sessions that require one)."""
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(self.url)
        await self.ws.send_str(
            build_open_data_channel(
                self.token,
                request_id=str(uuid.uuid4()),
                client_id=str(uuid.uuid4()),
                client_version="1.2.764.0",
            )
        )

    async def send(self, data: bytes, payload_type: int = PayloadType.OUTPUT) -> bool:
        """Send input; False if the channel is already closing (the broker ended it)."""
        assert self.ws is not None
        try:
            await self.ws.send_bytes(self.stream.send(payload_type, data, time.time()))
        except (ConnectionError, aiohttp.ClientError):
            return False
        return True

    async def resize(self, cols: int, rows: int) -> None:
        await self.send(build_size(cols, rows), PayloadType.SIZE)

    async def read_until(self, needle: bytes | None, timeout: float = 15) -> Result:
        """Read (acking, retransmitting) until ``needle`` is in the output or the channel ends."""
        assert self.ws is not None
        ws = self.ws

        async def loop() -> None:
            while True:
                try:
                    msg = await ws.receive(timeout=0.1)
                except TimeoutError:
                    for data in self.stream.due(time.time()):
                        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                            await ws.send_bytes(data)
                    continue
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    self.result.close_code = ws.close_code
                    return
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                self.result.frames.append(msg.data)
                for ev in self.stream.receive(msg.data, time.time()):
                    if isinstance(ev, SendBytes):
                        # If the broker is closing the channel, the ack is moot.
                        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                            await ws.send_bytes(ev.data)
                    elif isinstance(ev, Deliver) and ev.payload_type == PayloadType.OUTPUT:
                        self.result.output += ev.payload
                    elif isinstance(ev, Deliver) and self.handshake is not None:
                        reply = self.handshake.handle(ev.payload_type, ev.payload)
                        if reply is not None:
                            await self.send(reply[1], reply[0])
                    elif isinstance(ev, ChannelClosed):
                        self.result.closed = ev
                        return
                if needle is not None and needle in self.result.output:
                    return

        await asyncio.wait_for(loop(), timeout)
        return self.result

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._http is not None:
            await self._http.close()
