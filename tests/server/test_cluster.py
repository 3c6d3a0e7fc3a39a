"""Brokers on PostgreSQL as a cluster (hatchway.server.process.cluster): the duties' lease is
held by one broker at a time and taken over when its holder is SIGKILLed; operations never ask where
the channels live (hatchway.server.runtime.channels). The whole cluster behind HAProxy is
tests/faults/test_scale_out.py."""

from __future__ import annotations

import ast
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from harness import Broker, start_agent, start_broker, stop_broker, wait_ping

from hatchway.server.process.cluster import LEASE_TTL, TICK

OPS = Path(__file__).resolve().parents[2] / "hatchway" / "server" / "ops"


def test_operations_never_ask_where_the_channels_live() -> None:
    """No operation touches the live channels (``state.nodes``/``relays``) or the worker link
    itself: they go through ``state.channels``."""
    for path in sorted(OPS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("link", "nodes", "relays"):
                base = node.value
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                assert name != "state", f"{path.name}:{node.lineno} reads state.{node.attr}"


def duties_holder(db: str) -> tuple[str, float] | None:
    """(broker id, seconds left) of the live duties lease."""
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT holder, extract(epoch FROM expires - now()) FROM hw_leases "
            "WHERE name = 'duties' AND expires >= now()"
        ).fetchone()
    return None if row is None else (str(row[0]), float(row[1]))


@pytest.fixture
def two(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, list[Broker]]]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_lease")
        conn.execute("CREATE DATABASE hatchway_lease")
    db = postgres_url.rsplit("/", 1)[0] + "/hatchway_lease"
    # Heartbeats every 60 s: a node's row stays fresh for 125 s, so only the lease holder's
    # reconciliation can make a dead broker's node ConnectionLost within the test's bound.
    a = start_broker(tmp_path / "a", "--database-url", db, "--ping-interval", "60")
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(tmp_path / "a" / "master.key", tmp_path / "b" / "master.key")
    b = start_broker(tmp_path / "b", "--database-url", db, "--ping-interval", "60")
    brokers = [a, b]
    yield db, brokers
    for x in brokers:
        if x.proc.poll() is None:
            stop_broker(x)


def test_one_broker_holds_the_duties_and_another_takes_them_over(
    two: tuple[str, list[Broker]], tmp_path: Path
) -> None:
    db, brokers = two
    ids = {(b.data_dir / "broker-id").read_text().strip(): b for b in brokers}
    deadline = time.monotonic() + 30
    while duties_holder(db) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    held = duties_holder(db)
    assert held is not None and held[0] in ids
    assert held[1] <= LEASE_TTL + 0.5  # a lease, not a lock held for ever
    holder = ids[held[0]]
    other = next(b for b in brokers if b is not holder)
    (tmp_path / "node").mkdir()
    agent = start_agent(holder, tmp_path / "node" / "state")  # a node on the holder
    try:
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(10)
        killed = time.monotonic()
        deadline = killed + 60  # generous; the bound is LEASE_TTL + TICK (7 s)
        while time.monotonic() < deadline:
            now = duties_holder(db)
            if now is not None and now[0] != held[0]:
                break
            time.sleep(0.1)
        took = time.monotonic() - killed
        after = duties_holder(db)
        assert after is not None and ids[after[0]] is other
        print(f"duties taken over {took:.1f} s after SIGKILL (bound {LEASE_TTL + TICK:g} s)")
        assert "this broker runs the cluster's background duties" in other.log.read_text()
        # The node's channel died with its broker: it is ConnectionLost, not Online for ever
        # (its agent was pointed at the dead broker alone, so it cannot come back).
        agent.stop()
        assert wait_ping(other, agent.instance_id, "ConnectionLost", 60)  # < 125 s
    finally:
        agent.stop()
