"""The store on both engines: SQLite (embedded) and a real PostgreSQL started by the test."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from hatchway.server.store import Conflict, Store
from hatchway.server.store import schema as t
from hatchway.server.store.migrations import MIGRATIONS


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'h.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        s = Store(url)
        with s.transaction() as c:  # each test starts from empty tables
            for table in reversed(t.metadata.sorted_tables):
                if table is not t.meta:
                    c.execute(table.delete())
    yield s
    s.close()


def _session(sid: str, status: str = "Connecting", **data: object) -> dict[str, object]:
    return {
        "session_id": sid,
        "target": "i-0123456789abcdef0",
        "status": status,
        "owner": "arn:aws:iam::123456789012:user/alice",
        "start_date": datetime.now(UTC),
        "end_date": None,
        "document_name": "SSM-SessionManagerRunShell",
        "data": data,
    }


def test_migrations_are_recorded_and_idempotent(store: Store) -> None:
    assert store.schema_version == MIGRATIONS[-1][0]
    again = Store(store.url)
    assert again.schema_version == store.schema_version
    again.close()


def test_round_trip_with_json_data_and_aware_datetimes(store: Store) -> None:
    store.insert(t.sessions, _session("alice-0123456789abcdef0", reason="x", n=[1, 2]))
    row = store.get(t.sessions, session_id="alice-0123456789abcdef0")
    assert row is not None
    assert row["data"] == {"reason": "x", "n": [1, 2]}
    assert row["start_date"].tzinfo is not None
    assert store.count(t.sessions) == 1


def test_duplicate_key_is_a_conflict_and_changes_nothing(store: Store) -> None:
    store.insert(t.sessions, _session("s-1", reason="first"))
    with pytest.raises(Conflict):
        store.insert(t.sessions, _session("s-1", reason="second"))
    row = store.get(t.sessions, session_id="s-1")
    assert row is not None and row["data"]["reason"] == "first"


def test_transaction_is_all_or_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as c:
        store.insert(t.sessions, _session("s-2"), c)
        store.insert(
            t.session_tokens,
            {"token_hash": "h", "session_id": "s-2", "expires": datetime.now(UTC), "used": False},
            c,
        )
        raise RuntimeError("boom")
    assert store.get(t.sessions, session_id="s-2") is None
    assert store.get(t.session_tokens, token_hash="h") is None


def test_conflict_inside_a_transaction_keeps_the_rest(store: Store) -> None:
    store.insert(t.sessions, _session("s-3"))
    with store.transaction() as c:
        with pytest.raises(Conflict):
            store.insert(t.sessions, _session("s-3"), c)
        store.insert(t.sessions, _session("s-4"), c)
    assert store.get(t.sessions, session_id="s-4") is not None


def test_select_filter_order_limit_and_conditional_update(store: Store) -> None:
    now = datetime.now(UTC)
    for i in range(5):
        row = _session(f"s-{i}", "Connected" if i % 2 else "Terminated")
        row["start_date"] = now - timedelta(minutes=i)
        store.insert(t.sessions, row)
    active = store.select(
        t.sessions,
        t.sessions.c.status.in_(["Connected"]),
        order_by=[t.sessions.c.start_date.desc()],
    )
    assert [r["session_id"] for r in active] == ["s-1", "s-3"]
    assert len(store.select(t.sessions, limit=2, offset=1)) == 2
    assert (
        store.update(
            t.sessions,
            {"session_id": "s-1"},
            {"status": "Terminated"},
            None,
            t.sessions.c.status == "Connected",
        )
        == 1
    )
    assert (
        store.update(
            t.sessions,
            {"session_id": "s-1"},
            {"status": "Connected"},
            None,
            t.sessions.c.status == "Connected",
        )
        == 0
    )
    assert store.delete(t.sessions, session_id="s-0") == 1


def test_concurrent_conditional_updates_have_one_winner(store: Store) -> None:
    store.insert(
        t.activations,
        {
            "activation_id": "a" * 36,
            "code_hash": "x",
            "created": datetime.now(UTC),
            "expires": datetime.now(UTC) + timedelta(hours=1),
            "registrations": 0,
            "data": {},
        },
    )
    wins: list[int] = []

    def take() -> None:
        wins.append(
            store.update(
                t.activations,
                {"activation_id": "a" * 36},
                {"registrations": 1},
                None,
                t.activations.c.registrations == 0,
            )
        )

    threads = [threading.Thread(target=take) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(wins) == 1


def test_meta_settings(store: Store) -> None:
    assert store.meta_get("bootstrapped") is None
    store.meta_set("bootstrapped", "1")
    store.meta_set("bootstrapped", "2")
    assert store.meta_get("bootstrapped") == "2"
    with store.engine.connect() as c:
        assert c.execute(text("select 1")).scalar() == 1


def test_upgrade_from_version_1_adds_the_token_index(store: Store) -> None:
    with store.transaction() as c:
        c.execute(text("DROP INDEX hw_session_tokens_session"))
        c.execute(text("UPDATE hw_meta SET value = '1' WHERE key = 'schema_version'"))
    upgraded = Store(store.url)
    assert upgraded.schema_version == MIGRATIONS[-1][0]
    with upgraded.engine.connect() as c:
        if upgraded.dialect == "sqlite":
            q = "SELECT name FROM sqlite_master WHERE name = 'hw_session_tokens_session'"
        else:
            q = "SELECT indexname FROM pg_indexes WHERE indexname = 'hw_session_tokens_session'"
        assert c.execute(text(q)).first() is not None
    upgraded.close()


def test_upgrade_from_version_2_adds_the_kms_tables(store: Store) -> None:
    with store.transaction() as c:
        c.execute(text("DROP TABLE hw_kms_aliases"))
        c.execute(text("DROP TABLE hw_kms_keys"))
        c.execute(text("UPDATE hw_meta SET value = '2' WHERE key = 'schema_version'"))
    upgraded = Store(store.url)
    assert upgraded.schema_version == MIGRATIONS[-1][0] >= 3
    now = datetime.now(UTC)
    upgraded.insert(
        t.kms_keys,
        {
            "key_id": "0b1c2d3e-0000-4000-8000-000000000001",
            "state": "Enabled",
            "created": now,
            "deletion_date": None,
            "material": "sealed",
            "data": {"description": ""},
        },
    )
    upgraded.insert(
        t.kms_aliases,
        {
            "alias_name": "alias/x",
            "key_id": "0b1c2d3e-0000-4000-8000-000000000001",
            "created": now,
            "updated": now,
        },
    )
    assert upgraded.get(t.kms_aliases, alias_name="alias/x") is not None
    again = Store(store.url)
    assert again.schema_version == upgraded.schema_version  # idempotent
    again.close()
    upgraded.close()


def test_rows_read_the_same_whichever_path_wrote_them(store: Store) -> None:
    """On SQLite the keyed statements run on the driver; SQLAlchemy's own statements must
    read what they wrote and the other way round (datetimes, booleans, JSON, NULL)."""
    start = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
    direct = {**_session("s-direct", reason=None, n=[1, {"a": True}]), "start_date": start}
    store.insert(t.sessions, direct)
    via_sql = {**_session("s-sql", reason="r"), "start_date": start, "end_date": start}
    with store.transaction() as c:
        c.execute(t.sessions.insert(), {**via_sql, "data": '{"reason": "r"}'})
    rows = {r["session_id"]: r for r in store.select(t.sessions)}
    for sid in ("s-direct", "s-sql"):
        assert store.get(t.sessions, session_id=sid) == rows[sid]
    assert rows["s-direct"]["start_date"] == start
    assert rows["s-direct"]["end_date"] is None
    assert rows["s-direct"]["data"] == {"reason": None, "n": [1, {"a": True}]}
    assert rows["s-sql"]["end_date"] == start
    # A column left out gets its default; booleans come back as booleans.
    store.insert(
        t.session_tokens,
        {"token_hash": "h1", "session_id": "s-direct", "expires": start},
    )
    token = store.get(t.session_tokens, token_hash="h1")
    assert token is not None and token["used"] is False
    assert store.update(t.session_tokens, {"session_id": "s-direct"}, {"used": True}) == 1
    assert store.select(t.session_tokens, token_hash="h1")[0]["used"] is True
    assert store.update(t.session_tokens, {"session_id": "nobody"}, {"used": True}) == 0


def test_insert_many_is_all_or_nothing(store: Store) -> None:
    store.insert(t.sessions, _session("s-9"))
    rows = [_session("s-10"), _session("s-9"), _session("s-11")]
    with pytest.raises(Conflict):
        store.insert_many(t.sessions, rows)
    assert store.get(t.sessions, session_id="s-10") is None
    store.insert_many(t.sessions, [_session("s-10"), _session("s-11", reason="x")])
    assert store.count(t.sessions) == 3


def test_a_transaction_inside_a_transaction_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # SQLite only: there a thread's transactions share its one writer connection.
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    with pytest.raises(RuntimeError, match="already open"), store.transaction() as c:
        store.insert(t.sessions, _session("s-20"), c)
        with store.transaction():
            pass
    assert store.get(t.sessions, session_id="s-20") is None
    with store.transaction() as c:  # the thread's writer is usable again
        store.insert(t.sessions, _session("s-21"), c)
    assert store.get(t.sessions, session_id="s-21") is not None
    store.close()


class _FailingCommit:
    """The driver connection, except that COMMIT fails (as on a full disk)."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    @property
    def in_transaction(self) -> bool:
        return self.real.in_transaction

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, *args)


def _fail_commits(batch: Any) -> Any:
    """Make the group's COMMIT fail from now on; returns the real writer to put back."""
    real = batch.writer
    failing = _FailingCommit(real().connection.dbapi_connection)
    batch.writer = lambda: SimpleNamespace(connection=SimpleNamespace(dbapi_connection=failing))
    return real


def test_group_commit_one_transaction_per_loop_iteration(tmp_path: Path) -> None:
    """On the event loop's thread, the transactions of one iteration commit together: a failing
    one is undone alone, the others become visible to other connections only at the commit,
    and settled() returns once they are committed."""
    path = tmp_path / "h.db"
    store = Store(f"sqlite:///{path}")
    other = sqlite3.connect(path)

    def visible() -> set[str]:
        return {r[0] for r in other.execute("SELECT session_id FROM hw_sessions")}

    async def scenario() -> None:
        store.batch_commits(asyncio.get_running_loop())
        store.insert(t.sessions, _session("g-1"))
        with pytest.raises(RuntimeError), store.transaction() as c:
            store.insert(t.sessions, _session("g-2"), c)
            raise RuntimeError("undone alone")
        with store.transaction() as c:
            with pytest.raises(Conflict):
                store.insert(t.sessions, _session("g-1"), c)
            store.insert(t.sessions, _session("g-3"), c)
        # This thread sees the iteration's writes; another connection does not, yet.
        assert store.get(t.sessions, session_id="g-3") is not None
        assert visible() == set()
        await store.settled()
        assert visible() == {"g-1", "g-3"}
        await store.settled()  # nothing pending: returns at once

    asyncio.run(scenario())
    store.stop_batching()
    # One commit per transaction again.
    store.insert(t.sessions, _session("g-4"))
    assert visible() == {"g-1", "g-3", "g-4"}
    other.close()
    store.close()


def test_a_failed_group_commit_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    store = Store(f"sqlite:///{path}")

    async def scenario() -> None:
        store.batch_commits(asyncio.get_running_loop())
        batch = store._batch
        assert batch is not None
        real = _fail_commits(batch)
        store.insert(t.sessions, _session("f-1"))
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            await store.settled()
        batch.writer = real
        assert store.get(t.sessions, session_id="f-1") is None
        store.begin_call()  # the next call works again
        store.insert(t.sessions, _session("f-2"))
        await store.settled()

    asyncio.run(scenario())
    store.stop_batching()
    assert store.get(t.sessions, session_id="f-2") is not None
    store.close()


def test_the_log_is_checkpointed_off_the_loop_while_commits_are_grouped(tmp_path: Path) -> None:
    """With commits grouped, the loop's connection never checkpoints; the pages still reach the
    database file, copied there by the background thread."""
    path = tmp_path / "h.db"
    store = Store(f"sqlite:///{path}")

    async def scenario() -> None:
        store.batch_commits(asyncio.get_running_loop())
        (autocheckpoint,) = store._writer().exec_driver_sql("PRAGMA wal_autocheckpoint").one()
        assert autocheckpoint == 0
        before = path.stat().st_size
        for i in range(300):
            store.insert(t.sessions, _session(f"c-{i}", pad="x" * 2000))
            await store.settled()
        deadline = time.monotonic() + 10
        while path.stat().st_size < before + 300_000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert path.stat().st_size >= before + 300_000

    asyncio.run(scenario())
    store.stop_batching()
    (autocheckpoint,) = store._writer().exec_driver_sql("PRAGMA wal_autocheckpoint").one()
    assert autocheckpoint == 1000
    store.close()


