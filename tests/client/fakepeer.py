"""A fake broker + agent for client tests: SSM JSON 1.1 and a data channel in one aiohttp app.

The data channel plays the agent's end of the reliable stream with ``hatchway.protocol``
(``Stream(Role.AGENT)``): it acks input, echoes keystrokes, retransmits its output, and keeps
its stream across reconnects so a resumed client splices into the same sequence numbers.
Keystroke commands (each ends with ``\\r``):

* ``exit`` — send ``channel_closed`` (normal end);
* ``bye <text>`` — ``channel_closed`` with Output ``<text>``;
* ``drop`` — close the websocket *before* acking that frame, and produce output while the
  client is away (the client must ResumeSession, re-send the frame and get the output once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from hatchway.protocol import (
    Acked,
    Deliver,
    MessageType,
    PayloadType,
    Role,
    SendBytes,
    Stream,
    build_channel_closed,
    build_handshake_complete,
    build_handshake_request,
    decode,
    encode,
    parse_open_data_channel,
    session_type_action,
)
from hatchway.protocol.frames import Frame
from hatchway.protocol.payloads import HandshakeRequest


@dataclass
class FakeSession:
    session_id: str
    target: str
    tokens: set[str] = field(default_factory=set)
    stream: Stream = field(default_factory=lambda: Stream(Role.AGENT))
    ws: web.WebSocketResponse | None = None
    input: bytearray = field(default_factory=bytearray)
    payloads: list[tuple[int, int, bytes]] = field(default_factory=list)
    """(sequence number, payload type, payload) of every delivered client message."""
    open_frames: list[dict[str, Any]] = field(default_factory=list)
    upgrade_headers: list[dict[str, str]] = field(default_factory=list)
    connections: int = 0
    terminated: bool = False
    resumed: int = 0
    closed: bool = False
    dropped: int = 0
    handshake: str | None = None
    """Session type to handshake with (None: no handshake, output at once)."""
    handshake_done: bool = False
    handshake_response: bytes | None = None

    @property
    def sizes(self) -> list[bytes]:
        return [p for _, t, p in self.payloads if t == PayloadType.SIZE]


class FakePeer:
    def __init__(self) -> None:
        self.sessions: dict[str, FakeSession] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.url = ""
        self.handshake: str | None = None
        self.resume_token = True
        self.reject_upgrade = False
        self.first_output = b"$ "
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- SSM API ---------------------------------------------------------------------------

    def new_session(self, target: str = "mi-0123456789abcdef0") -> dict[str, str]:
        sid = f"tester-{uuid.uuid4().hex[:17]}"
        token = uuid.uuid4().hex
        s = FakeSession(sid, target, handshake=self.handshake)
        s.tokens.add(token)
        self.sessions[sid] = s
        return {"SessionId": sid, "TokenValue": token, "StreamUrl": self.stream_url(sid)}

    def stream_url(self, sid: str) -> str:
        return f"{self.url.replace('http', 'ws', 1)}/v1/data-channel/{sid}?role=publish_subscribe"

    async def api(self, request: web.Request) -> web.Response:
        op = request.headers.get("X-Amz-Target", "").split(".")[-1]
        body = await request.json()
        self.calls.append((op, body))
        if op == "StartSession":
            return web.json_response(self.new_session(body["Target"]))
        s = self.sessions.get(body.get("SessionId", ""))
        if s is None:
            return web.json_response(
                {"__type": "DoesNotExistException", "message": "no such session"}, status=400
            )
        if op == "ResumeSession":
            s.resumed += 1
            if not self.resume_token or s.terminated:
                return web.json_response({"SessionId": s.session_id})
            token = uuid.uuid4().hex
            s.tokens.add(token)
            return web.json_response(
                {
                    "SessionId": s.session_id,
                    "TokenValue": token,
                    "StreamUrl": self.stream_url(s.session_id),
                }
            )
        if op == "TerminateSession":
            s.terminated = True
            await self.close_channel(s)
            return web.json_response({"SessionId": s.session_id})
        return web.json_response({"__type": "InvalidAction", "message": op}, status=400)

    # --- data channel ----------------------------------------------------------------------

    async def data_channel(self, request: web.Request) -> web.StreamResponse:
        s = self.sessions.get(request.match_info["sid"])
        if s is None or self.reject_upgrade:
            return web.json_response({"message": "denied"}, status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        s.upgrade_headers.append(dict(request.headers))
        first = await ws.receive()
        if first.type != WSMsgType.TEXT:
            await ws.close()
            return ws
        s.open_frames.append(json.loads(first.data))
        token = parse_open_data_channel(first.data).token
        if token not in s.tokens:
            await ws.close(code=4001, message=b"bad token")
            return ws
        s.tokens.discard(token)  # single use
        s.ws = ws
        s.connections += 1
        if s.connections == 1:
            if s.handshake:
                req = HandshakeRequest("3.3.0.0", (session_type_action(s.handshake),))
                await self.send(s, PayloadType.HANDSHAKE_REQUEST, build_handshake_request(req))
            else:
                await self.send(s, PayloadType.OUTPUT, self.first_output)
        else:
            for frame in s.stream.resend_all(time.time()):
                await ws.send_bytes(frame)
        resend = asyncio.create_task(self._resend(s, ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await self._on_frame(s, ws, msg.data)
        finally:
            resend.cancel()
            if s.ws is ws:
                s.ws = None
        return ws

    async def _resend(self, s: FakeSession, ws: web.WebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(0.1)
            for frame in s.stream.due(time.time()):
                with contextlib.suppress(Exception):
                    await ws.send_bytes(frame)

    async def send(self, s: FakeSession, payload_type: int, payload: bytes) -> None:
        frame = s.stream.send(payload_type, payload, time.time())
        if s.ws is not None and not s.ws.closed:
            await s.ws.send_bytes(frame)

    async def close_channel(self, s: FakeSession, output: str = "") -> None:
        s.closed = True
        if s.ws is None or s.ws.closed:
            return
        payload = build_channel_closed(
            s.session_id, output, message_id=str(uuid.uuid4()), created_date="now"
        )
        frame = Frame(
            message_type=MessageType.CHANNEL_CLOSED,
            sequence_number=0,
            payload_type=0,
            payload=payload,
            message_id=uuid.uuid4(),
            created_date=int(time.time() * 1000),
            flags=3,
        )
        await s.ws.send_bytes(encode(frame))
        await s.ws.close()

    async def _on_frame(self, s: FakeSession, ws: web.WebSocketResponse, data: bytes) -> None:
        frame = decode(data)
        if (
            frame.message_type == MessageType.INPUT_STREAM_DATA
            and frame.sequence_number == s.stream.expected_sequence_number
            and frame.payload.endswith(b"drop\r")
            and s.dropped == 0
        ):
            # Lose this frame and the connection; produce output while the client is away.
            s.dropped += 1
            s.ws = None
            await ws.close()
            await self.send(s, PayloadType.OUTPUT, b"[while away]")
            return
        for event in s.stream.receive(data, time.time()):
            if isinstance(event, SendBytes):
                await ws.send_bytes(event.data)
            elif isinstance(event, Deliver):
                await self._deliver(s, event)
            elif isinstance(event, Acked):
                pass

    async def _deliver(self, s: FakeSession, event: Deliver) -> None:
        s.payloads.append((event.sequence_number, event.payload_type, event.payload))
        if event.payload_type == PayloadType.HANDSHAKE_RESPONSE:
            s.handshake_response = event.payload
            s.handshake_done = True
            await self.send(
                s, PayloadType.HANDSHAKE_COMPLETE, build_handshake_complete(1000, "Hello from fake")
            )
            await self.send(s, PayloadType.OUTPUT, self.first_output)
            return
        if event.payload_type != PayloadType.OUTPUT:
            return
        s.input += event.payload
        await self.send(s, PayloadType.OUTPUT, event.payload)  # echo
        text = bytes(s.input)
        if text.endswith(b"exit\r"):
            await self.close_channel(s)
        elif b"bye " in text and text.endswith(b"\r"):
            reason = text.rsplit(b"bye ", 1)[1][:-1].decode()
            await self.close_channel(s, reason)

    # --- running ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.api)
        app.router.add_get("/v1/data-channel/{sid}", self.data_channel)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start_in_thread(self) -> str:
        """Run on a private loop in a thread (for tests that run the client as a process)."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
