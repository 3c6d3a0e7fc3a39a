"""Session-type handlers: what runs once the session type is known.

The session type comes from the handshake's SessionType action, or is ``Standard_Stream``
when output arrives without a handshake (docs/reference/data-channel.md#handshake, the plugin's
``ProcessFirstMessage``).
:data:`hatchway.client.session.HANDLERS` maps each type to a :class:`SessionHandler`
subclass.
"""

from __future__ import annotations

from typing import Any, Protocol

from hatchway.client.terminal import TerminalIO
from hatchway.protocol import ClientHandshake

__all__ = ["SessionContext", "SessionHandler"]


class SessionContext(Protocol):
    """What a handler may ask of the session that runs it."""

    session_id: str
    io: TerminalIO
    handshake: ClientHandshake
    """The handshake (Port reads the agent's version from it)."""

    async def send(self, payload_type: int, payload: bytes) -> None:
        """Send a stream message (waits while the unacked buffer is full)."""
        ...

    async def send_data(self, payload: bytes) -> None:
        """Send port data as Output, byte for byte, in large frames (waits for the window)."""
        ...

    def resume_input(self) -> None:
        """:meth:`SessionHandler.accepting` turned True: deliver the output held back."""
        ...

    def input_ended(self) -> None:
        """Local input reached its end: drain, then end the session (TerminateSession)."""
        ...

    def end_locally(self, code: int = 0) -> None:
        """End the session now from this side (``~.``): TerminateSession, then exit."""
        ...

    def add_signal_handler(self, signum: int, callback: Any) -> None: ...

    def remove_signal_handler(self, signum: int) -> None: ...


class SessionHandler:
    """Base class: one instance per session, created when the session type is known."""

    def __init__(self, ctx: SessionContext, session_type: str, properties: Any = None) -> None:
        self.ctx = ctx
        self.session_type = session_type
        self.properties = properties

    async def start(self) -> None:
        """Begin (terminal setup, initial messages, input pump)."""

    async def on_payload(self, payload_type: int, payload: bytes) -> None:
        """A stream payload from the agent (handshake payloads never get here)."""

    def accepting(self) -> bool:
        """False while the handler cannot take more Output (a slow local reader): the agent's
        frames then wait unacknowledged until the handler calls ``ctx.resume_input()``."""
        return True

    def signal_bytes(self, signum: int) -> bytes | None:
        """Bytes to send for a local SIGINT/SIGQUIT/SIGTSTP, or None to end the session."""
        return None

    def exit_status(self) -> int | None:
        """The process exit status when the channel closes normally (None: 0)."""
        return None

    def on_reported_exit_code(self, code: int) -> None:
        """The exit code Hatchway's broker put in ``channel_closed`` (``ExitCode``)."""

    async def stop(self) -> None:
        """Undo :meth:`start` (restore the terminal); called exactly once on every exit."""
