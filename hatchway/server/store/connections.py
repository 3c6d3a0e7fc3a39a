"""Each thread's long-lived connections to the database, and the processes' write lock.

A thread keeps one connection for reads outside any transaction (PostgreSQL ``AUTOCOMMIT``: no
pool round trip per read) and, on SQLite, one *writer* it also reads on (its page cache stays
warm across writes) whose transactions the store begins itself (``BEGIN IMMEDIATE``, on the
driver). Processes sharing a SQLite file take an ``flock`` around each write transaction (see
:meth:`hatchway.server.store.Store.join_processes`).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine


class ThreadConnections:
    """The calling thread's connections to ``engine``."""

    def __init__(self, engine: Engine, *, sqlite: bool) -> None:
        self.engine = engine
        self.sqlite = sqlite
        self.lock_path: str | None = None
        self._local = threading.local()

    def writer(self) -> Connection:
        """This thread's long-lived SQLite connection, for reads and writes alike (BEGIN is
        the store's to issue; SQLAlchemy's own transaction bookkeeping on it is ignored)."""
        c: Connection | None = getattr(self._local, "writer", None)
        if c is None or c.closed or c.invalidated:
            c = self.engine.connect().execution_options(hatchway_own_begin=True)
            self._local.writer = c
        return c

    def reader(self) -> Connection:
        """This thread's long-lived connection for single reads, outside any transaction
        (PostgreSQL AUTOCOMMIT). On SQLite, the thread's one connection (the writer)."""
        if self.sqlite:
            return self.writer()
        c: Connection | None = getattr(self._local, "reader", None)
        if c is None or c.closed:
            c = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._local.reader = c
        return c

    def read(self, stmt: Any, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Run a read on this thread's reader; its rows as mappings."""
        if self.sqlite:
            return list(self.writer().execute(stmt, dict(params or {})).mappings())
        c = self.reader()
        try:
            rows = list(c.execute(stmt, dict(params or {})).mappings())
        except Exception:
            self._local.reader = None  # a broken connection is not reused
            c.invalidate()
            raise
        finally:
            if not c.closed and c.in_transaction():
                c.rollback()
        return rows

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """The processes' write lock (when ``lock_path`` is set); nothing in one process."""
        if self.lock_path is None:
            yield
            return
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is None:
            fd = self._local.lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close this thread's connections and lock file."""
        for name in ("reader", "writer"):
            c: Connection | None = getattr(self._local, name, None)
            if c is not None:
                c.close()
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._local.lock_fd = None
