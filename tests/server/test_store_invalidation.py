"""The invalidation mechanism on PostgreSQL: generation rows bumped at commit, and the thread
that follows them in each process (see hatchway.server.store.invalidation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import create_engine

from hatchway.server.store import Store
from hatchway.server.store import schema as t
from hatchway.server.store.invalidation import DOMAINS, DatabaseGenerations

ACCOUNT = "123456789012"


def eventually(check: Callable[[], bool], deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while True:
        if check():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)


@pytest.fixture
def database(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_gen")
        conn.execute("CREATE DATABASE hatchway_gen")
    return postgres_url.rsplit("/", 1)[0] + "/hatchway_gen"


def _generation(url: str, domain: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT generation FROM hw_cache_generation WHERE domain = %s", (domain,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _key_row(akid: str) -> dict[str, object]:
    return {
        "access_key_id": akid,
        "owner_kind": "user",
        "owner_name": "alice",
        "secret": "sealed",
        "status": "Active",
        "created": datetime.now(UTC),
        "expires": None,
        "data": {},
    }


def test_a_domain_moves_with_each_commit_and_never_with_a_rollback(database: str) -> None:
    writer, follower = Store(database), Store(database)
    follower.follow_changes()
    try:
        before = _generation(database, "access_keys")
        seen = follower.version(t.access_keys)
        with pytest.raises(RuntimeError), writer.transaction() as c:
            writer.insert(t.access_keys, _key_row("AKIAROLLEDBACK000001"), c)
            raise RuntimeError("abandon the transaction")
        assert _generation(database, "access_keys") == before
        with writer.transaction() as c:  # several writes of one domain: one step
            writer.insert(t.access_keys, _key_row("AKIACOMMITTED0000001"), c)
            writer.update(
                t.access_keys, {"access_key_id": "AKIACOMMITTED0000001"}, {"status": "Inactive"}, c
            )
        assert _generation(database, "access_keys") == before + 1
        sessions_before = {d: _generation(database, d) for d in DOMAINS}
        writer.insert(t.sessions, _session_row())  # no cache follows sessions: nothing bumped
        assert {d: _generation(database, d) for d in DOMAINS} == sessions_before
        assert eventually(lambda: follower.version(t.access_keys) != seen)
        assert follower.version(t.iam_entities) == follower.version("iam")  # one domain
    finally:
        writer.close()
        follower.close()


def _session_row() -> dict[str, object]:
    return {
        "session_id": "alice-0123456789abcdef0",
        "target": "i-0123456789abcdef0",
        "status": "Connecting",
        "owner": "arn:aws:iam::123456789012:user/alice",
        "start_date": datetime.now(UTC),
        "end_date": None,
        "document_name": "SSM-SessionManagerRunShell",
        "data": {},
    }


def test_the_follower_comes_back_after_losing_its_connection(database: str) -> None:
    writer, follower = Store(database), Store(database)
    follower.follow_changes()
    try:
        gens = follower.invalidation.database
        assert gens is not None
        assert eventually(lambda: gens.reads > 0)
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                ("%hw_cache_generation%",),
            )
        seen = follower.version(t.documents)
        writer.insert(t.documents, _document_row())
        # Moved, and not merely because the follower is blind while it reconnects.
        assert eventually(lambda: not gens.blind and follower.version(t.documents) != seen)
    finally:
        writer.close()
        follower.close()


def _document_row() -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "name": "Doc",
        "owner": ACCOUNT,
        "document_type": "Session",
        "default_version": 1,
        "latest_version": 1,
        "created": now,
        "data": {},
    }


def test_without_the_database_every_version_moves(database: str) -> None:
    """A follower that cannot read the generations bypasses the caches instead of trusting
    them (fail safe)."""
    unreachable = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    gens = DatabaseGenerations(unreachable, interval=0.05)
    gens.start()
    try:
        assert gens.generation("iam") != gens.generation("iam")
    finally:
        gens.stop()
        unreachable.dispose()
