"""A small RFC 6455 websocket client on asyncio streams, for the plugin's data channel.

The plugin is a new process for every session, so what it imports is on the path to the first
prompt byte; a general HTTP client costs more to import than a session takes to open. This
client does what the data channel needs and no more: the opening handshake (with the SigV4
headers the caller passes), masked text and binary frames, fragmented messages, ping/pong with
a heartbeat that drops a dead connection, and the closing handshake. ``ssl`` is imported only
for ``wss://``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import functools
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CertificateError",
    "HandshakeError",
    "Message",
    "MsgType",
    "WebSocket",
    "WebSocketError",
    "ca_bundle",
    "client_context",
    "connect",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_MAX_HEADER = 64 * 1024


class WebSocketError(Exception):
    """The connection broke the protocol or failed."""


class HandshakeError(WebSocketError):
    """The server did not switch protocols (``status`` and ``message`` of its answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class CertificateError(WebSocketError):
    """The server's TLS certificate did not verify (retrying cannot help)."""


class MsgType(enum.Enum):
    TEXT = "text"
    BINARY = "binary"
    CLOSE = "close"
    """The connection ended: by a close frame (``WebSocket.close_code`` says which), a
    network error or a missed heartbeat (close code None; ``extra`` says why)."""


@dataclass(frozen=True, slots=True)
class Message:
    type: MsgType
    data: bytes = b""
    """The payload (a text message's UTF-8 bytes: see :attr:`text`)."""
    extra: str = ""

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@functools.lru_cache(maxsize=16)
def _ones(words: int) -> int:
    """An int whose little-endian bytes are ``01 00 00 00`` repeated ``words`` times."""
    return int.from_bytes(b"\x01\x00\x00\x00" * words, "little")


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (RFC 6455 §5.3) in big-int steps: the
    repeated key is ``key × 0x…0001_00000001`` (cached per length), so no key stream is built."""
    n = len(data)
    if not n:
        return b""
    words, rest = divmod(n, 4)
    k = int.from_bytes(key, "little")
    value = int.from_bytes(data, "little") ^ (k * _ones(words))
    if rest:
        value ^= int.from_bytes(key[:rest], "little") << (32 * words)
    return value.to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final frame, masked with the 4-byte ``key`` (a client always masks)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + mask(payload, key)


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class WebSocket:
    """An open client connection. Reads go through :meth:`receive` (one reader at a time)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        heartbeat: float | None = None,
        max_size: int = 0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.max_size = max_size
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed = False
        self._close_sent = False
        self._pong = asyncio.Event()
        self._heartbeat_task: asyncio.Task[None] | None = None
        if heartbeat:
            self._heartbeat_task = asyncio.ensure_future(self._heartbeat(heartbeat))

    @property
    def closed(self) -> bool:
        return self._closed

    # -- sending -----------------------------------------------------------------------

    async def _send(self, opcode: int, payload: bytes) -> None:
        if self._closed or self._close_sent:
            raise ConnectionResetError("the websocket is closed")
        self._writer.write(encode_frame(opcode, payload, os.urandom(4)))
        await self._writer.drain()

    async def send_bytes(self, data: bytes) -> None:
        await self._send(_OP_BINARY, data)

    def write_bytes(self, data: bytes) -> None:
        """Queue a binary message without waiting for the transport to drain (for a caller
        that bounds what it queues, such as a reliable stream's window)."""
        if self._closed or self._close_sent:
            raise ConnectionResetError("the websocket is closed")
        self._writer.write(encode_frame(_OP_BINARY, data, os.urandom(4)))

    async def send_str(self, text: str) -> None:
        await self._send(_OP_TEXT, text.encode())

    async def ping(self, data: bytes = b"") -> None:
        await self._send(_OP_PING, data)

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        """Send a close frame (once) and drop the connection."""
        if not self._closed and not self._close_sent:
            with contextlib.suppress(Exception):
                self._writer.write(
                    encode_frame(_OP_CLOSE, struct.pack("!H", code) + message[:123], os.urandom(4))
                )
                await asyncio.wait_for(self._writer.drain(), 2.0)
            self._close_sent = True
        self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        if self._heartbeat_task is not None and self._heartbeat_task is not asyncio.current_task():
            self._heartbeat_task.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()

    async def _heartbeat(self, interval: float) -> None:
        """Ping every ``interval``; no pong within half of it drops the connection."""
        while not self._closed:
            await asyncio.sleep(interval)
            self._pong.clear()
            try:
                await self.ping()
                await asyncio.wait_for(self._pong.wait(), interval / 2)
            except (TimeoutError, ConnectionError, OSError):
                self.close_reason = "no answer to the heartbeat ping"
                self._closed = True
                with contextlib.suppress(Exception):
                    self._writer.transport.abort()
                return

    # -- receiving ---------------------------------------------------------------------

    async def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self._reader.readexactly(2)
        if b0 & 0x70:
            raise WebSocketError("reserved bits set (no extension was negotiated)")
        if b1 & 0x80:
            raise WebSocketError("a server frame was masked")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self._reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self._reader.readexactly(8))
        if self.max_size and n > self.max_size:
            raise WebSocketError(f"a frame of {n} bytes is larger than allowed")
        payload = await self._reader.readexactly(n) if n else b""
        return bool(b0 & 0x80), b0 & 0x0F, payload

    async def receive(self) -> Message:
        """The next text or binary message; CLOSE once the connection has ended."""
        parts: list[bytes] = []
        first_op = 0
        while True:
            if self._closed and not parts:
                return Message(MsgType.CLOSE, extra=self.close_reason)
            try:
                fin, op, payload = await self._frame()
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                self.close_reason = self.close_reason or f"connection lost: {exc!r}"
                self._shutdown()
                return Message(MsgType.CLOSE, extra=self.close_reason)
            except WebSocketError as exc:
                self.close_reason = str(exc)
                await self.close(1002)
                return Message(MsgType.CLOSE, extra=self.close_reason)
            if op == _OP_PING:
                with contextlib.suppress(ConnectionError, OSError):
                    await self._send(_OP_PONG, payload)
                continue
            if op == _OP_PONG:
                self._pong.set()
                continue
            if op == _OP_CLOSE:
                if len(payload) >= 2:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                    self.close_reason = payload[2:].decode("utf-8", "replace")
                else:
                    self.close_code = 1005
                await self.close(self.close_code if self.close_code != 1005 else 1000)
                return Message(MsgType.CLOSE, extra=self.close_reason)
            if op in (_OP_TEXT, _OP_BINARY) and not parts:
                first_op = op
            elif op != _OP_CONT or not parts:
                self.close_reason = f"unexpected opcode {op} here"
                await self.close(1002)
                return Message(MsgType.CLOSE, extra=self.close_reason)
            parts.append(payload)
            if not fin:
                continue
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            return Message(MsgType.TEXT if first_op == _OP_TEXT else MsgType.BINARY, data)

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> Message:
        msg = await self.receive()
        if msg.type is MsgType.CLOSE:
            raise StopAsyncIteration
        return msg


