"""Several brokers on one PostgreSQL database behaving as one service (docs/scale-out.md).

Each broker on PostgreSQL joins the cluster at start (:func:`join`):

* **Identity and heartbeat.** A broker's id is kept in ``<data-dir>/broker-id`` (made on its
  first start), so that a broker restarted on the same data directory recognizes what it held
  before. It renews its lease ``broker/<id>`` every :data:`TICK` seconds for :data:`LEASE_TTL`;
  a broker whose lease expired is dead.
* **Claims.** ``state.nodes`` and ``state.relays`` become :class:`ClaimedTable`: opening a
  node's control channel or a session's relay here records it in ``hw_claims``, so any broker
  knows where a channel lives (:mod:`hatchway.server.store.leases`).
* **Messages between brokers.** :class:`ClusterChannels` (the ``"on another broker"`` case of
  :class:`hatchway.server.runtime.channels.Channels`) acts on what this broker holds and
  sends the rest as ``NOTIFY hatchway_cluster``; every broker ``LISTEN``s on a thread of its own
  (:class:`Bus`) and acts on what it holds. Payloads over 7,000 bytes go through
  ``hw_messages``.
* **Duties once across the cluster.** The holder of the ``duties`` lease expires unused session
  tokens, marks the nodes of dead brokers ConnectionLost, reconciles the sessions a dead broker
  relayed (Disconnected, then Failed with the reason if neither end came back within
  ``--resume-window``), prunes ``hw_messages`` and runs the recordings' retention. A holder that
  dies loses the lease within :data:`LEASE_TTL` seconds and another broker takes it at its next
  tick.

Idle and maximum-duration timers run where the session's relay is (one broker per session,
claimed); the recordings of a session are flushed and delivered by its relay's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode

from hatchway.server.control.channels import LocalChannels, run_local
from hatchway.server.store import schema as t
from hatchway.server.store.leases import Leases

if TYPE_CHECKING:
    from hatchway.server.runtime.state import ServerState

log = logging.getLogger("hatchway.server.process.cluster")

CHANNEL = "hatchway_cluster"
#: Seconds between two renewals of this broker's leases (and runs of the duties).
TICK = 1.0
#: Seconds a lease lasts unrenewed: a dead holder's duties are taken over within
#: LEASE_TTL + TICK seconds.
LEASE_TTL = 6.0
DUTIES = "duties"
_NOTIFY_LIMIT = 7000  # bytes; PostgreSQL's payload limit is 8,000
MOVE_LIMIT = 3  # relays of one session lost to another broker within MOVE_PERIOD seconds …
MOVE_PERIOD = 60.0
SPLIT_MESSAGE = (  # … end it: its two ends keep reaching different brokers
    "The session ended because its client and its node reached different brokers; the load "
    "balancer must send /v1/data-channel/<session id> to one broker (docs/scale-out.md)."
)
DEAD_BROKER_MESSAGE = (
    "The session ended because the broker relaying it stopped and neither end reconnected "
    "within {window:g} seconds."
)


def broker_id_of(data_dir: Path) -> str:
    """This broker's id, kept in ``<data-dir>/broker-id`` across restarts."""
    path = data_dir / "broker-id"
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_hex(8)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


