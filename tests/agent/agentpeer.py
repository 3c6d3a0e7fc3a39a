"""The other end of one agent session: a websocket server playing the broker's data channel and
the client (hatchway.protocol's client-side stream and handshake), so a real
:class:`~hatchway.agent.session.AgentSession` can be driven without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from hatchway.agent.registration import Registration
from hatchway.agent.session import AgentSession, SessionSettings
from hatchway.protocol import (
    CLIENT_VERSION,
    ClientHandshake,
    Deliver,
    MessageType,
    PayloadType,
    Role,
    SendBytes,
    Stream,
    decode,
    parse_agent_session_state,
    peek_type,
)

HANDSHAKE = (
    PayloadType.HANDSHAKE_REQUEST,
    PayloadType.HANDSHAKE_COMPLETE,
    PayloadType.ENC_CHALLENGE_REQUEST,
)


@dataclass
class Transcript:
    """What the agent sent: delivered payloads in order, and its session states."""

    payloads: list[tuple[int, bytes]] = field(default_factory=list)
    states: list[tuple[str, str | None]] = field(default_factory=list)
    handshake: ClientHandshake = field(
        default_factory=lambda: ClientHandshake(
            client_version=CLIENT_VERSION,
            session_types=("Standard_Stream", "InteractiveCommands", "NonInteractiveCommands"),
        )
    )

    def data(self, payload_type: int = PayloadType.OUTPUT) -> bytes:
        return b"".join(p for t, p in self.payloads if t == payload_type)

    @property
    def failure(self) -> str | None:
        return next((reason for state, reason in self.states if state == "Failed"), None)


class Peer:
    """Serves ``/v1/data-channel/<sid>`` on loopback for one session and records it."""

    def __init__(self) -> None:
        self.stream = Stream(Role.CLIENT)
        self.transcript = Transcript()
        self.ws: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Peer:
        app = web.Application()
        app.router.add_get("/v1/data-channel/{sid}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        port = server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _send(self, data: bytes) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(data)

    async def send(self, data: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
        """Client input (keystrokes, Size …) into the session."""
        await self._send(self.stream.send(payload_type, data, time.time()))

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for data in self.stream.due(time.time()):
                await self._send(data)

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        first = await ws.receive()
        assert first.type == WSMsgType.TEXT  # OpenDataChannelInput
        self.ws = ws
        self.connected.set()
        resender = asyncio.create_task(self._resend())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                if peek_type(msg.data) == MessageType.AGENT_SESSION_STATE:
                    st = parse_agent_session_state(decode(msg.data).payload)
                    self.transcript.states.append((st.session_state, st.reason))
                    if st.session_state == "Terminating":
                        break
                    continue
                for ev in self.stream.receive(msg.data, time.time()):
                    if isinstance(ev, SendBytes):
                        await self._send(ev.data)
                    elif isinstance(ev, Deliver):
                        if ev.payload_type in HANDSHAKE:
                            reply = self.transcript.handshake.handle(ev.payload_type, ev.payload)
                            if reply is not None:
                                await self.send(reply[1], reply[0])
                        else:
                            self.transcript.payloads.append((ev.payload_type, ev.payload))
        finally:
            resender.cancel()
            self.ended.set()
        return ws

    async def wait_for(self, needle: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
        deadline = time.monotonic() + 20
        while needle not in self.transcript.data(payload_type):
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never came: {self.transcript.payloads!r}")
            await asyncio.sleep(0.02)


def task(
    peer: Peer,
    document: dict[str, Any],
    parameters: dict[str, list[str]] | None = None,
    run_as_user: str | None = None,
) -> dict[str, Any]:
    """A ``start_session`` control message as the broker sends it."""
    sid = f"tester-{uuid.uuid4().hex[:17]}"
    return {
        "type": "start_session",
        "sessionId": sid,
        "token": "agent-token",
        "streamUrl": f"{peer.url}/v1/data-channel/{sid}",
        "documentName": "Test",
        "documentContent": document,
        "parameters": parameters or {},
        "runAsUser": run_as_user,
        "sessionOwner": "arn:aws:iam::123456789012:user/tester",
        "target": "mi-00000000000000001",
    }


REG = Registration(
    instance_id="mi-00000000000000001",
    region="us-east-1",
    account_id="123456789012",
    endpoint="http://127.0.0.1:1",
    access_key_id="AKIAAGENTTEST0000001",
    secret_access_key="agent-test-secret-000000000000000000000",
)


async def run_session(
    peer: Peer,
    document: dict[str, Any],
    parameters: dict[str, list[str]] | None = None,
    *,
    run_as_user: str | None = None,
    settings: SessionSettings | None = None,
    timeout: float = 30,
) -> AgentSession:
    """Run a real AgentSession against ``peer`` until it ends."""
    session = AgentSession(
        REG, task(peer, document, parameters, run_as_user), settings or SessionSettings()
    )
    await asyncio.wait_for(session.run(), timeout)
    return session
