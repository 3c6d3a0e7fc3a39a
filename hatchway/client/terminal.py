"""The local terminal: raw mode, window size, stdin reading and the ``~.`` escape.

Nothing here knows about the data channel; :mod:`hatchway.client.shell` wires it up.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import logging
import os
import sys
import termios
import tty
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, BinaryIO

__all__ = [
    "DEFAULT_SIZE",
    "ESCAPE_HELP",
    "Escape",
    "EscapeFilter",
    "RawMode",
    "StdinReader",
    "TerminalIO",
    "window_size",
]

DEFAULT_SIZE = (300, 100)
"""What the official plugin sends when the terminal size cannot be read (cols, rows)."""

ESCAPE_HELP = (
    b"\r\nSupported escape sequences:\r\n"
    b"  ~. - terminate the session\r\n"
    b"  ~~ - send the ~ character\r\n"
    b"  ~? - this help message\r\n"
    b"(Escapes are only recognized immediately after a newline.)\r\n"
)

log = logging.getLogger("hatchway.client")


@dataclass
class TerminalIO:
    """Where a session reads keystrokes and writes output.

    ``interactive`` (stdin is a TTY) turns on raw mode and the ``~`` escapes; otherwise
    stdin is read as a plain byte stream (pipes, files, tests).
    """

    stdin_fd: int
    stdout: BinaryIO
    stderr: BinaryIO
    interactive: bool = False
    size_fds: tuple[int, ...] = ()
    """Descriptors to read the window size from, first that works wins."""
    raw: RawMode = field(init=False)

    def __post_init__(self) -> None:
        self.raw = RawMode(self.stdin_fd)

    @classmethod
    def system(cls) -> TerminalIO:
        """The process's own stdin/stdout/stderr."""
        stdin_fd = sys.stdin.fileno() if sys.stdin is not None else os.open(os.devnull, os.O_RDONLY)
        interactive = os.isatty(stdin_fd)
        return cls(
            stdin_fd=stdin_fd,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr.buffer,
            interactive=interactive,
            size_fds=(sys.stdout.fileno(), stdin_fd),
        )

    def write(self, data: bytes) -> None:
        """Write to stdout, unbuffered (output is binary-safe: bytes as received)."""
        if data:
            self.stdout.write(data)
            self.stdout.flush()

    def write_err(self, data: bytes) -> None:
        if data:
            self.stderr.write(data)
            self.stderr.flush()

    def say(self, text: str) -> None:
        """A status line of our own (banner, exit message); only with the terminal restored."""
        self.write(text.encode())


def window_size(fds: tuple[int, ...]) -> tuple[int, int] | None:
    """The terminal size ``(cols, rows)``, :data:`DEFAULT_SIZE` if no descriptor is a
    terminal, ``None`` if the terminal reports 0×0 (the plugin then sends nothing)."""
    for fd in fds:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        if size.columns == 0 and size.lines == 0:
            return None
        return size.columns, size.lines
    return DEFAULT_SIZE


class RawMode:
    """Raw mode on a TTY, restored exactly once on every way out.

    :meth:`enter` saves the settings and registers an ``atexit`` restore; :meth:`restore`
    is idempotent. Raw mode turns off ISIG (Ctrl-C, Ctrl-Z, Ctrl-\\ arrive as bytes), ICANON
    and ECHO (the remote pty echoes), ICRNL (Enter is ``\\r``) and OPOST.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def enter(self) -> bool:
        """Switch to raw mode; False (and nothing done) if ``fd`` is not a terminal."""
        if self._saved is not None:
            return True
        try:
            saved = termios.tcgetattr(self.fd)
        except (termios.error, OSError):
            return False
        self._saved = saved
        atexit.register(self.restore)
        tty.setraw(self.fd, termios.TCSANOW)
        return True

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        atexit.unregister(self.restore)
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def __enter__(self) -> RawMode:
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


class Escape(Enum):
    """What :meth:`EscapeFilter.feed` asks the caller to do besides sending the bytes."""

    NONE = "none"
    TERMINATE = "terminate"
    """``~.``: end the session locally and call TerminateSession."""
    HELP = "help"
    """``~?``: show :data:`ESCAPE_HELP` locally."""


class EscapeFilter:
    """ssh-style escapes, recognized only right after a newline (and at the very start).

    ``~.`` terminates, ``~~`` sends one ``~``, ``~?`` shows help; ``~`` followed by anything
    else sends both bytes. A newline is ``\\r`` (Enter in raw mode) or ``\\n``. The state
    survives across reads, so ``\\r``, ``~`` and ``.`` may arrive in separate chunks.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.at_line_start = True
        self.escaped = False

    def feed(self, data: bytes) -> tuple[bytes, Escape]:
        """Filter one chunk of keystrokes: ``(bytes to send, action)``.

        On :attr:`Escape.TERMINATE` the bytes before ``~.`` are returned (send them first)
        and the rest of the chunk is dropped.
        """
        if not self.enabled:
            return data, Escape.NONE
        out = bytearray()
        action = Escape.NONE
        for b in data:
            if self.escaped:
                self.escaped = False
                if b == 0x2E:  # '.'
                    return bytes(out), Escape.TERMINATE
                if b == 0x7E:  # '~'
                    out.append(b)
                    self.at_line_start = False
                elif b == 0x3F:  # '?'
                    action = Escape.HELP
                    self.at_line_start = True
                else:
                    out += bytes((0x7E, b))
                    self.at_line_start = b in (0x0A, 0x0D)
            elif self.at_line_start and b == 0x7E:
                self.escaped = True
            else:
                out.append(b)
                self.at_line_start = b in (0x0A, 0x0D)
        return bytes(out), action


class StdinReader:
    """Reads stdin without blocking the event loop and without making it non-blocking.

    Pipes, TTYs and sockets are watched with ``loop.add_reader`` and read with one
    ``os.read`` when readable (setting O_NONBLOCK on a TTY would also affect stdout, which
    shares the open file). Regular files cannot be polled and never block: they are read
    directly. ``read`` returns ``b""`` at end of input (also on EIO: the terminal hung up).
    """

    def __init__(self, fd: int, size: int = 1024) -> None:
        self.fd = fd
        self.size = size
        self._pollable: bool | None = None

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._pollable is False:
            await asyncio.sleep(0)
            return self._read_now()
        fut: asyncio.Future[bytes] = loop.create_future()

        def ready() -> None:
            loop.remove_reader(self.fd)
            if fut.done():
                return
            try:
                fut.set_result(self._read_now())
            except OSError as exc:
                fut.set_exception(exc)

        try:
            loop.add_reader(self.fd, ready)
        except (PermissionError, ValueError, OSError):
            self._pollable = False
            return self._read_now()
        self._pollable = True
        try:
            return await fut
        finally:
            loop.remove_reader(self.fd)

    async def read_or_end(self) -> bytes:
        """:meth:`read`, with a read error (logged) taken as the end of input."""
        try:
            return await self.read()
        except OSError as exc:
            log.warning("reading stdin: %s", exc)
            return b""

    def _read_now(self) -> bytes:
        try:
            return os.read(self.fd, self.size)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise
