"""A relay restored for a session a previous run (or another broker) had open keeps the
session's own start for its max duration: a restart or a failover never lengthens a session
(docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hatchway.server.app import open_state
from hatchway.server.base.crypto import SecretBox
from hatchway.server.relay.datachannel import restore_relay, session_age
from hatchway.server.runtime.state import ServerConfig, ServerState
from hatchway.server.store import Store
from hatchway.server.store import schema as t

SID = "alice-0123456789abcdef0"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ServerState]:
    config = ServerConfig(data_dir=tmp_path)
    store = Store(config.store_url)
    st = open_state(config, store, SecretBox.from_dir(tmp_path), [])
    yield st
    st.audit_log.close()
    store.close()


def _session(state: ServerState, started: datetime, max_minutes: int) -> None:
    state.store.insert(
        t.sessions,
        {
            "session_id": SID,
            "target": "i-0123456789abcdef0",
            "status": "Connected",
            "owner": "arn:aws:iam::123456789012:user/alice",
            "start_date": started,
            "end_date": None,
            "document_name": "SSM-SessionManagerRunShell",
            "data": {"inputs": {}, "max_session_duration": max_minutes},
        },
    )


def test_a_restored_relay_counts_the_max_duration_from_the_session_start(
    state: ServerState,
) -> None:
    now = [1000.0]
    state.clock = lambda: now[0]
    _session(state, datetime.now(UTC) - timedelta(minutes=50), max_minutes=60)
    row = state.store.session(SID)
    assert row is not None
    relay = restore_relay(state, row)
    assert relay.max_duration == 60 * 60
    age = now[0] - relay.started
    assert 50 * 60 - 5 <= age <= 50 * 60 + 60  # the session's 50 minutes, not 0


def test_session_age_reads_naive_times_as_utc_and_is_never_negative() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    row = {"start_date": datetime(2026, 12, 6, 11, 0)}
    assert session_age(row, now) == 3600  # type: ignore[arg-type]
    row = {"start_date": now + timedelta(seconds=30)}
    assert session_age(row, now) == 0  # type: ignore[arg-type]
