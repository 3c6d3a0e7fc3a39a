"""Schema migrations: an ordered list of steps, each applied once, recorded in ``hw_meta``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from sqlalchemy import Connection, select, text

from hatchway.server.store import schema

Migration = Callable[[Connection], None]
log = logging.getLogger("hatchway.server.store")


def _v1(conn: Connection) -> None:
    # The schema as schema.py declares it now; later steps are written to be idempotent on it.
    schema.metadata.create_all(conn)


def _v2(conn: Connection) -> None:
    # Terminating or resuming a session looks its tokens up by session id. (A database created
    # at version 2 already has it from schema.py: IF NOT EXISTS keeps the step idempotent.)
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS hw_session_tokens_session ON hw_session_tokens (session_id)"
        )
    )


def _bind_role_ids(conn: Connection) -> None:
    # Role sessions' and nodes' credentials name their role's unique id from now on
    # (identity.py refuses one whose role id differs); bind those issued before to the role
    # that has their role's name at upgrade time.
    keys = schema.access_keys
    roles = {
        name: entity_id
        for name, entity_id in conn.execute(
            select(schema.iam_entities.c.name, schema.iam_entities.c.entity_id).where(
                schema.iam_entities.c.kind == "role"
            )
        )
    }
    rows = conn.execute(
        select(keys.c.access_key_id, keys.c.data).where(keys.c.owner_kind.in_(("session", "node")))
    ).all()
    for akid, raw in rows:
        data = json.loads(raw)
        if "role_id" in data:
            continue
        data["role_id"] = roles.get(str(data.get("role_name", "")))
        conn.execute(
            keys.update().where(keys.c.access_key_id == akid).values(data=json.dumps(data))
        )


# Append new steps; never edit a released one.
MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial schema", _v1),
    (2, "index session tokens by session", _v2),
    (
        3,
        "kms keys",
        lambda conn: schema.metadata.create_all(conn, tables=[schema.kms_keys, schema.kms_aliases]),
    ),
    (4, "session logs", lambda conn: schema.metadata.create_all(conn, tables=[schema.session_log])),
    (5, "bind role credentials to role ids", _bind_role_ids),
    (
        6,
        "cache generations",
        lambda conn: schema.metadata.create_all(conn, tables=[schema.cache_generation]),
    ),
    (
        7,
        "run command",
        lambda conn: schema.metadata.create_all(
            conn, tables=[schema.commands, schema.command_invocations]
        ),
    ),
]


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, schema.meta.name):
        return 0
    row = conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
    ).first()
    return int(row[0]) if row else 0


MIGRATION_LOCK = 0x48617463  # "Hatc": PostgreSQL advisory lock held while migrating


def migrate(conn: Connection) -> int:
    """Apply pending migrations in one transaction each; returns the resulting version.

    Brokers starting together on one PostgreSQL database take turns (an advisory lock), so a
    step runs once. A store newer than this code (a later release migrated it during a rolling
    upgrade) is used as it is: migrations only add (docs/backup.md, "Upgrading a cluster").
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        conn.commit()
        try:
            return _migrate(conn)
        finally:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            conn.commit()
    return _migrate(conn)


def _migrate(conn: Connection) -> int:
    version = current_version(conn)
    newest = MIGRATIONS[-1][0]
    if version > newest:
        log.warning(
            "the store's schema version %d is newer than this broker's (%d): using it as it is "
            "(a rolling upgrade; migrations only add)",
            version,
            newest,
        )
    for number, _name, step in MIGRATIONS:
        if number <= version:
            continue
        step(conn)
        if version == 0:
            conn.execute(schema.meta.insert().values(key="schema_version", value=str(number)))
        else:
            conn.execute(
                schema.meta.update()
                .where(schema.meta.c.key == "schema_version")
                .values(value=str(number))
            )
        version = number
        conn.commit()
    return version