def test_a_group_that_reads_first_is_not_broken_by_another_threads_write(tmp_path: Path) -> None:
    """The group's transaction takes the write lock when it opens: another connection's commit
    cannot make its snapshot stale (which would fail its first write with "database is
    locked"); that writer waits for the group's commit instead."""
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            store.insert(t.sessions, _session("theirs"))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    async def scenario() -> None:
        store.batch_commits(asyncio.get_running_loop())
        th = threading.Thread(target=other_thread)
        with store.transaction() as c:
            assert store.get(t.sessions, c, session_id="mine") is None  # a read comes first
            th.start()
            time.sleep(0.3)  # the other thread tries to commit meanwhile
            store.insert(t.sessions, _session("mine"), c)
        await store.settled()
        await asyncio.to_thread(th.join, 10)

    asyncio.run(scenario())
    store.stop_batching()
    assert errors == []
    assert {r["session_id"] for r in store.select(t.sessions)} == {"mine", "theirs"}
    store.close()


_PEER = """
import sys
from pathlib import Path
from hatchway.server.store import Store
from hatchway.server.store import schema as t

url, counters, index, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = Store(url)
store.join_processes(counters, index, 3)
for _ in range(rounds):
    with store.transaction() as c:
        n = int(store.get(t.meta, c, key="n")["value"])
        store.update(t.meta, {"key": "n"}, {"value": str(n + 1)}, c)
store.bump("iam")
store.close()
"""


