"""An ordered queue of payloads waiting for the send window, sans I/O.

Port sessions produce many small pieces (smux frames of several connections, raw socket
reads) faster than a window may take them. :class:`Outbox` keeps them in order and merges
consecutive pieces of the same mergeable payload type, so they leave in frames of up to
``frame_size`` bytes instead of one frame per piece.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from hatchway.protocol.frames import PayloadType

__all__ = ["DEFAULT_FRAME_SIZE", "Outbox"]

DEFAULT_FRAME_SIZE = 64 * 1024


class Outbox:
    """Payloads in order; ``size`` is the number of bytes held."""

    def __init__(
        self,
        frame_size: int = DEFAULT_FRAME_SIZE,
        mergeable: Collection[int] = (PayloadType.OUTPUT,),
    ) -> None:
        if frame_size < 1:
            raise ValueError(f"frame size must be positive, got {frame_size}")
        self.frame_size = frame_size
        self.mergeable = frozenset(int(t) for t in mergeable)
        self._items: deque[tuple[int, bytearray]] = deque()
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, payload_type: int, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` (nothing for empty data)."""
        if not data:
            return
        if payload_type in self.mergeable and self._items:
            last_type, last = self._items[-1]
            if last_type == payload_type:
                last += data
                self.size += len(data)
                return
        self._items.append((payload_type, bytearray(data)))
        self.size += len(data)

    def take(self) -> tuple[int, bytes]:
        """The next payload: at most ``frame_size`` bytes of a mergeable type, else a whole
        item. Raises :class:`IndexError` when empty."""
        payload_type, buf = self._items[0]
        if payload_type not in self.mergeable or len(buf) <= self.frame_size:
            self._items.popleft()
            self.size -= len(buf)
            return payload_type, bytes(buf)
        piece = bytes(buf[: self.frame_size])
        del buf[: self.frame_size]
        self.size -= len(piece)
        return payload_type, piece
