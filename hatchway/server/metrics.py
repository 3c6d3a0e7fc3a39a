"""Prometheus metrics: ``GET /metrics`` in Prometheus' text format (prometheus_client).

Two kinds:

* **Events**, counted where they happen (:func:`api_call`, :func:`authorization`,
  :func:`relayed`, :func:`store_commit`): API calls by service, operation and HTTP status with
  a latency histogram, authorization decisions by result, relay bytes and frames by direction,
  store commit latency.
* **State**, computed at scrape time by :class:`StateCollector` in the process that serves
  ``/metrics`` (the primary, which holds the channels and background duties): sessions by state
  and type, nodes by ping status, the recording backlog, background duties' lag.

With ``--workers N`` the API calls are served by other processes: :func:`multiprocess` puts
every process's event metrics in files under ``DATA_DIR/metrics`` (prometheus_client's
multiprocess mode) and the scrape sums them (docs/observability.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class _Events:
    """The event metrics of this process (made once the value class is chosen)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.api_calls = Counter(
            "hatchway_api_calls",
            "API calls answered, by service, operation and HTTP status.",
            ["service", "operation", "status"],
            registry=r,
        )
        self.api_latency = Histogram(
            "hatchway_api_call_duration_seconds",
            "Time to answer an API call, by service and operation.",
            ["service", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.api_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        """(service, operation, status) → its counter and histogram children (bounded by the
        models' operations and the statuses answered)."""
        self.authorizations = Counter(
            "hatchway_authorization_decisions",
            "IAM authorization decisions taken by API calls, by result (allowed/denied).",
            ["result"],
            registry=r,
        )
        self.allowed = self.authorizations.labels("allowed")
        self.denied = self.authorizations.labels("denied")
        relay_bytes = Counter(
            "hatchway_relay_bytes",
            "Data-channel bytes relayed, by direction (to_node: from clients; to_client).",
            ["direction"],
            registry=r,
        )
        relay_frames = Counter(
            "hatchway_relay_frames",
            "Data-channel frames relayed, by direction (to_node: from clients; to_client).",
            ["direction"],
            registry=r,
        )
        self.relay = {
            d: (relay_bytes.labels(d), relay_frames.labels(d)) for d in ("to_node", "to_client")
        }
        self.commit = Histogram(
            "hatchway_store_commit_duration_seconds",
            "Time the store takes to commit a transaction (or a group of them on SQLite).",
            ["dialect"],
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )


_events: _Events | None = None
_multiprocess_dir: Path | None = None
_LAG: dict[str, float] = {}


def _get() -> _Events:
    global _events
    if _events is None:
        _events = _Events()
    return _events


def multiprocess(path: Path, *, clear: bool) -> None:
    """Keep this process's event metrics in ``path`` (prometheus_client's multiprocess mode),
    so that the scrape sums every process's. Call before any metric is touched; the primary
    clears what an earlier run left (``clear``)."""
    global _events, _multiprocess_dir
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if clear:
        for old in path.glob("*.db"):
            old.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _multiprocess_dir = path
    _events = None


def api_call(service: str, operation: str, status: int, seconds: float) -> None:
    m = _get()
    key = (service, operation, status)
    children = m.api_children.get(key)
    if children is None:
        children = m.api_children[key] = (
            m.api_calls.labels(service, operation, str(status)),
            m.api_latency.labels(service, operation),
        )
    children[0].inc()
    children[1].observe(seconds)


def authorization(allowed: bool) -> None:
    m = _get()
    (m.allowed if allowed else m.denied).inc()


def relayed(direction: str, nbytes: int) -> None:
    """One frame of ``nbytes`` relayed ``to_node`` or ``to_client``."""
    size, frames = _get().relay[direction]
    size.inc(nbytes)
    frames.inc()


def store_commit(dialect: str, seconds: float) -> None:
    _get().commit.labels(dialect).observe(seconds)


def duty_lag(duty: str, seconds: float) -> None:
    """How late a background duty woke up against its schedule, last time (primary only)."""
    _LAG[duty] = max(0.0, seconds)


class Ticker:
    """A periodic duty's sleep, with its lag: how much later than asked the loop woke it (a
    busy event loop shows here first)."""

    def __init__(self, duty: str, interval: float) -> None:
        self.duty = duty
        self.interval = interval
        _LAG.setdefault(duty, 0.0)  # the duty is listed from its start, before its first tick

    async def sleep(self) -> None:
        asked = time.monotonic() + self.interval
        await asyncio.sleep(self.interval)
        duty_lag(self.duty, time.monotonic() - asked)


class StateCollector(Collector):
    """Gauges read at scrape time from the broker's state and store."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        from hatchway.server.nodes import ping_status
        from hatchway.server.ops.sessions import ACTIVE
        from hatchway.server.store import schema as t

        state = self.state
        store = state.store
        sessions = GaugeMetricFamily(
            "hatchway_sessions",
            "Sessions not ended, by state and type (Standard_Stream, Port, InteractiveCommands, "
            "NonInteractiveCommands).",
            labels=["state", "type"],
        )
        tally: Tally[tuple[str, str]] = Tally()
        for row in store.sessions(t.sessions.c.status.in_(ACTIVE)):
            data = row["data"] if isinstance(row["data"], dict) else {}
            tally[(row["status"], str(data.get("session_type") or "Standard_Stream"))] += 1
        for (status, kind), n in sorted(tally.items()):
            sessions.add_metric([status, kind], n)
        yield sessions
        ended = GaugeMetricFamily(
            "hatchway_sessions_ended",
            "Ended sessions kept in the history, by state (Terminated, Failed).",
            labels=["state"],
        )
        for status in ("Terminated", "Failed"):
            ended.add_metric([status], store.count(t.sessions, status=status))
        yield ended
        nodes = GaugeMetricFamily(
            "hatchway_nodes",
            "Registered managed nodes, by ping status (Online, ConnectionLost, Inactive).",
            labels=["ping_status"],
        )
        pings: Tally[str] = Tally({"Online": 0, "ConnectionLost": 0, "Inactive": 0})
        for row in store.nodes():
            pings[ping_status(state, row)] += 1
        for status, n in sorted(pings.items()):
            nodes.add_metric([status], n)
        yield nodes
        channels = GaugeMetricFamily(
            "hatchway_channels_open",
            "Websocket channels open on this broker, by kind.",
            labels=["kind"],
        )
        channels.add_metric(["control"], len(state.nodes))
        channels.add_metric(["data"], len(state.relays))
        yield channels
        yield GaugeMetricFamily(
            "hatchway_recording_backlog_bytes",
            "Bytes of session output held in memory for recording batches not yet stored.",
            value=state.recordings.captured_total,
        )
        lag = GaugeMetricFamily(
            "hatchway_background_lag_seconds",
            "How late each background duty last woke up against its schedule.",
            labels=["duty"],
        )
        for duty, seconds in sorted(_LAG.items()):
            lag.add_metric([duty], seconds)
        yield lag


def exposition(state: Any) -> bytes:
    """The text a scrape of this broker gets."""
    registry = CollectorRegistry(auto_describe=False)
    if _multiprocess_dir is not None:
        MultiProcessCollector(registry, str(_multiprocess_dir))  # type: ignore[no-untyped-call]
    else:
        registry.register(_RegistryView(_get().registry))
    registry.register(StateCollector(state))
    return generate_latest(registry)


class _RegistryView(Collector):
    """This process's event metrics inside the scrape's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
