"""One session on the node: its data channel to the broker and the shell it runs.

The broker asks for a session over the control channel (``start_session``: session id, the
data-channel URL and token, the document, parameters, run-as user). The agent opens the data
channel with a SigV4-signed upgrade, says ``agent_session_state: Connected``, starts the shell
in a PTY and runs the reliable stream: PTY output goes out as ``output_stream_data`` (acked,
retransmitted), client input, Size and Flag messages come in. When the shell exits the agent
waits for its output to be acknowledged, reports ``Terminating`` and closes the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from hatchway.agent.control import ControlChannel, signed_headers
from hatchway.agent.registration import Registration
from hatchway.agent.shell import DEFAULT_USER, PtyShell, RunAsError, resolve_user
from hatchway.protocol import (
    ChannelClosed,
    Deliver,
    Frame,
    GaveUp,
    MessageType,
    PayloadError,
    PayloadType,
    Role,
    SendBytes,
    Stream,
    build_agent_session_state,
    build_open_data_channel,
    encode,
    parse_size,
)

log = logging.getLogger("hatchway.agent.session")

OUTPUT_CHUNK = 64 * 1024  # AWS paces 1 KiB per ms; Hatchway sends up to 64 KiB per frame
MAX_UNACKED = 2048  # frames in flight before the PTY is no longer read (backpressure)
DRAIN_TIMEOUT = 5.0
SUPPORTED = ("Standard_Stream", "InteractiveCommands")

Notify = Callable[[dict[str, Any]], Awaitable[None]]


class SessionSettings:
    """How the node maps sessions to OS users (Run As comes with the preferences work)."""

    def __init__(
        self,
        default_user: str = DEFAULT_USER,
        allow_root: bool = False,
        create_default_user: bool = True,
    ) -> None:
        self.default_user = default_user
        self.allow_root = allow_root
        self.create_default_user = create_default_user


class AgentSession:
    def __init__(
        self,
        reg: Registration,
        task: dict[str, Any],
        settings: SessionSettings,
        notify: Notify | None = None,
    ) -> None:
        self.reg = reg
        self.task = task
        self.settings = settings
        self.notify = notify
        self.session_id: str = task["sessionId"]
        self.stream = Stream(Role.AGENT, max_unacked=MAX_UNACKED)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.shell: PtyShell | None = None
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.finished = asyncio.Event()
        self.exit_code: int | None = None

    # -- outgoing ---------------------------------------------------------------------

    def _control_frame(self, state: str) -> bytes:
        return encode(
            Frame(
                MessageType.AGENT_SESSION_STATE,
                0,
                0,
                build_agent_session_state(state, self.session_id),
                uuid.uuid4(),
                int(time.time() * 1000),
                flags=3,
            )
        )

    def _output(self, data: bytes) -> None:
        now = time.time()
        for i in range(0, len(data), OUTPUT_CHUNK):
            self.outbox.put_nowait(
                self.stream.send(PayloadType.OUTPUT, data[i : i + OUTPUT_CHUNK], now)
            )
        if not self.stream.writable and self.shell is not None:
            self.shell.pause_reading()  # resumed when acks free the window

    def _exited(self, code: int) -> None:
        self.exit_code = code
        self.finished.set()

    async def _writer(self) -> None:
        assert self.ws is not None
        while True:
            data = await self.outbox.get()
            if data is None:
                return
            await self.ws.send_bytes(data)

    async def _resender(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            try:
                for data in self.stream.due(time.time()):
                    self.outbox.put_nowait(data)
            except GaveUp:
                log.warning("session %s: the client stopped acknowledging", self.session_id)
                self.finished.set()
                return

    # -- incoming ---------------------------------------------------------------------

    def _deliver(self, event: Deliver) -> None:
        shell = self.shell
        if shell is None:
            return
        if event.payload_type == PayloadType.OUTPUT:
            shell.write(event.payload)
        elif event.payload_type == PayloadType.SIZE:
            with contextlib.suppress(PayloadError):
                size = parse_size(event.payload)
                shell.resize(size.cols, size.rows)

    async def _reader(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            try:
                events = self.stream.receive(msg.data, time.time())
            except ValueError as exc:
                log.warning("session %s: bad frame from the broker: %s", self.session_id, exc)
                continue
            for ev in events:
                if isinstance(ev, SendBytes):
                    self.outbox.put_nowait(ev.data)
                elif isinstance(ev, Deliver):
                    self._deliver(ev)
                elif isinstance(ev, ChannelClosed):
                    self.finished.set()
                    return
            if self.shell is not None and self.stream.writable:
                self.shell.resume_reading()
        self.finished.set()

    # -- the session ------------------------------------------------------------------

    async def run(self) -> None:
        url = self.task["streamUrl"]
        http_url = "http" + url[len("ws") :]
        headers = signed_headers(http_url, self.reg)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, headers=headers, heartbeat=30.0, max_msg_size=0) as ws,
        ):
            self.ws = ws
            await ws.send_str(
                build_open_data_channel(
                    self.task["token"],
                    request_id=str(uuid.uuid4()),
                    client_id=str(uuid.uuid4()),
                    client_instance_id=self.reg.instance_id,
                )
            )
            await ws.send_bytes(self._control_frame("Connected"))
            writer = asyncio.create_task(self._writer())
            try:
                reader = asyncio.create_task(self._reader())  # acks must flow while draining
                if not await self._start():
                    await self._drain()
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                    return
                resender = asyncio.create_task(self._resender())
                await self.finished.wait()
                if self.exit_code is not None:
                    await self._drain()
                for task in (reader, resender):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            finally:
                if self.shell is not None:
                    self.shell.close()
                if not ws.closed:
                    self.outbox.put_nowait(self._control_frame("Terminating"))
                self.outbox.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 5)
                if self.notify is not None and self.exit_code is not None:
                    with contextlib.suppress(Exception):
                        await self.notify(
                            {
                                "type": "session_exit",
                                "sessionId": self.session_id,
                                "exitCode": self.exit_code,
                            }
                        )

    async def _start(self) -> bool:
        doc = self.task.get("documentContent") or {}
        session_type = doc.get("sessionType", "Standard_Stream")
        if session_type not in SUPPORTED:
            self._output(
                f"Session type {session_type} is not supported by this agent yet.\r\n".encode()
            )
            return False
        try:
            user = resolve_user(
                self.task.get("runAsUser") or self.settings.default_user,
                allow_root=self.settings.allow_root,
                create=self.settings.create_default_user,
            )
        except RunAsError as exc:
            self._output(f"{exc}\r\n".encode())
            return False
        profile = ((doc.get("inputs") or {}).get("shellProfile") or {}).get("linux") or None
        self.shell = PtyShell(user, self._output, self._exited, profile=profile)
        self.shell.start()
        return True

    async def _drain(self) -> None:
        """Wait (bounded) until the client acknowledged everything we sent."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.stream.unacked_count and time.monotonic() < deadline:
            with contextlib.suppress(GaveUp):
                for data in self.stream.due(time.time()):
                    self.outbox.put_nowait(data)
            await asyncio.sleep(0.05)

    async def terminate(self) -> None:
        self.finished.set()


