"""The broker's state as Prometheus gauges, read at scrape time (``GET /metrics``).

Sessions by state and type, nodes by ping status, open channels, the recording backlog and the
background duties' lag. Apart from :mod:`hatchway.server.base.metrics` (the event counters every
layer increments) because it reads what the layers above the base own: the node channels
(ping status) and the session states of the operations."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hatchway.server.base import metrics
from hatchway.server.control.nodes import ping_status
from hatchway.server.ops.sessions import ACTIVE
from hatchway.server.store import schema as t


class StateCollector(Collector):
    """Gauges read at scrape time from the broker's state and store."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
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
        for duty, seconds in sorted(metrics.duty_lags().items()):
            lag.add_metric([duty], seconds)
        yield lag
