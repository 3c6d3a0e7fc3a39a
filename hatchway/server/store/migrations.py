"""Schema migrations: an ordered list of steps, each applied once, recorded in ``hw_meta``."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select

from hatchway.server.store import schema

Migration = Callable[[Connection], None]


def _v1(conn: Connection) -> None:
    schema.metadata.create_all(conn)


# Append new steps; never edit a released one.
MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial schema", _v1),
]


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, schema.meta.name):
        return 0
    row = conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
    ).first()
    return int(row[0]) if row else 0


def migrate(conn: Connection) -> int:
    """Apply pending migrations in one transaction each; returns the resulting version."""
    version = current_version(conn)
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
