"""What both ends of a Port session agree on (docs/reference/data-channel.md#port-sessions): the
modes, the ``type`` that selects local forwarding, smux keepalive, and the sizes of their flow
control.

The agent (``hatchway.agent.port``) and the plugin (``hatchway.client.port``) each decide the
mode from the handshake's properties and the other end's version; these are the names and
numbers they share.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from hatchway.protocol.smux import HEADER_SIZE, MAX_FRAME

__all__ = [
    "FRAME_BYTES",
    "HIGH_WATER",
    "KEEPALIVE_INTERVAL",
    "LOCAL_PORT_FORWARDING",
    "LOW_WATER",
    "READ_BYTES",
    "PortMode",
]


class PortMode(StrEnum):
    MUX = "mux"  # one smux v1 session; a stream per TCP connection
    BASIC = "basic"  # one connection at a time, raw bytes
    STREAM = "stream"  # stdin/stdout of an ssh ProxyCommand, raw bytes


LOCAL_PORT_FORWARDING: Final = "LocalPortForwarding"
"""The Port session property ``type`` that asks for local forwarding (mux or basic)."""
KEEPALIVE_INTERVAL: Final = 10.0
"""Seconds between smux NOPs when the other end's version runs smux keepalive."""
FRAME_BYTES: Final = 256 * 1024
"""Largest Output payload either end sends (AWS's agent sends 1 KiB every millisecond)."""
READ_BYTES: Final = FRAME_BYTES - HEADER_SIZE * -(-FRAME_BYTES // MAX_FRAME)
"""One socket read: with the smux header of every 32 KiB it fills one frame exactly."""
HIGH_WATER: Final = 1024 * 1024
"""Bytes buffered toward one connection (or waiting for the send window) before the other
side is held back."""
LOW_WATER: Final = 256 * 1024
"""Below this the held-back side is read again."""