class ClaimedTable(dict[str, Any]):
    """``state.nodes`` or ``state.relays`` on a cluster: each entry is claimed in ``hw_claims``
    while it is here. A claim that cannot be written is logged, never raised: the channel
    works here whatever the database says."""

    def __init__(
        self,
        leases: Leases,
        kind: str,
        entries: dict[str, Any],
        on_claim: Callable[[str, str | None], None] | None = None,
    ) -> None:
        super().__init__(entries)
        self._leases = leases
        self._kind = kind
        self._on_claim = on_claim
        for key in entries:
            self._claim(key)

    def _claim(self, key: str) -> None:
        try:
            previous = self._leases.claimant(self._kind, key)
            self._leases.claim(self._kind, key)
        except Exception:
            log.exception("could not claim %s %s", self._kind, key)
            return
        if self._on_claim is not None and previous not in (None, self._leases.broker_id):
            self._on_claim(key, previous)

    def _unclaim(self, key: str) -> None:
        try:
            self._leases.unclaim(self._kind, key)
        except Exception:
            log.exception("could not drop the claim of %s %s", self._kind, key)

    def __setitem__(self, key: str, value: Any) -> None:
        fresh = key not in self
        super().__setitem__(key, value)
        if fresh:
            self._claim(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._unclaim(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            value = super().pop(key)
            self._unclaim(key)
            return value
        return super().pop(key, *default)

    def clear(self) -> None:
        for key in list(self):
            self._unclaim(key)
        super().clear()

    def forget(self, key: str) -> Any:
        """Drop the entry without touching the claim (another broker holds it now)."""
        return super().pop(key, None)


class Bus:
    """``LISTEN hatchway_cluster`` on a thread of its own; messages from other brokers are
    handed to ``deliver`` on the event loop."""

    def __init__(
        self, leases: Leases, loop: asyncio.AbstractEventLoop, deliver: Callable[[Any], None]
    ) -> None:
        self._leases = leases
        self._loop = loop
        self._deliver = deliver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hatchway-cluster", daemon=True)
        self._url = leases.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def publish(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every other broker (at most once; lost if none listens)."""
        from sqlalchemy import text

        body = json.dumps({**message, "from": self._leases.broker_id}, default=str)
        if len(body.encode()) > _NOTIFY_LIMIT:
            ref = self._leases.put_message(body)
            body = json.dumps({"ref": ref, "from": self._leases.broker_id})
        with self._leases.engine.begin() as conn:
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": body})

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in db.notifies(timeout=0.5, stop_after=1):
                            self._received(note.payload)
            except Exception as exc:
                self.listening.clear()
                if not self._stop.is_set():
                    log.warning("cluster listener: %s; reconnecting", exc)
                    self._stop.wait(1.0)

    def _received(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message.get("from") == self._leases.broker_id:
                return
            if "ref" in message:
                body = self._leases.get_message(int(message["ref"]))
                if body is None:
                    return
                message = json.loads(body)
        except Exception:
            log.exception("a cluster message could not be read")
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the broker stops
            self._loop.call_soon_threadsafe(self._deliver, message)


class ClusterChannels:
    """The channels of every broker: this broker's acted on here, the others' by message."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.local = LocalChannels(cluster.state)

    async def close_data_channel(
        self, session_id: str, target: str, output: str = "", *, started: bool = True
    ) -> None:
        await self.local.close_data_channel(session_id, target, output, started=started)
        if started:
            self.cluster.publish(
                {"op": "close_data_channel", "args": [session_id, target, output, started]}
            )

    async def close_channel(self, instance_id: str) -> None:
        if self.local.node_reachable(instance_id):
            await self.local.close_channel(instance_id)
        else:
            self.cluster.publish({"op": "close_channel", "args": [instance_id]})

    def node_reachable(self, instance_id: str) -> bool:
        if self.local.node_reachable(instance_id):
            return True
        return self.cluster.holder_alive("node", instance_id)

    async def send_to_node(self, instance_id: str, message: dict[str, Any]) -> bool:
        if await self.local.send_to_node(instance_id, message):
            return True
        if not self.cluster.holder_alive("node", instance_id):
            return False
        self.cluster.publish({"op": "send_to_node", "args": [instance_id, message]})
        return True

    def orphaned(self, session_id: str) -> bool:
        return self.cluster.orphaned(session_id)


class Cluster:
    """This broker's membership of the cluster: leases, claims, messages, duties."""

    def __init__(self, state: ServerState, broker_id: str) -> None:
        self.state = state
        self.leases = Leases(state.store.engine, broker_id)
        self.broker_id = broker_id
        self.leader = False
        self._task: asyncio.Task[None] | None = None
        self._bus: Bus | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._moves: dict[str, list[float]] = {}  # session id -> when its relay left here

    # -- membership -----------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        state = self.state
        self.leases.create_tables()
        self.leases.take(f"broker/{self.broker_id}", LEASE_TTL)
        state.nodes = ClaimedTable(self.leases, "node", state.nodes)
        state.relays = ClaimedTable(self.leases, "relay", state.relays, self._relay_moved_here)
        state.channels = ClusterChannels(self)
        state.leader = lambda: self.leader
        self._bus = Bus(self.leases, loop, self._deliver)
        self._bus.start()
        self._task = loop.create_task(self._run())
        log.info("joined the cluster as broker %s", self.broker_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bus is not None:
            await asyncio.to_thread(self._bus.stop)
        try:
            self.leases.unclaim_all()
            if self.leader:
                self.leases.release(DUTIES)
            self.leases.release(f"broker/{self.broker_id}")
        except Exception:
            log.exception("could not release this broker's leases")

    def publish(self, message: dict[str, Any]) -> None:
        if self._bus is None:
            return
        try:
            self._bus.publish(message)
        except Exception:
            log.exception("could not tell the other brokers (%s)", message.get("op"))

    def holder_alive(self, kind: str, key: str) -> bool:
        """Whether a live broker claims the channel."""
        try:
            holder = self.leases.claimant(kind, key)
            return holder is not None and holder in self.leases.live_brokers()
        except Exception:
            log.exception("could not read who holds %s %s", kind, key)
            return False

    def orphaned(self, session_id: str) -> bool:
        """No live broker but this one holds the session's relay: it may be restored here."""
        holder = self.leases.claimant("relay", session_id)
        if holder is None or holder == self.broker_id:
            return True
        return holder not in self.leases.live_brokers()

    # -- messages -------------------------------------------------------------------------

    def _relay_moved_here(self, session_id: str, previous: str | None) -> None:
        """One end of a session reached this broker while its relay was on ``previous``
        (the load balancer's hashing changed as brokers came and went): the relay lives here
        now, and ``previous`` lets its ends go so that they reconnect here."""
        log.info("session %s: relay taken over from broker %s", session_id, previous)
        self.publish({"op": "relay_moved", "session": session_id, "to": self.broker_id})

    def _deliver(self, message: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._act(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _act(self, message: dict[str, Any]) -> None:
        op = str(message.get("op"))
        try:
            if op == "relay_moved":
                await self._let_relay_go(str(message["session"]))
            elif op == "send_to_node":
                local = LocalChannels(self.state)
                await local.send_to_node(str(message["args"][0]), dict(message["args"][1]))
            else:
                await run_local(LocalChannels(self.state), op, list(message.get("args") or []))
        except Exception:
            log.exception("could not act on a message from broker %s", message.get("from"))

    async def _let_relay_go(self, session_id: str) -> None:
        table = self.state.relays
        relay = table.forget(session_id) if isinstance(table, ClaimedTable) else None
        if relay is None:
            return
        now = time.monotonic()
        recent = [t_ for t_ in self._moves.get(session_id, []) if now - t_ < MOVE_PERIOD]
        self._moves[session_id] = [*recent, now]
        if len(recent) + 1 >= MOVE_LIMIT:
            # The ends keep reaching different brokers: the load balancer does not send a
            # session's data channel to one broker. End it with the reason, not in a loop.
            from hatchway.server.ops.sessions import end_session

            self._moves.pop(session_id, None)
            log.error("session %s: %s", session_id, SPLIT_MESSAGE)
            await end_session(self.state, session_id, "Failed", SPLIT_MESSAGE)
            await relay.close(SPLIT_MESSAGE)
            await self.state.channels.close_data_channel(session_id, relay.target, SPLIT_MESSAGE)
            return
        # 1012 (Service Restart): both ends reconnect through the load balancer, to the
        # broker that holds the session now; the session is not ended.
        for ws in (relay.client, relay.agent):
            if ws is not None and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"relay moved")

    # -- duties ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.leases.take, f"broker/{self.broker_id}", LEASE_TTL)
                was = self.leader
                self.leader = await asyncio.to_thread(self.leases.take, DUTIES, LEASE_TTL)
                if self.leader and not was:
                    log.info("this broker runs the cluster's background duties")
                if self.leader:
                    await self.duties()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.leader = False
                log.exception("the cluster's duties failed; trying again")
            now = time.monotonic()
            for sid, times in list(self._moves.items()):
                if now - times[-1] >= MOVE_PERIOD:
                    del self._moves[sid]
            await asyncio.sleep(TICK)

    async def duties(self) -> None:
        from hatchway.server.ops.sessions import expire_unused

        state = self.state
        await asyncio.to_thread(expire_unused, state)
        dead = await asyncio.to_thread(self.leases.dead_brokers)
        for broker_id, since in dead.items():
            await self._reconcile(broker_id, since)
        await asyncio.to_thread(self.leases.prune_messages)

    async def _reconcile(self, broker_id: str, since: float) -> None:
        """A dead broker's nodes are ConnectionLost and its sessions wait, Disconnected, for
        their ends to reconnect elsewhere, ending Failed after ``--resume-window``."""
        from hatchway.server.ops.sessions import HISTORY, end_session

        state = self.state
        leases = self.leases
        for instance_id in await asyncio.to_thread(leases.claims_of, broker_id, "node"):
            row = state.store.get(t.instances, instance_id=instance_id)
            if row is not None and row["data"].get("connected"):
                data = dict(row["data"], connected=False)
                state.store.update(t.instances, {"instance_id": instance_id}, {"data": data})
                log.info("%s: ConnectionLost (its broker %s stopped)", instance_id, broker_id)
            leases.unclaim("node", instance_id, broker_id)
        window = state.config.resume_window
        waiting = 0
        for session_id in await asyncio.to_thread(leases.claims_of, broker_id, "relay"):
            row = state.store.get(t.sessions, session_id=session_id)
            if row is None or row["status"] in HISTORY:
                leases.unclaim("relay", session_id, broker_id)
            elif since >= window:
                reason = DEAD_BROKER_MESSAGE.format(window=window)
                log.info("session %s: %s", session_id, reason)
                await end_session(state, session_id, "Failed", reason)
                await state.channels.close_data_channel(session_id, row["target"], reason)
                leases.unclaim("relay", session_id, broker_id)
            else:
                waiting += 1
                if row["status"] == "Connected":
                    state.store.update(
                        t.sessions,
                        {"session_id": session_id},
                        {"status": "Disconnected"},
                        None,
                        t.sessions.c.status == "Connected",
                    )
        if not waiting:
            leases.forget_broker(broker_id)


def join(state: ServerState, loop: asyncio.AbstractEventLoop) -> Cluster | None:
    """Join the cluster when the store is PostgreSQL (None on SQLite: one broker)."""
    if state.store.dialect != "postgresql":
        return None
    cluster = Cluster(state, broker_id_of(state.config.data_dir))
    cluster.start(loop)
    return cluster
