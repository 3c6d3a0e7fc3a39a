"""One session on the node: its data channel to the broker and the plugin that does the work.

The broker asks for a session over the control channel (``start_session``: session id, the
data-channel URL and token, the document, parameters, run-as user, whether to stream the
session log). The agent opens the data channel with a SigV4-signed upgrade, says
``agent_session_state: Connected``, resolves and re-validates the document, handshakes when the
session type or a KMS key calls for it, and starts the plugin for the ``sessionType`` (a shell,
a command, port forwarding). The reliable stream carries the plugin's output as
``output_stream_data`` (acked, retransmitted; encrypted with a KMS key) and brings client input,
Size and Flag messages. When the plugin is done the agent waits for its output to be
acknowledged, reports ``Terminating`` (or ``Failed`` with the reason) and closes the channel.
The websocket-facing loop (receiving into the stream, the resend timer and the handshake
deadline on its tick, the re-send after a reconnect) is
:class:`hatchway.protocol.endpoint.Endpoint`, shared with the client; frames reach the socket
through this module's writer task (so that they wait, in order, while the channel reconnects).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp

from hatchway.agent.command import InteractiveCommandsPlugin, NonInteractiveCommandsPlugin
from hatchway.agent.control import ControlChannel, signed_headers, signed_post_headers
from hatchway.agent.datakey import KmsDecrypter, KmsError, KmsSettings
from hatchway.agent.plugin import PluginError, SessionPlugin
from hatchway.agent.port import PortPlugin
from hatchway.agent.recorder import LogStreamer
from hatchway.agent.registration import Registration
from hatchway.agent.shell import DEFAULT_USER, ShellPlugin
from hatchway.protocol import (
    ENCRYPTED_PAYLOAD_TYPES,
    ChannelClosed,
    Deliver,
    Frame,
    GaveUp,
    MessageType,
    PayloadError,
    PayloadType,
    ProtocolError,
    Publication,
    Role,
    SendBytes,
    SessionType,
    Stream,
    build_agent_session_state,
    build_open_data_channel,
    encode,
)
from hatchway.protocol.crypto import (
    SessionCipher,
    encryption_context,
    handshake_challenge,
    new_challenge,
    verify_challenge,
)
from hatchway.protocol.endpoint import Endpoint, Link
from hatchway.protocol.handshake import (
    HANDSHAKE_ERROR,
    HANDSHAKE_TIMEOUT_MESSAGE,
    AgentHandshake,
    HandshakeState,
    KmsParameters,
    requires_handshake,
)
from hatchway.protocol.sessionlog import OutputRef
from hatchway.ssm.documents import (
    DocumentError,
    interpolate_inputs,
    interpolate_properties,
    validate_parameters,
)

log = logging.getLogger("hatchway.agent.session")

OUTPUT_CHUNK = 256 * 1024  # AWS paces 1 KiB per ms; Hatchway sends up to 256 KiB per frame
MAX_UNACKED = 2048  # frames in flight before the PTY is no longer read (backpressure)
MAX_UNACKED_BYTES = 8 * 1024 * 1024  # …or bytes in flight
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
"""Client input a session keeps unacknowledged (waiting for the plugin, or ahead of a gap):
a well-behaved client stops at its window before this; one that ignores it is not acked."""
DRAIN_TIMEOUT = 5.0
RESUME_WINDOW = 300.0
"""Seconds the node keeps trying to reconnect a dropped data channel (the broker's
``--resume-window`` when its ``start_session`` says)."""
RECONNECT_DELAYS = (0.1, 5.0)
"""The first delay between reconnection attempts and the cap (each with jitter)."""
KMS_MESSAGE = "This session is encrypted using AWS KMS."
LOGGED_OUT = (PayloadType.OUTPUT, PayloadType.STDERR)  # what the broker captures for the log

Notify = Callable[[dict[str, Any]], Awaitable[None]]


class SessionSettings:
    """How the node runs sessions: the default OS user (``ssm-user``, created on demand when
    Run As is off), whether root sessions are allowed, and where KMS data keys are decrypted."""

    def __init__(
        self,
        default_user: str = DEFAULT_USER,
        allow_root: bool = False,
        create_default_user: bool = True,
        kms: KmsSettings | None = None,
    ) -> None:
        self.default_user = default_user
        self.allow_root = allow_root
        self.create_default_user = create_default_user
        self.kms = kms or KmsSettings()
        """Where kms:Decrypt of session data keys goes (default: the broker)."""


class AgentSession:
    """One session: the data channel, the handshake, and the plugin that does the work."""

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
        self.document: dict[str, Any] = {}
        self.parameters: dict[str, list[str]] = {}
        self.stream = Stream(
            Role.AGENT,
            max_unacked=MAX_UNACKED,
            max_unacked_bytes=MAX_UNACKED_BYTES,
            max_buffered_bytes=MAX_BUFFERED_BYTES,
            ready=self._ready,
        )
        self.plugin: SessionPlugin | None = None
        self.handshake: AgentHandshake | None = None
        self.handshake_done = asyncio.Event()
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.endpoint = Endpoint(
            self.stream,
            clock=time.time,
            send=self._queue,
            on_gave_up=self._gave_up,
            on_tick=self._deadlines,
        )
        """The channel layer: the current websocket, the resend timer, reconnect re-sends."""
        self.finished = asyncio.Event()
        self.exit_code: int | None = None
        self.failure: str | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.recorders: list[Callable[[str, Any], None]] = []
        """Session-log sinks: each gets every :meth:`record` event."""
        self.log_stream: LogStreamer | None = None
        """Streams the session log to the broker, when the broker asked for it."""
        self._sent: tuple[bytes, OutputRef] | None = None
        self.encrypt: Callable[[bytes], bytes] | None = None
        """Set when the session is KMS-encrypted: seals outgoing Output/StdErr/ExitCode."""
        self.decrypt: Callable[[bytes], bytes] | None = None
        """Set when the session is KMS-encrypted: opens incoming Output payloads."""
        self.kms = KmsDecrypter(reg, settings.kms)
        self._cipher: SessionCipher | None = None
        self._challenge_secret: bytes | None = None
        self.http: aiohttp.ClientSession | None = None
        self.closed_by_broker = False
        """The broker ended the channel (channel_closed, or refused us): no reconnection."""
        self.gave_up = False
        """The data channel could not be reconnected within the resume window."""
        self.reconnects = 0

    @property
    def ws(self) -> aiohttp.ClientWebSocketResponse | None:
        """The data channel's current websocket (None while reconnecting)."""
        return cast("aiohttp.ClientWebSocketResponse | None", self.endpoint.ws)

    # -- SessionIO (what plugins use) -------------------------------------------------

    def output(self, data: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
        now = time.time()
        first = self.stream.next_sequence_number
        for i in range(0, max(len(data), 1), OUTPUT_CHUNK):
            chunk = data[i : i + OUTPUT_CHUNK]
            if self.encrypt is not None and payload_type in ENCRYPTED_PAYLOAD_TYPES:
                chunk = self.encrypt(chunk)
            self.outbox.put_nowait(self.stream.send(payload_type, chunk, now))
        if self.encrypt is None and payload_type in LOGGED_OUT:
            # If the plugin records this same output, the log can name these frames instead of
            # carrying the bytes a second time (the broker reads them as it relays them).
            self._sent = (data, OutputRef(first, self.stream.next_sequence_number - 1))

    def _output_ref(self, data: bytes) -> OutputRef | None:
        """The frames that carried ``data``, if it is what :meth:`output` sent last."""
        sent = self._sent
        if sent is not None and sent[0] is data:
            self._sent = None
            return sent[1]
        return None

    @property
    def writable(self) -> bool:
        return self.stream.writable

    def exited(self, code: int) -> None:
        self.exit_code = code
        self.finished.set()

    def resume_input(self) -> None:
        """The plugin takes client data again: deliver (and ack) what the stream held back."""
        for event in self.stream.pump(time.time()):
            if isinstance(event, SendBytes):
                self.outbox.put_nowait(event.data)
            elif isinstance(event, Deliver):
                self._deliver(event)

    def _ready(self, frame: Frame) -> bool:
        """Client Output waits, unacknowledged, while the plugin cannot take it (a port
        destination that is slow or still connecting); nothing waits during the handshake."""
        plugin, hs = self.plugin, self.handshake
        if plugin is None or frame.payload_type != PayloadType.OUTPUT:
            return True
        return (hs is not None and not hs.done) or plugin.accepting()

    def record(self, kind: str, data: Any) -> None:
        for sink in self.recorders:
            try:
                sink(kind, data)
            except Exception:
                log.exception("session %s: session log sink failed", self.session_id)

    def fail(self, message: str) -> None:
        """End the session as Failed, telling the user why."""
        if self.failure is None:
            self.failure = message
            if self.document.get("sessionType") != "Port":  # Port data stays byte-exact:
                self.output(f"{message}\r\n".encode())  # the reason goes in channel_closed
        self.finished.set()

    # -- outgoing ---------------------------------------------------------------------

    def _control_frame(
        self, state: str, reason: str | None = None, exit_code: int | None = None
    ) -> bytes:
        payload = build_agent_session_state(state, self.session_id, reason, exit_code)
        return encode(
            Frame(
                MessageType.AGENT_SESSION_STATE,
                0,
                0,
                payload,
                uuid.uuid4(),
                int(time.time() * 1000),
                flags=3,
            )
        )

    async def _writer(self) -> None:
        while True:
            data = await self.outbox.get()
            if data is None:
                return
            while True:
                ws = self.ws
                if ws is None or ws.closed:
                    if self.gave_up or self.closed_by_broker:
                        break  # dropped: nobody will read it
                    await asyncio.sleep(0.05)  # reconnecting: it goes out on the new socket
                    continue
                with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                    await ws.send_bytes(data)  # a stream frame lost here is re-sent
                break

    async def _queue(self, data: bytes) -> None:
        """How the endpoint's frames go out: through the writer task, in order."""
        self.outbox.put_nowait(data)

    async def _gave_up(self, exc: GaveUp) -> None:
        log.warning("session %s: the client stopped acknowledging", self.session_id)
        self.finished.set()

    def _deadlines(self, now: float) -> None:
        """On every resend tick: the handshake's deadline."""
        hs = self.handshake
        if hs is not None and not hs.done and not hs.failed and hs.check_timeout(now):
            self.fail(hs.error or HANDSHAKE_TIMEOUT_MESSAGE)

    # -- incoming ---------------------------------------------------------------------

    def _deliver(self, event: Deliver) -> None:
        ptype, payload = event.payload_type, event.payload
        hs = self.handshake
        if hs is not None and not hs.done:
            if ptype in (PayloadType.HANDSHAKE_RESPONSE, PayloadType.ENC_CHALLENGE_RESPONSE):
                self._on_handshake(ptype, payload)
            # Anything else before HandshakeComplete is acked and dropped (AWS's agent does).
            return
        plugin = self.plugin
        if plugin is None:
            return
        if self.decrypt is not None and ptype == PayloadType.OUTPUT:
            try:
                payload = self.decrypt(payload)
            except ValueError:
                log.warning("session %s: dropped input that failed to decrypt", self.session_id)
                return
        plugin.on_input(ptype, payload)

    def _on_handshake(self, ptype: int, payload: bytes) -> None:
        hs = self.handshake
        assert hs is not None
        try:
            if ptype == PayloadType.HANDSHAKE_RESPONSE:
                state = hs.receive_response(payload)
                if state is HandshakeState.CHALLENGE_DUE:
                    self._spawn(self._kms_challenge())
                    return
            else:
                self._spawn(self._kms_verify(hs.receive_challenge_response(payload)))
                return
        except (ProtocolError, PayloadError) as exc:
            self.fail(f"{HANDSHAKE_ERROR} {exc}")
            return
        self._after_handshake_step()

    def _after_handshake_step(self) -> None:
        hs = self.handshake
        assert hs is not None
        if hs.failed:
            self.fail(hs.error or HANDSHAKE_ERROR)
        elif hs.state is HandshakeState.COMPLETE_DUE:
            message = KMS_MESSAGE if hs.kms is not None else ""
            self.outbox.put_nowait(
                self.stream.send(
                    PayloadType.HANDSHAKE_COMPLETE, hs.complete(time.time(), message), time.time()
                )
            )
            self.handshake_done.set()

    async def _kms_challenge(self) -> None:
        """KMS: ``kms:Decrypt`` the client's data key, split it, send the EncChallengeRequest.

        The encryption context names this session and this node (plus the handshake's random
        challenge when the client acknowledged it), so a data key made for another session or
        node does not decrypt. Any failure ends the session as Failed, telling the user why.
        """
        hs = self.handshake
        assert hs is not None and hs.kms is not None and hs.kms_ciphertext_key is not None
        failed = f"{HANDSHAKE_ERROR} Fetching data key failed:"
        try:
            blob = base64.b64decode(hs.kms_ciphertext_key, validate=True)
        except (binascii.Error, ValueError):
            self.fail(f"{failed} the KMSCipherTextKey is not base64.")
            return
        context = encryption_context(
            self.session_id,
            self.reg.instance_id,
            hs.kms.challenge if hs.challenge_acknowledged else None,
        )
        try:
            data_key = await self.kms.decrypt_data_key(blob, context, hs.kms.kms_key_id)
            cipher = SessionCipher(Role.AGENT, data_key)
        except KmsError as exc:
            log.warning("session %s: kms:Decrypt failed: %s", self.session_id, exc)
            self.fail(f"{failed} Unable to retrieve data key, {exc}")
            return
        except ValueError as exc:  # a data key of the wrong size
            self.fail(f"{failed} {exc}")
            return
        except Exception as exc:  # anything else must still end the handshake, not hang it
            log.exception("session %s: decrypting the data key failed", self.session_id)
            self.fail(f"{failed} {exc}")
            return
        if self.finished.is_set():
            return
        self._cipher = cipher
        self._challenge_secret, challenge = new_challenge(cipher)
        now = time.time()
        payload = hs.challenge_request(challenge, now)
        self.outbox.put_nowait(self.stream.send(PayloadType.ENC_CHALLENGE_REQUEST, payload, now))

    async def _kms_verify(self, challenge: str) -> None:
        """KMS: the client's EncChallengeResponse must open to our challenge with its key."""
        hs = self.handshake
        assert hs is not None
        cipher, secret = self._cipher, self._challenge_secret
        ok = (
            cipher is not None
            and secret is not None
            and verify_challenge(cipher, secret, challenge)
        )
        if hs.challenge_verified(ok) is HandshakeState.COMPLETE_DUE and cipher is not None:
            # From here on nothing of the session leaves or enters unencrypted.
            self.encrypt, self.decrypt = cipher.encrypt, cipher.decrypt
        self._after_handshake_step()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _frames(self, ws: Link) -> AsyncIterator[bytes]:
        """The socket's binary frames until it closes."""
        async for msg in cast(aiohttp.ClientWebSocketResponse, ws):
            if msg.type == aiohttp.WSMsgType.BINARY:
                yield msg.data

    async def _received(self, events: list[Any]) -> bool:
        """A frame's events; True if the broker closed the channel."""
        for ev in events:
            if isinstance(ev, Deliver):
                self._deliver(ev)
            elif isinstance(ev, ChannelClosed):
                self.closed_by_broker = True
                self.finished.set()
                return True
            elif isinstance(ev, Publication) and not ev.paused:
                # The broker says a client (re)connected: re-send what it may have missed.
                await self.endpoint.resend_all()
        if self.plugin is not None and self.stream.writable:
            self.plugin.on_writable()
        return False

    async def _dropped(self, ws: Link) -> Link | None:
        """The socket closed: a new one (the endpoint re-sends what is unacked), or None."""
        code = cast(aiohttp.ClientWebSocketResponse, ws).close_code
        if code is not None and code >= 4000:
            # The broker refused us or replaced this socket: reconnecting would not help.
            log.warning("session %s: data channel closed (%s)", self.session_id, code)
            self.closed_by_broker = True
            self.finished.set()
            return None
        log.warning(
            "session %s: data channel dropped (close code %s); reconnecting",
            self.session_id,
            code,
        )
        resumed = await self._reconnect()
        if resumed is None:
            self.gave_up = True
            self.finished.set()
            return None
        self.reconnects += 1
        return resumed

    # -- (re)connecting ---------------------------------------------------------------

    async def _open(self, token: str) -> aiohttp.ClientWebSocketResponse:
        """Open the node's side of the data channel with ``token`` and say Connected."""
        assert self.http is not None
        url = self.task["streamUrl"]
        http_url = "http" + url[len("ws") :]
        ws = await self.http.ws_connect(
            url,
            headers=signed_headers(http_url, self.reg),
            heartbeat=30.0,
            max_msg_size=0,
            ssl=self.reg.tls_context,
        )
        try:
            await ws.send_str(
                build_open_data_channel(
                    token,
                    request_id=str(uuid.uuid4()),
                    client_id=str(uuid.uuid4()),
                    client_instance_id=self.reg.instance_id,
                )
            )
            await ws.send_bytes(self._control_frame("Connected"))
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _create_data_channel(self) -> str:
        """CreateDataChannel: a fresh single-use token for this session's node side.

        Raises :class:`SessionGone` when the broker says the session is over (a 4xx)."""
        assert self.http is not None
        url = self.task["streamUrl"]
        http_url = "http" + url[len("ws") :]
        body = json.dumps(
            {
                "MessageSchemaVersion": "1.0",
                "RequestId": str(uuid.uuid4()),
                "ClientId": str(uuid.uuid4()),
            }
        ).encode()
        headers = signed_post_headers(http_url, body, self.reg)
        async with self.http.post(
            http_url,
            data=body,
            headers=headers,
            ssl=self.reg.tls_context,
            timeout=aiohttp.ClientTimeout(total=15),
        ) as resp:
            text = await resp.text()
            if resp.status == 201:
                found = _TOKEN_VALUE.search(text)
                if found is not None:
                    return found.group(1)
            if 400 <= resp.status < 500:
                raise SessionGone(f"{resp.status} {text[:300]}")
            raise aiohttp.ClientResponseError(
                resp.request_info, (), status=resp.status, message=text[:300]
            )

    async def _reconnect(self) -> aiohttp.ClientWebSocketResponse | None:
        """CreateDataChannel + a new websocket, retried with a capped back-off until the
        resume window passes; None if the session is over or the window passed."""
        window = float(self.task.get("resumeWindow") or RESUME_WINDOW)
        deadline = time.monotonic() + window
        first, cap = RECONNECT_DELAYS
        delay = first
        while time.monotonic() < deadline:
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = min(cap, delay * 2)
            try:
                token = await self._create_data_channel()
                return await asyncio.wait_for(self._open(token), 15)
            except SessionGone as exc:
                log.warning("session %s: cannot resume: %s", self.session_id, exc)
                return None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.info("session %s: reconnecting failed: %s", self.session_id, exc)
        log.warning("session %s: not reconnected within %gs", self.session_id, window)
        return None

    # -- the session ------------------------------------------------------------------

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            self.http = http
            await self.endpoint.attach(await self._open(self.task["token"]))
            writer = asyncio.create_task(self._writer())
            reader = asyncio.create_task(  # acks must flow while draining
                self.endpoint.serve(self._frames, self._received, self._dropped)
            )
            resender = asyncio.create_task(self.endpoint.resend_loop())
            try:
                if await self._start():
                    await self.finished.wait()
                if self.exit_code is not None or self.failure is not None:
                    await self._drain()
            finally:
                for task in (reader, resender, *self._tasks):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                if self.plugin is not None:
                    self.plugin.close()
                    self.record("end", self.exit_code)
                if self.log_stream is not None:
                    self.log_stream.close()  # before Terminating: the broker then has it all
                ws = self.ws
                if ws is not None and not ws.closed:
                    if self.failure is not None:
                        self.outbox.put_nowait(self._control_frame("Failed", self.failure))
                    self.outbox.put_nowait(
                        self._control_frame("Terminating", exit_code=self.exit_code)
                    )
                self.outbox.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 5)
                if not writer.done():
                    writer.cancel()
                if ws is not None and not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.close()
                if self.notify is not None and self.exit_code is not None:
                    with contextlib.suppress(Exception):
                        await self.notify(
                            {
                                "type": "session_exit",
                                "sessionId": self.session_id,
                                "exitCode": self.exit_code,
                            }
                        )

    def _resolve_document(self) -> dict[str, Any]:
        """The document with ``{{ parameters }}`` filled in, checked again on the node (AWS's
        agent re-validates allowedPattern with its own regexp engine)."""
        doc = self.task.get("documentContent") or {}
        if not isinstance(doc, dict):
            raise PluginError("The session document is not an object.")
        if str(doc.get("schemaVersion", "1.0")) != "1.0":
            raise PluginError(
                f"Document with schema version {doc.get('schemaVersion')} is not supported by "
                "this version of ssm agent, please update to latest version"
            )
        try:
            params = validate_parameters(doc, self.task.get("parameters") or {})
            self.parameters = params
        except DocumentError as exc:
            raise PluginError(str(exc)) from None
        resolved = dict(doc)
        # The broker sends the preferences already resolved (it had to, to inherit
        # SSM-SessionManagerRunShell's): filling them in twice would re-expand a value that
        # happens to contain "{{ }}".
        if "inputs" in doc and not self.task.get("inputsResolved"):
            resolved["inputs"] = interpolate_inputs(doc["inputs"], params)
        if "properties" in doc:
            session_type = str(doc.get("sessionType", "Standard_Stream"))
            resolved["properties"] = interpolate_properties(session_type, doc["properties"], params)
        return resolved

    async def _start(self) -> bool:
        """Resolve the document, pick the plugin, handshake if needed, start the plugin."""
        try:
            self.document = self._resolve_document()
            session_type = str(self.document.get("sessionType", "Standard_Stream"))
            self._start_log(session_type)
            factory = PLUGINS.get(session_type)
            if factory is None:
                raise PluginError(f"Session type {session_type} is not supported by this agent.")
            self.plugin = factory(self)
            kms = self._kms_parameters(session_type)
            if requires_handshake(session_type, kms is not None):
                self.handshake = AgentHandshake(
                    session_type, self.plugin.handshake_properties(), kms
                )
                now = time.time()
                self.outbox.put_nowait(
                    self.stream.send(
                        PayloadType.HANDSHAKE_REQUEST, self.handshake.request(now), now
                    )
                )
                waiter = asyncio.create_task(self.handshake_done.wait())
                stopper = asyncio.create_task(self.finished.wait())
                await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if not self.handshake_done.is_set():
                    return False
            await self.plugin.start()
            return True
        except PluginError as exc:
            self.fail(str(exc))
            return False

    def _start_log(self, session_type: str) -> None:
        """Stream the session log to the broker if its ``start_session`` asks for it."""
        wanted = self.task.get("sessionLog")
        if not isinstance(wanted, dict):
            return
        self.log_stream = LogStreamer(
            self.session_id,
            self.outbox.put_nowait,
            session_type=session_type,
            record_input=wanted.get("input") is True,
            output_ref=self._output_ref,
        )
        self.recorders.append(self.log_stream)

    def _kms_parameters(self, session_type: str) -> KmsParameters | None:
        """KMS encryption parameters when the document names a key (never for Port)."""
        inputs = self.document.get("inputs")
        key_id = inputs.get("kmsKeyId") if isinstance(inputs, dict) else None
        if not isinstance(key_id, str) or not key_id.strip() or session_type == SessionType.PORT:
            return None
        return KmsParameters(key_id.strip(), handshake_challenge())

    async def _drain(self) -> None:
        """Wait (bounded) until the client acknowledged everything we sent. Time spent
        reconnecting the data channel does not count: the output waits for the resume."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.stream.unacked_count and time.monotonic() < deadline:
            if self.closed_by_broker or self.gave_up:
                return
            if self.ws is None or self.ws.closed:
                deadline = time.monotonic() + DRAIN_TIMEOUT
            else:
                with contextlib.suppress(GaveUp):
                    await self.endpoint.resend_due()
            await asyncio.sleep(0.05)

    async def terminate(self) -> None:
        self.finished.set()


_TOKEN_VALUE = re.compile(r"<TokenValue>([^<]{1,4096})</TokenValue>")


class SessionGone(Exception):
    """The broker no longer has the session (CreateDataChannel answered 4xx)."""


PLUGINS: dict[str, Callable[[AgentSession], SessionPlugin]] = {
    "Standard_Stream": ShellPlugin,
    "InteractiveCommands": InteractiveCommandsPlugin,
    "NonInteractiveCommands": NonInteractiveCommandsPlugin,
    "Port": PortPlugin,
}
"""Session type → plugin class."""


async def run_node(
    reg: Registration,
    settings: SessionSettings,
    connected: asyncio.Event | None = None,
    command_user: str | None = None,
) -> None:
    """The agent's main loop: the control channel, and the sessions and commands it asks
    for (Run Command as ``command_user``, default the agent's own user)."""
    from hatchway.agent.runcommand import CommandRunner

    channel = ControlChannel(reg)
    manager = SessionManager(reg, settings, channel.send)
    commands = CommandRunner(channel.send, command_user)

    async def on_message(message: dict[str, Any]) -> None:
        if not await commands.handle(message):
            await manager.handle(message)

    channel.on_message = on_message
    channel.hello_extra = lambda: {
        "sessions": sorted(manager.sessions),
        "commands": sorted(commands.running),
    }
    if connected is not None:
        channel.connected = connected
    await channel.run()


SEEN_LIMIT = 100_000


class SessionManager:
    """The node's sessions, driven by control-channel messages."""

    def __init__(
        self, reg: Registration, settings: SessionSettings, notify: Notify | None = None
    ) -> None:
        self.reg = reg
        self.settings = settings
        self.notify = notify
        self.sessions: dict[str, AgentSession] = {}
        self.seen: dict[str, None] = {}
        """Ids of the sessions this agent started (the latest SEEN_LIMIT): never again."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "start_session":
            sid = str(message.get("sessionId"))
            if sid in self.sessions or sid in self.seen:
                # A broker that lost track of it must not get a second process under its id.
                log.warning("session %s: refused to start it again", sid)
                return
            self.seen[sid] = None
            while len(self.seen) > SEEN_LIMIT:
                del self.seen[next(iter(self.seen))]
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
