"""The plugin's own websocket client against aiohttp's server and a raw asyncio server."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import WSMsgType, web
from hypothesis import given
from hypothesis import strategies as st

from hatchway.client.websocket import (
    HandshakeError,
    MsgType,
    WebSocketError,
    accept_key,
    connect,
    encode_frame,
    mask,
)


def sync(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> None:
        asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def naive_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_mask_matches_the_rfc(data: bytes, key: bytes) -> None:
    assert mask(data, key) == naive_mask(data, key)
    assert mask(mask(data, key), key) == data


def test_accept_key_rfc_example() -> None:
    # RFC 6455 section 1.3
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 300_000])
def test_frame_lengths(size: int) -> None:
    payload = os.urandom(size)
    frame = encode_frame(2, payload, b"abcd")
    assert frame[0] == 0x82
    n = frame[1] & 0x7F
    offset = 2 + {126: 2, 127: 8}.get(n, 0)
    length = n if n < 126 else int.from_bytes(frame[2:offset], "big")
    assert length == size
    assert frame[offset : offset + 4] == b"abcd"
    assert naive_mask(frame[offset + 4 :], b"abcd") == payload


async def echo_app() -> web.Application:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        if request.headers.get("X-Refuse"):
            raise web.HTTPForbidden(text="no")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(request.headers.get("Authorization", "-"))
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
            elif msg.type == WSMsgType.TEXT:
                if msg.data == "close":
                    await ws.close(code=4403, message=b"go away")
                else:
                    await ws.send_str(msg.data.upper())
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@sync
async def test_round_trips_with_aiohttp() -> None:
    runner, port = await serve(await echo_app())
    try:
        ws = await connect(f"ws://127.0.0.1:{port}/ws?x=1", {"Authorization": "sig"})
        first = await ws.receive()
        assert (first.type, first.text) == (MsgType.TEXT, "sig")
        await ws.send_str("hello")
        assert (await ws.receive()).text == "HELLO"
        for size in (1, 200, 70_000, 1_000_000):
            data = os.urandom(size)
            await ws.send_bytes(data)
            msg = await ws.receive()
            assert msg.type is MsgType.BINARY and msg.data == data[::-1]
        await ws.send_str("close")
        msg = await ws.receive()
        assert msg.type is MsgType.CLOSE and msg.extra == "go away"
        assert ws.close_code == 4403 and ws.closed
        assert (await ws.receive()).type is MsgType.CLOSE
    finally:
        await runner.cleanup()


@sync
async def test_refused_upgrade_raises_with_status() -> None:
    runner, port = await serve(await echo_app())
    try:
        with pytest.raises(HandshakeError) as err:
            await connect(f"ws://127.0.0.1:{port}/ws", {"X-Refuse": "1"})
        assert err.value.status == 403
        with pytest.raises(HandshakeError) as err:
            await connect(f"ws://127.0.0.1:{port}/nowhere")
        assert err.value.status == 404
    finally:
        await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(behaviour: Handler) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await behaviour(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    return b0 & 0x0F, naive_mask(await reader.readexactly(n), key)


@sync
async def test_fragments_pings_and_interleaved_control_frames() -> None:
    pongs: list[bytes] = []

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bytes([0x02, 3]) + b"abc")  # binary, not final
        writer.write(bytes([0x89, 2]) + b"hi")  # ping in the middle
        writer.write(bytes([0x00, 2]) + b"de")  # continuation
        writer.write(bytes([0x80, 1]) + b"f")  # final continuation
        writer.write(bytes([0x81, 2]) + b"ok")  # a text message
        await writer.drain()
        op, data = await read_client_frame(reader)
        if op == 10:
            pongs.append(data)
        writer.write(bytes([0x88, 2]) + struct.pack("!H", 1000))
        await writer.drain()
        await reader.read()

    async for port in raw_server(behaviour):
        ws = await connect(f"ws://127.0.0.1:{port}/")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (MsgType.BINARY, b"abcdef")
        msg = await ws.receive()
        assert (msg.type, msg.text) == (MsgType.TEXT, "ok")
        assert (await ws.receive()).type is MsgType.CLOSE
        assert ws.close_code == 1000
        assert pongs == [b"hi"]


@pytest.mark.parametrize(
    "bad",
    [
        bytes([0x82, 0x81]) + b"abcdx",  # a masked server frame
        bytes([0xC2, 1]) + b"x",  # RSV1 without an extension
        bytes([0x80, 1]) + b"x",  # a continuation with nothing to continue
        bytes([0x83, 1]) + b"x",  # a reserved opcode
    ],
)
@sync
async def test_protocol_violations_close_the_connection(bad: bytes) -> None:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bad)
        await writer.drain()
        await reader.read()

    async for port in raw_server(behaviour):
        ws = await connect(f"ws://127.0.0.1:{port}/")
        msg = await ws.receive()
        assert msg.type is MsgType.CLOSE and msg.extra
        assert ws.closed


@sync
async def test_heartbeat_drops_a_silent_peer() -> None:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads pings, never answers

    async for port in raw_server(behaviour):
        ws = await connect(f"ws://127.0.0.1:{port}/", heartbeat=0.2)
        msg = await asyncio.wait_for(ws.receive(), 30)
        assert msg.type is MsgType.CLOSE
        assert "heartbeat" in msg.extra
        assert ws.close_code is None


@sync
async def test_server_that_is_not_a_websocket() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(HandshakeError, match="not valid"):
            await connect(f"ws://127.0.0.1:{port}/")
    finally:
        server.close()


@sync
async def test_a_server_that_closes_or_floods_before_answering() -> None:
    """Both are network errors the session retries, not crashes (WebSocketError)."""

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nX: " + b"y" * (3 << 20))
        await writer.drain()

    for behaviour in (close_at_once, flood):
        server = await asyncio.start_server(behaviour, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(WebSocketError) as err:
                await connect(f"ws://127.0.0.1:{port}/")
            assert not isinstance(err.value, HandshakeError)
        finally:
            server.close()