def test_processes_sharing_a_store_serialize_writes_and_see_each_others_changes(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    counters = tmp_path / "counters"
    store = Store(url)
    store.join_processes(counters, 0, 3)
    store.meta_set("n", "0")
    iam_before, meta_before = store.version("iam"), store.version(t.meta)
    peers = [
        subprocess.Popen([sys.executable, "-c", _PEER, url, str(counters), str(i), "150"])
        for i in (1, 2)
    ]
    for p in peers:
        assert p.wait(60) == 0
    # No increment was lost: the writers took turns.
    assert store.meta_get("n") == "300"
    # This process's caches see the others' committed writes and named changes.
    assert store.version(t.meta) == meta_before + 300
    assert store.version("iam") == iam_before + 2
    store.close()


def test_the_log_starts_over_while_commits_never_stop(tmp_path: Path) -> None:
    """With a write in every loop iteration, the log is never idle: the writer finishes the
    background checkpoint between two groups so that SQLite starts the log over (the log
    header's checkpoint sequence number counts the restarts), instead of letting it grow by
    everything ever written."""
    path = tmp_path / "h.db"
    store = Store(f"sqlite:///{path}")
    wal = Path(f"{path}-wal")

    def restarts() -> int:
        with wal.open("rb") as f:
            return int.from_bytes(f.read(16)[12:16], "big")

    async def scenario() -> int:
        store.batch_commits(asyncio.get_running_loop())
        first = None
        deadline = time.monotonic() + 20
        i = 0
        while time.monotonic() < deadline:
            store.insert(t.sessions, _session(f"w-{i}", pad="x" * 2000))
            await store.settled()
            i += 1
            if first is None:
                first = restarts()
            elif i % 500 == 0 and restarts() >= first + 2:
                break
        return restarts() - (first or 0)

    restarted = asyncio.run(scenario())
    store.stop_batching()
    store.close()
    assert restarted >= 2


def test_a_writer_that_awaits_before_settled_still_hears_its_group_failed(tmp_path: Path) -> None:
    """A call that writes, then awaits something else (a channel to close) before settled():
    the commit fails meanwhile, with nobody waiting; settled() must still raise."""
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")

    async def scenario() -> None:
        store.batch_commits(asyncio.get_running_loop())
        batch = store._batch
        assert batch is not None
        real = _fail_commits(batch)

        async def call() -> None:
            store.begin_call()
            store.insert(t.sessions, _session("late-1"))
            await asyncio.sleep(0)  # the group's commit runs (and fails) here
            await asyncio.sleep(0)
            batch.writer = real
            await store.settled()

        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            await asyncio.create_task(call())

        async def other_call() -> None:  # a later call, in another task, is not affected
            store.begin_call()
            store.insert(t.sessions, _session("late-2"))
            await store.settled()

        await asyncio.create_task(other_call())

    asyncio.run(scenario())
    store.stop_batching()
    assert store.get(t.sessions, session_id="late-1") is None
    assert store.get(t.sessions, session_id="late-2") is not None
    store.close()


def test_a_group_sqlite_rolls_back_whole_fails_every_writer_in_it(tmp_path: Path) -> None:
    """Some errors (a full disk here, by max_page_count) make SQLite roll the whole group
    back: the writer gets that error (not "no such savepoint"), every other writer of the
    group hears of it in settled(), and the next group works."""
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store.batch_commits(loop)
        raw = store._writer().connection.dbapi_connection
        assert raw is not None
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        raw.execute(f"PRAGMA max_page_count={pages + 2}")

        async def first() -> None:
            store.begin_call()
            store.insert(t.sessions, _session("r-a"))
            await store.settled()

        waiting = loop.create_task(first())
        await asyncio.sleep(0)  # first() wrote into the open group and waits on it
        store.begin_call()
        with pytest.raises(sqlite3.OperationalError, match="full"):
            store.insert(t.sessions, _session("r-b", pad="x" * 200_000))
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await waiting
        raw.execute("PRAGMA max_page_count=1000000")
        store.begin_call()
        store.insert(t.sessions, _session("r-c"))
        await store.settled()

    asyncio.run(scenario())
    store.stop_batching()
    present = {
        sid: store.get(t.sessions, session_id=sid) is not None for sid in ("r-a", "r-b", "r-c")
    }
    assert present == {"r-a": False, "r-b": False, "r-c": True}
    store.close()


def test_locked_rows_reads_every_matching_row_in_a_transaction(store: Store) -> None:
    now = datetime.now(UTC)
    store.insert(t.sessions, _session("k-1"))
    for h, used in (("t1", False), ("t2", True), ("t3", False)):
        store.insert(
            t.session_tokens, {"token_hash": h, "session_id": "k-1", "expires": now, "used": used}
        )
    with store.transaction() as c:
        rows = store.locked_rows(t.session_tokens, c, session_id="k-1")
        assert store.locked_rows(t.session_tokens, c, session_id="nobody") == []
    assert sorted((r["token_hash"], r["used"]) for r in rows) == [
        ("t1", False),
        ("t2", True),
        ("t3", False),
    ]
    assert all(r["expires"].tzinfo is not None for r in rows)
