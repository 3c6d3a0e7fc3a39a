"""Opening the database: the SQLAlchemy engine for a store URL, SQLite's connection settings,
and the driver's connection beneath a SQLAlchemy one (the raw SQLite path of :mod:`.direct`
and :mod:`.groupcommit` runs on it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import StaticPool


class DriverMissing(RuntimeError):
    """The store's URL names an engine whose driver is not installed (an optional extra)."""


def require_driver(url: str) -> None:
    """PostgreSQL needs psycopg, which only ``hatchway[postgresql]`` installs: say so in one
    line rather than with SQLAlchemy's traceback at the first connection."""
    if not url.startswith("postgresql"):
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise DriverMissing(
            "a postgresql:// database URL needs PostgreSQL support, which is not installed: "
            "pip install 'hatchway[postgresql]'"
        ) from None


def is_memory(url: str) -> bool:
    """An in-memory SQLite database (one connection, shared by every thread)."""
    return url in ("sqlite://", "sqlite:///:memory:")


def open_engine(url: str) -> Engine:
    """The engine for ``sqlite:///path`` or ``postgresql://…`` (psycopg)."""
    require_driver(url)
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
        if is_memory(url):
            kwargs["poolclass"] = StaticPool
        else:
            # Each thread keeps a reader and a writer; worker threads come and go.
            kwargs.update(pool_size=8, max_overflow=64)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINTs: switch it off
    # and let SQLAlchemy emit BEGIN itself (see _sqlite_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # The reader runs in SQLite's autocommit mode (no BEGIN/COMMIT round for a single read);
    # on the writer, Store.transaction issues BEGIN itself.
    if not conn.get_execution_options().get("hatchway_own_begin"):
        conn.exec_driver_sql("BEGIN")


def driver(conn: Connection) -> Any:
    """The DB-API connection beneath a SQLAlchemy connection (in its transaction)."""
    return conn.connection.dbapi_connection


def aware(value: Any) -> Any:
    """A naive datetime read back (SQLite keeps no zone) as the UTC it was written in."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
