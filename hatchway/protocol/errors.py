"""Errors of the data-channel protocol core. All are :class:`ValueError` subclasses."""

from __future__ import annotations

__all__ = ["BufferFull", "FrameError", "GaveUp", "PayloadError", "ProtocolError"]


class ProtocolError(ValueError):
    """Base class of every error raised by :mod:`hatchway.protocol`."""


class FrameError(ProtocolError):
    """Bytes that are not a data-channel frame (truncated, bad header, garbage type)."""


class PayloadError(ProtocolError):
    """A frame payload (JSON, flag, exit code, …) that cannot be parsed."""


class BufferFull(ProtocolError):
    """:meth:`Stream.send` with the unacked buffer at its limit (apply back-pressure)."""


class GaveUp(ProtocolError):
    """The oldest unacked frame was resent ``attempts`` times without being acked."""

    def __init__(self, sequence_number: int, attempts: int) -> None:
        super().__init__(
            f"gave up on stream message {sequence_number} after {attempts} retransmissions"
        )
        self.sequence_number = sequence_number
        self.attempts = attempts
