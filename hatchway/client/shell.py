"""Shell sessions (``Standard_Stream``, ``InteractiveCommands``, ``NonInteractiveCommands``).

On the wire (docs/reference/data-channel.md#shell-sessions): keystrokes go out as Output
(PayloadType 1) in chunks of at most 1024 bytes, the terminal size as Size (PayloadType 3) at
start and on every SIGWINCH; Output from the agent goes to stdout byte for byte, StdErr (11) to
stderr, ExitCode (12) is recorded. With a TTY
the terminal is in raw mode, so Ctrl-C/Ctrl-Z/Ctrl-\\/Ctrl-D are ordinary bytes, and ``~.``
after Enter ends a hung session. Without a TTY, stdin is a byte stream; its end drains the
session and terminates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from hatchway.client.handler import SessionContext, SessionHandler
from hatchway.client.terminal import ESCAPE_HELP, Escape, EscapeFilter, StdinReader, window_size
from hatchway.protocol import PayloadType, build_size, parse_exit_code

__all__ = ["CONTROL_BYTES", "STDIN_CHUNK", "ShellHandler"]

log = logging.getLogger("hatchway.client")

STDIN_CHUNK = 1024
"""Keystroke payloads are at most this long (the plugin's StdinBufferLimit)."""

CONTROL_BYTES = {
    signal.SIGINT: b"\x03",
    signal.SIGQUIT: b"\x1c",
    signal.SIGTSTP: b"\x1a",
}
"""Signals the plugin catches (when not in raw mode) and forwards as bytes
(docs/reference/data-channel.md#shell-sessions)."""


class ShellHandler(SessionHandler):
    """Terminal ↔ shell."""

    def __init__(self, ctx: SessionContext, session_type: str, properties: Any = None) -> None:
        super().__init__(ctx, session_type, properties)
        self.escapes = EscapeFilter(enabled=ctx.io.interactive)
        self.size: tuple[int, int] | None = None
        self.exit_code: int | None = None
        self._pump: asyncio.Task[None] | None = None
        self._resize: asyncio.Task[None] | None = None
        self._winch = False

    async def start(self) -> None:
        io = self.ctx.io
        if io.interactive:
            io.raw.enter()
        await self.send_size()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            self.ctx.add_signal_handler(signal.SIGWINCH, self._on_winch)
            self._winch = True
        self._pump = asyncio.create_task(self._pump_stdin(), name="stdin")

    def _on_winch(self) -> None:
        if self._resize is None or self._resize.done():
            self._resize = asyncio.create_task(self.send_size(), name="resize")

    async def send_size(self) -> None:
        """Send Size if the terminal size changed (nothing for a 0×0 terminal)."""
        size = window_size(self.ctx.io.size_fds)
        if size is None or size == self.size:
            return
        self.size = size
        await self.ctx.send(PayloadType.SIZE, build_size(*size))

    async def on_payload(self, payload_type: int, payload: bytes) -> None:
        if payload_type == PayloadType.OUTPUT:
            self.ctx.io.write(payload)
        elif payload_type == PayloadType.STDERR:
            self.ctx.io.write_err(payload)
        elif payload_type == PayloadType.EXIT_CODE:
            with contextlib.suppress(ValueError):
                self.exit_code = parse_exit_code(payload)
        else:
            log.debug("ignoring payload type %s", payload_type)

    def signal_bytes(self, signum: int) -> bytes | None:
        return CONTROL_BYTES.get(signal.Signals(signum))

    def exit_status(self) -> int | None:
        code = self.exit_code
        return code if code is not None and 0 <= code <= 255 else None

    async def _pump_stdin(self) -> None:
        reader = StdinReader(self.ctx.io.stdin_fd, STDIN_CHUNK)
        while True:
            data = await reader.read_or_end()
            if not data:
                self.ctx.input_ended()
                return
            data, action = self.escapes.feed(data)
            if data:
                await self.ctx.send(PayloadType.OUTPUT, data)
            if action is Escape.HELP:
                self.ctx.io.write(ESCAPE_HELP)
            elif action is Escape.TERMINATE:
                self.ctx.end_locally(0)
                return

    async def stop(self) -> None:
        for task in (self._pump, self._resize):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._winch:
            self.ctx.remove_signal_handler(signal.SIGWINCH)
            self._winch = False
        self.ctx.io.raw.restore()
