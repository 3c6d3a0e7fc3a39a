"""What the operations may ask of the live channels, wherever they are held (the interface;
its cases are in :mod:`hatchway.server.control.channels` and
:mod:`hatchway.server.process.cluster`)."""

from __future__ import annotations

from typing import Any, Protocol


class Link(Protocol):
    """An API worker's way to ask the primary to act (``workers.PrimaryLink``)."""

    async def call(self, op: str, *args: Any) -> None: ...


class Channels(Protocol):
    """What the operations may ask of the live channels."""

    async def close_data_channel(
        self, session_id: str, target: str, output: str = "", *, started: bool = True
    ) -> None:
        """channel_closed to both ends of the session's live data channel, and its node told
        to stop it. ``started=False``: no client ever connected, so no relay exists and the
        node was never asked to run the session (nothing to do)."""
        ...

    async def close_channel(self, instance_id: str) -> None:
        """Close the node's control channel (deregistered, its role deleted)."""
        ...

    def node_reachable(self, instance_id: str) -> bool:
        """Whether some process of some broker holds a control channel of the node now."""
        ...

    async def send_to_node(self, instance_id: str, message: dict[str, Any]) -> bool:
        """Hand ``message`` to the node over its control channel, wherever that is open.
        False: no broker holds a control channel of the node."""
        ...

    def orphaned(self, session_id: str) -> bool:
        """Whether no live process but this one holds the session's relay (so that a relay
        a previous run had open may be restored here)."""
        ...
