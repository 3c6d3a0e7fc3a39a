"""One client session over the data channel: opening it, the reliable stream, the handshake
(docs/reference/data-channel.md#opening-the-data-channel and the sections after it).

:class:`Session` opens the websocket to the StreamUrl (SigV4-signed unless presigned), sends
the ``OpenDataChannelInput`` text frame, then runs the reliable stream of
:mod:`hatchway.protocol`: output is acked and handed to the session-type handler, input is
retransmitted on a 100 ms timer until acked. When the websocket drops without
``channel_closed`` it calls ResumeSession and reconnects with the plugin's backoff, then
re-sends every unacked frame, so the sequence numbers continue and nothing is lost or
repeated. The websocket-facing loop (writing, receiving into the stream, the resend timer, the
re-send after a reconnect) is :class:`hatchway.protocol.endpoint.Endpoint`, shared with the
agent; this module is what the client's session does on top of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from hatchway.client.aws import BotoControlPlane, ControlPlane, is_presigned, upgrade_host
from hatchway.client.command import CommandHandler
from hatchway.client.datakey import BotoDataKeys, DataKeySource, kms_endpoint
from hatchway.client.handler import SessionHandler
from hatchway.client.port import PortHandler
from hatchway.client.shell import ShellHandler
from hatchway.client.terminal import TerminalIO
from hatchway.client.websocket import (
    CertificateError,
    HandshakeError,
    MsgType,
    WebSocket,
    WebSocketError,
    connect,
)
from hatchway.protocol import (
    CLIENT_VERSION,
    ENCRYPTED_PAYLOAD_TYPES,
    Acked,
    ChannelClosed,
    ClientHandshake,
    Deliver,
    DuplicatePolicy,
    Frame,
    GaveUp,
    PayloadType,
    ProtocolError,
    Publication,
    Role,
    SendBytes,
    SessionType,
    Stream,
    build_open_data_channel,
)
from hatchway.protocol.endpoint import Endpoint, Link

if TYPE_CHECKING:  # the cipher (and `cryptography`) loads only for KMS sessions
    from hatchway.protocol.crypto import SessionCipher

__all__ = [
    "EOF_IDLE",
    "HANDLERS",
    "HEARTBEAT",
    "Backoff",
    "ConnectError",
    "Session",
    "SessionParams",
    "exiting_message",
    "run_session",
]

log = logging.getLogger("hatchway.client")

HANDLERS: dict[str, type[SessionHandler]] = {
    SessionType.STANDARD_STREAM: ShellHandler,
    SessionType.INTERACTIVE_COMMANDS: ShellHandler,
    SessionType.NON_INTERACTIVE_COMMANDS: CommandHandler,
    SessionType.PORT: PortHandler,
}
"""Session type → handler. The handshake accepts exactly these types."""

HANDSHAKE_TYPES = frozenset(
    {
        PayloadType.HANDSHAKE_REQUEST,
        PayloadType.HANDSHAKE_COMPLETE,
        PayloadType.ENC_CHALLENGE_REQUEST,
    }
)
HEARTBEAT = 30.0
"""Seconds between websocket pings; a missing pong closes the socket (then we reconnect)."""
EOF_IDLE = 1.0
"""After stdin ends (non-TTY): once our input is acked, wait this long without output."""
CONNECT_TIMEOUT = 15.0
FINAL_CLOSE_CODES = 4000
"""Websocket close codes from here on (application-defined) end the session: no resume."""
DATA_CHUNK = 256 * 1024
"""Port data goes out in frames of up to this size (keystrokes: 1024 bytes)."""
MAX_UNACKED_BYTES = 8 * 1024 * 1024
"""Bytes in flight before senders wait for acknowledgements (besides AWS's 10 000 frames)."""


@dataclass
class SessionParams:
    """Everything the AWS CLI hands the plugin
    (docs/reference/data-channel.md#plugin-invocation)."""

    session_id: str
    token: str
    stream_url: str
    region: str = ""
    profile: str = ""
    endpoint_url: str = ""
    target: str = ""
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class ConnectError(Exception):
    """The data channel could not be opened."""


@dataclass
class Backoff:
    """The plugin's retryer: first delay 100–199 ms, ×2, at most 5 s, 5 attempts."""

    attempts: int = 5
    initial: tuple[float, float] = (0.1, 0.2)
    factor: float = 2.0
    cap: float = 5.0

    def delays(self) -> list[float]:
        """The sleeps between attempts (``attempts - 1`` of them)."""
        delay = random.uniform(*self.initial)
        out = []
        for _ in range(self.attempts - 1):
            out.append(delay)
            delay = min(self.cap, delay * self.factor)
        return out


def exiting_message(session_id: str, output: str = "") -> str:
    """What the plugin prints when the channel closes
    (docs/reference/data-channel.md#json-payloads)."""
    if output:
        return f"\n\nSessionId: {session_id} : {output}\n\n"
    return f"\n\nExiting session with sessionId: {session_id}.\n\n"


@dataclass
class _Exit:
    code: int
    message: str
    terminate: bool = False


class Session:
    """A running session; :meth:`run` returns the process exit code."""

    def __init__(
        self,
        params: SessionParams,
        *,
        api: ControlPlane,
        io: TerminalIO,
        sign: bool = True,
        signals: bool = True,
        backoff: Backoff | None = None,
        eof_idle: float = EOF_IDLE,
        heartbeat: float | None = HEARTBEAT,
        clock: Callable[[], float] = time.time,
        kms: DataKeySource | None = None,
    ) -> None:
        self.params = params
        self.session_id = params.session_id
        self.api = api
        self.io = io
        self.sign = sign
        self.signals = signals
        self.backoff = backoff or Backoff()
        self.eof_idle = eof_idle
        self.heartbeat = heartbeat
        self.clock = clock
        self.stream = Stream(
            Role.CLIENT,
            # Re-ack duplicates (AWS's plugin ignores them): an ack lost when the websocket
            # dropped is otherwise never repaired, and the agent resends that frame forever.
            duplicates=DuplicatePolicy.REACK,
            ready=self._ready,
            max_unacked_bytes=MAX_UNACKED_BYTES,
        )
        self.endpoint = Endpoint(
            self.stream,
            clock=clock,
            on_gave_up=self._gave_up,
            write_errors=(WebSocketError, ConnectionError, OSError),
        )
        """The channel layer: the current websocket, the resend timer, reconnect re-sends."""
        self.kms = kms
        self.cipher: SessionCipher | None = None
        """The session key once a KMS handshake generated it (then Output is encrypted)."""
        self.handshake = ClientHandshake(
            client_version=CLIENT_VERSION,
            session_types=HANDLERS,
            kms_data_key=self._kms_data_key if kms is not None else None,
            kms_challenge=self._kms_challenge,
            acknowledge_challenge=True,
        )
        self.handler: SessionHandler | None = None
        self.stream_url = params.stream_url
        self._pending: list[tuple[int, bytes]] = []
        self._close_reason = ""
        self._done: asyncio.Future[_Exit] | None = None
        self._acked = asyncio.Event()
        self._pumper: asyncio.Task[None] | None = None
        self._pump_wanted = False
        self._last_activity = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._signals: list[int] = []

    @property
    def connections(self) -> int:
        """Websockets opened so far (1 + reconnects)."""
        return self.endpoint.connections

    @property
    def _ws(self) -> WebSocket | None:
        return cast("WebSocket | None", self.endpoint.ws)  # what _connect opened

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.io.say(f"\nStarting session with SessionId: {self.session_id}\n")
        result: _Exit
        try:
            try:
                await self._open_first()
            except ConnectError as exc:
                result = _Exit(1, f"Cannot perform start session: {exc}\n")
            else:
                self._install_signals()
                self._spawn(
                    self.endpoint.serve(self._frames, self._received, self._reconnect), "reader"
                )
                self._spawn(self.endpoint.resend_loop(), "resend")
                result = await self._done
        except asyncio.CancelledError:
            result = _Exit(130, exiting_message(self.session_id), terminate=True)
        finally:
            await self._shutdown()
        if result.terminate:
            await self._terminate()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if result.message:
            self.io.say(result.message)
        return result.code

    def _spawn(self, coro: Any, name: str) -> None:
        self._spawned(asyncio.create_task(coro, name=name))

    def _spawned(self, task: asyncio.Task[Any]) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("session task %s failed", task.get_name(), exc_info=exc)
            self._finish(_Exit(1, f"\n\nSession {self.session_id} failed: {exc}\n\n"))

    def _finish(self, result: _Exit) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(result)

    @property
    def finished(self) -> bool:
        return self._done is not None and self._done.done()

    async def _shutdown(self) -> None:
        for signum in self._signals:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signum)
        self._signals.clear()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.handler is not None:
            handler, self.handler = self.handler, None
            try:
                await handler.stop()
            finally:
                self.io.raw.restore()
        self.io.raw.restore()

    async def _terminate(self) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.api.terminate, self.session_id), 20)
        except Exception as exc:
            log.warning("TerminateSession(%s) failed: %s", self.session_id, exc)

    # --- signals ---------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[[], None]) -> None:
        if not self.signals:
            raise RuntimeError("signal handling disabled")
        asyncio.get_running_loop().add_signal_handler(signum, callback)

    def remove_signal_handler(self, signum: int) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_signal_handler(signum)

    def _install_signals(self) -> None:
        if not self.signals:
            return
        loop = asyncio.get_running_loop()
        wanted = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP)
        for signum in wanted:
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (ValueError, RuntimeError, NotImplementedError):
                continue
            self._signals.append(signum)

    def _on_signal(self, signum: int) -> None:
        data = self.handler.signal_bytes(signum) if self.handler is not None else None
        if data is not None:
            self._spawn(self.send(PayloadType.OUTPUT, data), "signal")
            return
        self._finish(_Exit(128 + signum, exiting_message(self.session_id), terminate=True))

    # --- what handlers call ----------------------------------------------------------------

    async def send(self, payload_type: int, payload: bytes) -> None:
        """Send stream data (the plugin's ``SendInputDataMessage``).

        A lone ``\\n`` keystroke becomes ``\\r`` (the plugin's winpty quirk,
        docs/reference/data-channel.md#the-reliable-stream). Waits
        while the unacked buffer is full. While disconnected the frames are only buffered;
        the reconnect re-sends them.
        """
        if payload_type == PayloadType.OUTPUT and payload == b"\n":
            payload = b"\r"
        for start in range(0, max(len(payload), 1), 1024):
            piece = payload[start : start + 1024]
            if self.cipher is not None and payload_type == PayloadType.OUTPUT:
                piece = self.cipher.encrypt(piece)
            while not self.stream.writable:
                self._acked.clear()
                await self._acked.wait()
            await self.endpoint.write(self.stream.send(payload_type, piece, self.clock()))

    async def send_data(self, payload: bytes) -> None:
        """Send port data as Output, byte for byte (no keystroke quirk), in frames of up to
        :data:`DATA_CHUNK` bytes; waits while the unacked window is full."""
        view = memoryview(payload)
        for start in range(0, len(payload), DATA_CHUNK):
            while not self.stream.writable:
                self._acked.clear()
                await self._acked.wait()
            piece = (
                payload if len(payload) <= DATA_CHUNK else bytes(view[start : start + DATA_CHUNK])
            )
            await self.endpoint.write(self.stream.send(PayloadType.OUTPUT, piece, self.clock()))

    def resume_input(self) -> None:
        """The handler takes agent output again: deliver (and ack) what the stream held back."""
        self._pump_wanted = True
        if not self.finished and (self._pumper is None or self._pumper.done()):
            self._pumper = asyncio.create_task(self._pump(), name="pump")
            self._spawned(self._pumper)

    async def _pump(self) -> None:
        while self._pump_wanted:
            self._pump_wanted = False
            async with self.endpoint.rx:
                await self._handle(await self.endpoint.pump())

    def _ready(self, frame: Frame) -> bool:
        """Agent Output waits, unacknowledged, while the handler cannot take it (a local
        port client that reads slowly, or none connected yet in basic forwarding)."""
        handler = self.handler
        if handler is None or frame.payload_type != PayloadType.OUTPUT:
            return True
        return handler.accepting()

    def input_ended(self) -> None:
        if self.io.interactive:  # a terminal that hangs up: nobody to drain for
            self.end_locally(0)
            return
        self._spawn(self._drain_then_end(), "drain")

    def end_locally(self, code: int = 0) -> None:
        self._finish(_Exit(code, exiting_message(self.session_id), terminate=True))

    async def _drain_then_end(self) -> None:
        while self.stream.unacked_count:
            self._acked.clear()
            await self._acked.wait()
        self._last_activity = max(self._last_activity, time.monotonic())
        while (idle := time.monotonic() - self._last_activity) < self.eof_idle:
            await asyncio.sleep(self.eof_idle - idle)
        self.end_locally(0)

    # --- the websocket ---------------------------------------------------------------------

    async def _connect(self, url: str, token: str) -> WebSocket:
        headers: dict[str, str] = {}
        if self.sign and not is_presigned(url):
            try:
                headers = await asyncio.to_thread(self.api.sign_upgrade, url)
            except Exception as exc:  # the plugin logs it and connects unsigned
                log.warning("not signing the data channel upgrade: %s", exc)
                headers = {}
            else:
                headers.setdefault("Host", upgrade_host(url))
        ws = await connect(url, headers, heartbeat=self.heartbeat)
        await ws.send_str(
            build_open_data_channel(
                token,
                request_id=uuid.uuid4(),
                client_id=self.params.client_id,
                client_version=CLIENT_VERSION,
            )
        )
        return ws

    async def _open_first(self) -> None:
        """The first connect: same token, retried with the backoff on network errors."""
        delays = self.backoff.delays()
        last: BaseException | None = None
        for attempt in range(self.backoff.attempts):
            if attempt:
                await asyncio.sleep(delays[attempt - 1])
            try:
                ws = await asyncio.wait_for(
                    self._connect(self.stream_url, self.params.token), CONNECT_TIMEOUT
                )
                await self.endpoint.attach(ws)
                return
            except HandshakeError as exc:
                raise ConnectError(f"{exc.status} {exc.message}") from exc
            except CertificateError as exc:
                raise ConnectError(str(exc)) from exc
            except (WebSocketError, OSError, TimeoutError) as exc:
                last = exc
                log.warning("opening the data channel failed: %s", exc)
        raise ConnectError(str(last) or type(last).__name__)

    async def _reconnect(self, dropped: Link) -> Link | None:
        """The channel dropped: unless it was final, ResumeSession + a new websocket (the
        endpoint then re-sends everything unacked); None ends the session."""
        if self.finished:
            return None
        code = cast(WebSocket, dropped).close_code
        if code is not None and code >= FINAL_CLOSE_CODES:
            # Application codes: the broker refused us (bad token, not allowed) or another
            # client resumed the session. Resuming would not help.
            self._finish(
                _Exit(
                    1,
                    f"\n\nSession {self.session_id}: the data channel was closed: "
                    f"{code} {self._close_reason}\n\n",
                )
            )
            return None
        log.warning(
            "data channel dropped (close code %s); resuming session %s", code, self.session_id
        )
        delays = self.backoff.delays()
        last: BaseException | None = None
        for attempt in range(self.backoff.attempts):
            if attempt:
                await asyncio.sleep(delays[attempt - 1])
            try:
                token, url = await asyncio.to_thread(self.api.resume, self.session_id)
            except Exception as exc:
                last = exc
                log.warning("ResumeSession failed: %s", exc)
                continue
            if not token:
                self._finish(_Exit(0, f"Session: {self.session_id} timed out.\n"))
                return None
            if url:
                self.stream_url = url
            try:
                ws = await asyncio.wait_for(self._connect(self.stream_url, token), CONNECT_TIMEOUT)
            except (WebSocketError, OSError, TimeoutError) as exc:
                last = exc
                log.warning("reconnecting the data channel failed: %s", exc)
                continue
            return ws
        self._finish(_Exit(1, f"\n\nUnable to reconnect session {self.session_id}: {last}\n\n"))
        return None

    async def _frames(self, link: Link) -> AsyncIterator[bytes]:
        """The socket's binary frames until it closes (its reason kept for the message)."""
        ws = cast(WebSocket, link)
        self._close_reason = ""
        while True:
            msg = await ws.receive()
            if msg.type is MsgType.BINARY:
                yield msg.data
            elif msg.type is MsgType.CLOSE:
                self._close_reason = msg.extra
                return
            else:
                log.debug("ignoring websocket message %s", msg.type)

    async def _gave_up(self, exc: GaveUp) -> None:
        log.error("giving up: %s", exc)
        self._finish(
            _Exit(
                1,
                f"\n\nTerminating session {self.session_id}: the stream data was not "
                "processed before timeout.\n\n",
                terminate=True,
            )
        )

    # --- incoming --------------------------------------------------------------------------

    async def _received(self, events: list[Any]) -> bool:
        """A frame's events (the endpoint holds its ``rx`` lock); True once the session ended."""
        await self._handle(events)
        return self.finished

    async def _handle(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, SendBytes):
                await self.endpoint.write(event.data)
            elif isinstance(event, Deliver):
                self._last_activity = time.monotonic()
                await self._deliver(event.payload_type, event.payload)
            elif isinstance(event, Acked):
                self._last_activity = time.monotonic()
                self._acked.set()
            elif isinstance(event, ChannelClosed):
                if self.handler is not None and event.exit_code is not None:
                    self.handler.on_reported_exit_code(event.exit_code)
                status = self.handler.exit_status() if self.handler is not None else None
                self._finish(_Exit(status or 0, exiting_message(self.session_id, event.output)))
                return
            elif isinstance(event, Publication):
                log.debug("publication paused=%s", event.paused)

    async def _deliver(self, payload_type: int, payload: bytes) -> None:
        if payload_type in HANDSHAKE_TYPES:
            await self._on_handshake(payload_type, payload)
        elif self.handler is not None:
            opened = self._open(payload_type, payload)
            if opened is not None:
                await self.handler.on_payload(payload_type, opened)
        elif self.handshake.request is None and payload_type == PayloadType.OUTPUT:
            # No handshake: the first Output makes it a shell (the plugin's ProcessFirstMessage).
            await self._start_handler(SessionType.STANDARD_STREAM, None)
            assert self.handler is not None
            await self.handler.on_payload(payload_type, payload)
        else:
            self._pending.append((payload_type, payload))

    def _open(self, payload_type: int, payload: bytes) -> bytes | None:
        """Decrypt what the agent encrypted; a payload that fails ends the session."""
        if self.cipher is None or payload_type not in ENCRYPTED_PAYLOAD_TYPES:
            return payload
        from hatchway.protocol.crypto import DecryptError

        try:
            return self.cipher.decrypt(payload)
        except DecryptError as exc:
            log.error("undecryptable payload (type %d) from the agent: %s", payload_type, exc)
            self._finish(
                _Exit(
                    1,
                    f"\n\nSession {self.session_id}: data from the agent failed to decrypt "
                    f"({exc}); ending the session.\n\n",
                    terminate=True,
                )
            )
            return None

    def _kms_data_key(self, key_id: str, challenge: str) -> str:
        """The KMSEncryption action: GenerateDataKey with the user's credentials (blocking)."""
        assert self.kms is not None
        from hatchway.protocol.crypto import SessionCipher, encryption_context

        # ClientHandshake acknowledges a non-empty challenge: it is then part of the context.
        context = encryption_context(self.session_id, self.params.target, challenge or None)
        try:
            plaintext, blob = self.kms.generate_data_key(key_id, context)
            cipher = SessionCipher(Role.CLIENT, plaintext)
        except Exception as exc:  # reported to the agent as the action's error
            log.warning("KMSEncryption failed: %s", exc)
            raise
        self.cipher = cipher
        return base64.b64encode(blob).decode("ascii")

    def _kms_challenge(self, challenge: str) -> str:
        if self.cipher is None:
            raise ProtocolError("EncChallengeRequest before a KMS data key was generated")
        from hatchway.protocol.crypto import answer_challenge

        return answer_challenge(self.cipher, challenge)

    async def _on_handshake(self, payload_type: int, payload: bytes) -> None:
        try:
            if payload_type == PayloadType.HANDSHAKE_REQUEST:
                # The KMS action calls GenerateDataKey: off the event loop.
                reply = await asyncio.to_thread(self.handshake.handle, payload_type, payload)
            else:
                reply = self.handshake.handle(payload_type, payload)
        except ValueError as exc:  # ProtocolError, or a challenge that does not decrypt
            self._finish(_Exit(1, f"\n\nSession {self.session_id}: handshake failed: {exc}\n\n"))
            return
        if reply is not None:
            await self.send(*reply)
        if payload_type == PayloadType.HANDSHAKE_REQUEST and self.handshake.session_type is None:
            # We answered Failed; the agent ends the session and channel_closed follows.
            log.warning("handshake asked for unsupported session type %s", self._asked_type())
        if payload_type == PayloadType.HANDSHAKE_COMPLETE and self.handler is None:
            if self.handshake.customer_message:
                self.io.say(self.handshake.customer_message + "\n")
            if self.handshake.session_type is None:
                self._finish(
                    _Exit(
                        1,
                        f"\n\nSession type {self._asked_type()} is not supported by this "
                        "client.\n\n",
                        terminate=True,
                    )
                )
                return
            await self._start_handler(self.handshake.session_type, self.handshake.properties)

    def _asked_type(self) -> str:
        request = self.handshake.request
        for action in request.actions if request is not None else ():
            if action.action_type == "SessionType" and isinstance(action.parameters, dict):
                return str(action.parameters.get("SessionType"))
        return "(none)"

    async def _start_handler(self, session_type: str, properties: Any) -> None:
        handler_cls = HANDLERS.get(session_type)
        if handler_cls is None:
            self._finish(
                _Exit(1, f"\n\nSession type {session_type} is not supported by this client.\n\n")
            )
            return
        self.handler = handler_cls(self, session_type, properties)
        await self.handler.start()
        pending, self._pending = self._pending, []
        for payload_type, payload in pending:
            opened = self._open(payload_type, payload)
            if opened is None:
                return
            await self.handler.on_payload(payload_type, opened)


def run_session(params: SessionParams, io: TerminalIO | None = None) -> int:
    """Run a session with boto3 credentials (region/profile/endpoint of ``params``); KMS data
    keys come from the endpoint :func:`~hatchway.client.datakey.kms_endpoint` picks."""
    api = BotoControlPlane(params.region, params.profile, params.endpoint_url)
    kms = BotoDataKeys(api.session, kms_endpoint(params.endpoint_url, os.environ), params.region)
    session = Session(params, api=api, io=io or TerminalIO.system(), kms=kms)
    try:
        return asyncio.run(session.run())
    except KeyboardInterrupt:
        session.io.raw.restore()
        return 130
