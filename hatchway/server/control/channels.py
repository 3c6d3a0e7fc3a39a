"""Where a node's channel lives: one interface the operations use, whatever process holds it.

A node's control channel and a session's data-channel relay are websockets held by one
process of one broker. What an operation needs done to them (close a session's data channel
and tell its node to stop, close a node's control channel, hand a node a message such as
``start_session``) goes through ``hatchway.server.runtime.channels.Channels``; the
operations never ask where they run. The cases:

* :class:`LocalChannels`: this process holds the channels (a broker without ``--workers``, or
  the primary of one with workers): it acts on ``state.nodes`` and ``state.relays``.
* :class:`WorkerChannels`: an API worker (``--workers``): the primary holds the channels;
  the worker asks it over their socket (``hatchway.server.process.workers.run_effect``) and
  waits.
* ``hatchway.server.process.cluster.ClusterChannels``: several brokers on one PostgreSQL
  database: what this broker holds is acted on here, and the other brokers are told through
  PostgreSQL ``NOTIFY`` to act on what they hold (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from hatchway.server.control.nodes import close_held_channel
from hatchway.server.runtime.channels import Channels, Link

if TYPE_CHECKING:
    from hatchway.server.runtime.state import ServerState

log = logging.getLogger("hatchway.server.control.channels")


class LocalChannels:
    """The channels held by this very process (``state.nodes``, ``state.relays``)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def node_reachable(self, instance_id: str) -> bool:
        return instance_id in self.state.nodes

    def orphaned(self, session_id: str) -> bool:
        return True  # one broker: what a previous run held is nobody's now

    async def close_data_channel(
        self, session_id: str, target: str, output: str = "", *, started: bool = True
    ) -> None:
        state = self.state
        relay = state.relays.pop(session_id, None)
        if relay is not None:
            node_side = relay.agent is not None
            await relay.close(output)
            if not node_side:  # else the node's side finishes the recording when it goes
                await state.recordings.finish(session_id)
        elif not started:
            return
        node = state.nodes.get(target)
        if node is not None:
            # If the node's channel is going away, its session ends with it.
            with contextlib.suppress(ConnectionError, RuntimeError):
                await node.send({"type": "terminate_session", "sessionId": session_id})

    async def close_channel(self, instance_id: str) -> None:
        await close_held_channel(self.state, instance_id)

    async def send_to_node(self, instance_id: str, message: dict[str, Any]) -> bool:
        node = self.state.nodes.get(instance_id)
        if node is None:
            return False
        await node.send(message)
        return True


class WorkerChannels:
    """An API worker's view: the primary process holds every channel."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def close_data_channel(
        self, session_id: str, target: str, output: str = "", *, started: bool = True
    ) -> None:
        if started:  # else there is nothing live to close: no need to ask
            await self.link.call("close_data_channel", session_id, target, output, started)

    async def close_channel(self, instance_id: str) -> None:
        await self.link.call("close_channel", instance_id)

    def node_reachable(self, instance_id: str) -> bool:
        """Data channels are served by the primary, never a worker: asked there."""
        return True

    def orphaned(self, session_id: str) -> bool:
        return False  # the primary restores relays, never a worker

    async def send_to_node(self, instance_id: str, message: dict[str, Any]) -> bool:
        try:
            await self.link.call("send_to_node", instance_id, message)
        except RuntimeError:
            return False
        return True


async def run_local(channels: Channels, op: str, args: list[Any]) -> None:
    """Do ``op`` (one of the :class:`Channels` methods, by name, with its positional
    arguments as a message carries them) with ``channels``."""
    if op == "close_data_channel":
        session_id, target, output, started = args
        await channels.close_data_channel(session_id, target, output, started=bool(started))
    elif op == "close_channel":
        await channels.close_channel(str(args[0]))
    elif op == "send_to_node":
        if not await channels.send_to_node(str(args[0]), dict(args[1])):
            raise RuntimeError(f"{args[0]} has no control channel here")
    else:
        raise ValueError(f"unknown channel operation {op!r}")
