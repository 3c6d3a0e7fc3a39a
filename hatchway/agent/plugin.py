"""What runs inside a session: the plugin contract between a session and its data channel.

:class:`~hatchway.agent.session.AgentSession` owns the data channel (reliable stream,
handshake, encryption); a :class:`SessionPlugin` owns what the session does (a shell on a PTY,
a command, port forwarding). The session picks the plugin class from ``PLUGINS`` by the
document's ``sessionType`` and talks to it through these few methods.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from hatchway.protocol import AgentHandshake, PayloadType

__all__ = ["PluginError", "SessionIO", "SessionPlugin"]


class PluginError(Exception):
    """The session cannot run; the message is shown to the user and the session ``Failed``."""


class SessionIO(Protocol):
    """What a plugin may ask of its session."""

    session_id: str
    task: dict[str, Any]
    """The broker's ``start_session`` message (document, parameters, run-as user, owner)."""
    document: dict[str, Any]
    """The session document with parameters interpolated."""
    parameters: dict[str, list[str]]
    """The session's parameters, validated, defaults applied (shell text reads them from the
    environment: :func:`hatchway.ssm.documents.parameter_environment`)."""
    settings: Any
    """The node's :class:`~hatchway.agent.session.SessionSettings`."""
    handshake: AgentHandshake | None
    """The handshake, when the session had one (its ``client_version`` picks Port modes)."""

    def output(self, data: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
        """Queue ``data`` to the client as ``output_stream_data`` (split, acked, retransmitted)."""
        ...

    @property
    def writable(self) -> bool:
        """False while too much output is unacknowledged: stop reading your source until
        :meth:`SessionPlugin.on_writable` is called."""
        ...

    def exited(self, code: int) -> None:
        """The plugin's work is over (shell exited, command ended): drain and end the session."""
        ...

    def resume_input(self) -> None:
        """:meth:`SessionPlugin.accepting` turned True: deliver the client data held back."""
        ...

    def record(self, kind: str, data: Any) -> None:
        """Hand an event to the session log (``"o"`` output bytes, ``"i"`` input bytes,
        ``"r"`` a resize ``(cols, rows)``, ``"conn"`` a port-connection record dict)."""
        ...


class SessionPlugin:
    """Base class: one instance per session."""

    session_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, io: SessionIO) -> None:
        self.io = io

    def handshake_properties(self) -> Any:
        """``Properties`` of the handshake's SessionType action (Port: the document's)."""
        return None

    async def start(self) -> None:
        """Begin; raise :class:`PluginError` to refuse the session with a message."""

    def on_input(self, payload_type: int, payload: bytes) -> None:
        """A stream payload from the client (already decrypted; handshake payloads excluded)."""

    def on_writable(self) -> None:
        """The client acknowledged enough output: resume reading the source."""

    def accepting(self) -> bool:
        """False while the plugin cannot take more client data (a slow destination): Output
        from the client then waits unacknowledged, so the client stops at its window, until
        the plugin calls :meth:`SessionIO.resume_input`."""
        return True

    def close(self) -> None:
        """Stop everything the plugin started (called exactly once, also after failures)."""
