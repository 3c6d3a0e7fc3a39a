"""The session log sink: recorded events, batched and streamed to the broker as they happen.

Plugins report what a session does through ``SessionIO.record`` (output, input, resizes, port
connections, the exit code). :class:`LogStreamer` collects those events and sends them to the
broker as ``agent_session_log`` frames on the session's data channel at most ``FLUSH_INTERVAL``
seconds after they happened, or at once when ``FLUSH_BYTES`` have piled up. Nothing is kept on
the node: whatever was sent is the broker's before the session ends, so killing the agent (or
the session's user) cannot take it back. The broker decides what is recorded: it asks for the
log (and for keystrokes) in the ``start_session`` message.

Cost on the output path: one ``time.time()`` and one list append per event. Output the broker
can read as it relays it (everything but KMS-encrypted output) is not sent twice: the batch
names the output frames that carried it. Otherwise a batch costs one small JSON header, a join
and a frame digest (no base64, no copies per event).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from hatchway.protocol import Frame, encode
from hatchway.protocol.payloads import ACK_FLAGS
from hatchway.protocol.sessionlog import (
    AGENT_SESSION_LOG,
    BODY_KINDS,
    OutputRef,
    build_session_log,
)

log = logging.getLogger("hatchway.agent.recorder")

FLUSH_INTERVAL = 0.1  # seconds an event may wait on the node
FLUSH_BYTES = 32 * 1024  # bytes of output/input that send a batch at once
KINDS = frozenset({"o", "i", "r", "conn", "end"})
_PORT_KINDS = frozenset({"conn", "end"})  # forwarded bytes are not a transcript


class LogStreamer:
    """A ``recorders`` sink of :class:`~hatchway.agent.session.AgentSession`.

    ``send`` queues one encoded frame for the data channel (it must not block). ``record_input``
    adds the keystrokes (``"i"``): off unless the broker asks, since input typed with echo off
    (passwords) would otherwise be stored; what the user sees echoed is in the output.
    ``output_ref`` names the output frames that already carried an ``"o"`` event's bytes (or
    None): the batch then refers to them instead of repeating the bytes.
    """

    def __init__(
        self,
        session_id: str,
        send: Callable[[bytes], None],
        *,
        session_type: str = "Standard_Stream",
        record_input: bool = False,
        start: float | None = None,
        output_ref: Callable[[bytes], OutputRef | None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.send = send
        self.start = time.time() if start is None else start
        self.kinds = _PORT_KINDS if session_type == "Port" else KINDS
        if not record_input:
            self.kinds = self.kinds - {"i"}
        self.output_ref = output_ref
        self.seq = 0
        self.closed = False
        self._events: list[tuple[float, str, Any]] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, kind: str, data: Any) -> None:
        if kind not in self.kinds or self.closed:
            return
        if kind in BODY_KINDS:
            if not data:
                return
            self._size += len(data)  # referenced output too: references then go out promptly
            if kind == "o" and self.output_ref is not None:
                data = self.output_ref(data) or data
        self._events.append((time.time() - self.start, kind, data))
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._due)

    def _due(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Send what is pending as one batch (nothing if nothing is)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._events:
            return
        events, self._events, self._size = self._events, [], 0
        payload = build_session_log(self.session_id, self.seq, self.start, events)
        self.seq += 1
        frame = Frame(
            AGENT_SESSION_LOG, 0, 0, payload, uuid.uuid4(), int(time.time() * 1000), ACK_FLAGS
        )
        self.send(encode(frame))

    def close(self) -> None:
        """Send the rest; later events are ignored."""
        if not self.closed:
            self.flush()
            self.closed = True