def ca_bundle() -> str | None:
    """The CA bundle a ``wss://`` StreamUrl's certificate is checked against: the AWS CLI's
    ``AWS_CA_BUNDLE``, else ``SSL_CERT_FILE`` (what AWS's Go plugin reads); None: the system
    store. (AWS's own plugin ignores ``AWS_CA_BUNDLE`` for its websocket; this one honours it,
    so that the one variable serves the CLI and the plugin. docs/tls.md.)"""
    return os.environ.get("AWS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None


def _ssl_module() -> Any:
    import ssl  # only for wss://: ssl costs the plugin's start otherwise

    return ssl


@functools.lru_cache(maxsize=4)
def _context(cafile: str | None) -> Any:
    return _ssl_module().create_default_context(cafile=cafile)


def client_context() -> Any:
    """A verifying TLS context with :func:`ca_bundle`'s trust (made on first use)."""
    return _context(ca_bundle())


async def connect(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    heartbeat: float | None = None,
    max_size: int = 0,
    ssl_context: Any = None,
) -> WebSocket:
    """Open ``ws://`` or ``wss://`` ``url``; ``headers`` are sent as given (a ``Host`` among
    them replaces the default). Raises :class:`HandshakeError` when the server refuses."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise WebSocketError(f"not a websocket URL: {url}")
    port = parts.port or (443 if secure else 80)
    ssl: Any = None
    if secure:
        ssl = ssl_context if ssl_context is not None else client_context()
    try:
        reader, writer = await asyncio.open_connection(
            parts.hostname, port, ssl=ssl, limit=max(2**20, max_size or 0)
        )
    except OSError as exc:
        if secure and isinstance(exc, _ssl_module().SSLCertVerificationError):
            raise CertificateError(
                f"the certificate of {parts.hostname} did not verify: "
                f"{getattr(exc, 'verify_message', exc)} (trust its CA with AWS_CA_BUNDLE or "
                "SSL_CERT_FILE)"
            ) from exc
        raise
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None and parts.port != (443 if secure else 80):
            host = f"{host}:{parts.port}"
        fields = {
            "Host": host,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        for name, value in (headers or {}).items():
            for existing in [k for k in fields if k.lower() == name.lower()]:
                del fields[existing]
            fields[name] = value
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise WebSocketError("the server closed the connection before answering") from exc
        except asyncio.LimitOverrunError as exc:
            raise WebSocketError("the handshake answer is too large") from exc
        if len(head) > _MAX_HEADER:
            raise WebSocketError("the handshake answer is too large")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        pieces = status_line.split(" ", 2)
        status = int(pieces[1]) if len(pieces) > 1 and pieces[1].isdigit() else 0
        answer: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                answer[name.strip().lower()] = value.strip()
        if status != 101:
            raise HandshakeError(status, pieces[2] if len(pieces) > 2 else "")
        if answer.get("upgrade", "").lower() != "websocket" or answer.get(
            "sec-websocket-accept"
        ) != accept_key(key):
            raise HandshakeError(status, "the server's upgrade answer is not valid")
    except BaseException:
        writer.close()
        raise
    return WebSocket(reader, writer, heartbeat=heartbeat, max_size=max_size)
