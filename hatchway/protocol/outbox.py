"""An ordered queue of payloads waiting for the send window, sans I/O.

Port sessions produce many small pieces (smux frames of several connections, raw socket
reads) faster than a window may take them. :class:`Outbox` keeps them in order and merges
consecutive pieces of the same mergeable payload type, so they leave in frames of up to
``frame_size`` bytes instead of one frame per piece. Pieces are kept by reference (pass
immutable data): one piece that fits a frame leaves as it came, without a copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from hatchway.protocol.frames import PayloadType

__all__ = ["DEFAULT_FRAME_SIZE", "Outbox"]

DEFAULT_FRAME_SIZE = 256 * 1024

Piece = bytes | memoryview


@dataclass(slots=True)
class _Item:
    payload_type: int
    pieces: deque[Piece] = field(default_factory=deque)
    size: int = 0


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
        self._items: deque[_Item] = deque()
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, payload_type: int, data: bytes | memoryview) -> None:
        """Queue ``data`` (nothing for empty data). ``data`` must not change afterwards."""
        n = len(data)
        if not n:
            return
        items = self._items
        if (
            not items
            or payload_type not in self.mergeable
            or items[-1].payload_type != payload_type
        ):
            items.append(_Item(payload_type))
        item = items[-1]
        item.pieces.append(data)
        item.size += n
        self.size += n

    def take(self) -> tuple[int, bytes]:
        """The next payload: at most ``frame_size`` bytes of a mergeable type, else a whole
        item. Raises :class:`IndexError` when empty."""
        item = self._items[0]
        pieces = item.pieces
        if item.payload_type not in self.mergeable or item.size <= self.frame_size:
            self._items.popleft()
            self.size -= item.size
            if len(pieces) == 1 and isinstance(pieces[0], bytes):
                return item.payload_type, pieces[0]
            return item.payload_type, b"".join(pieces)
        room = self.frame_size
        out: list[Piece] = []
        while room:
            piece = pieces[0]
            if len(piece) <= room:
                out.append(pieces.popleft())
                room -= len(piece)
            else:
                view = memoryview(piece)
                out.append(view[:room])
                pieces[0] = view[room:]
                room = 0
        item.size -= self.frame_size
        self.size -= self.frame_size
        return item.payload_type, b"".join(out)
