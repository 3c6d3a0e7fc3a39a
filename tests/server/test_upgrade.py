"""Upgrading a cluster one broker at a time (docs/backup.md): brokers starting together take
turns migrating a PostgreSQL store, and a broker keeps working on a store a later release
migrated (additive migrations)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import psycopg
from harness import start_broker, stop_broker
from sqlalchemy import text

from hatchway.server.store import Store
from hatchway.server.store.migrations import MIGRATIONS


def test_brokers_starting_together_migrate_a_postgresql_store_once(postgres_url: str) -> None:
    name = f"hatchway_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            stores.append(Store(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert errors == []
        assert {s.schema_version for s in stores} == {MIGRATIONS[-1][0]}
    finally:
        for s in stores:
            s.close()


def test_a_broker_works_on_a_store_a_later_release_migrated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    b = start_broker(data)
    stop_broker(b)
    # What a later release's additive migration does: a new column (nullable), a new table,
    # a higher version. This release's broker must keep serving on it (mid rolling upgrade).
    store = Store(f"sqlite:///{data / 'hatchway.db'}")
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE hw_sessions ADD COLUMN future_column TEXT"))
        conn.execute(text("ALTER TABLE hw_iam_entities ADD COLUMN future_flag INTEGER"))
        conn.execute(text("CREATE TABLE hw_future (id INTEGER PRIMARY KEY)"))
        conn.execute(text("UPDATE hw_meta SET value = '999' WHERE key = 'schema_version'"))
    store.close()
    b = start_broker(data)
    try:
        iam = b.client("iam")
        iam.create_user(UserName="after-upgrade")
        assert iam.get_user(UserName="after-upgrade")["User"]["UserName"] == "after-upgrade"
        ssm = b.client("ssm")
        assert ssm.describe_sessions(State="History")["Sessions"] == []
        assert "schema version 999 is newer than this broker's" in b.log.read_text()
    finally:
        stop_broker(b)
    again = Store(f"sqlite:///{data / 'hatchway.db'}")
    try:
        assert again.schema_version == 999  # never "downgraded"
    finally:
        again.close()