async def run_node(
    reg: Registration, settings: SessionSettings, connected: asyncio.Event | None = None
) -> None:
    """The agent's main loop: the control channel, and the sessions it asks for."""

    channel = ControlChannel(reg)
    manager = SessionManager(reg, settings, channel.send)
    channel.on_message = manager.handle
    if connected is not None:
        channel.connected = connected
    await channel.run()


class SessionManager:
    """The node's sessions, driven by control-channel messages."""

    def __init__(
        self, reg: Registration, settings: SessionSettings, notify: Notify | None = None
    ) -> None:
        self.reg = reg
        self.settings = settings
        self.notify = notify
        self.sessions: dict[str, AgentSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "start_session":
            sid = str(message.get("sessionId"))
            if sid in self.sessions:
                return
            session = AgentSession(self.reg, message, self.settings, self.notify)
            self.sessions[sid] = session
            task = asyncio.create_task(self._run(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "terminate_session":
            found = self.sessions.get(str(message.get("sessionId")))
            if found is not None:
                await found.terminate()

    async def _run(self, session: AgentSession) -> None:
        try:
            await session.run()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("session %s: %s", session.session_id, exc)
        except Exception:
            log.exception("session %s failed", session.session_id)
        finally:
            self.sessions.pop(session.session_id, None)
