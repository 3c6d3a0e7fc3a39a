"""A small record store over SQLAlchemy Core.

Rows come back as plain dicts of their columns, with the JSON ``data`` column decoded. Every
write runs in its own transaction unless the caller passes one from :meth:`Store.transaction`,
so an operation that changes several tables changes all or nothing.

On SQLite the simple statements (a row by key, an insert, an update by key, many inserts) and
the transactions themselves run on the driver directly (see :mod:`.direct`); everything else,
and everything on PostgreSQL, goes through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from hatchway.server.base import metrics
from hatchway.server.base.ratelog import RateLimitedLog
from hatchway.server.store import schema
from hatchway.server.store.direct import Statements, defaults, keyed_update
from hatchway.server.store.invalidation import Invalidation, SharedCounters, ensure_domains
from hatchway.server.store.migrations import migrate

Record = dict[str, Any]
log = logging.getLogger("hatchway.server.store")


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


class Conflict(Exception):
    """A row with that key exists already."""


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


def _driver(conn: Connection) -> Any:
    """The DB-API connection beneath a SQLAlchemy connection (in its transaction)."""
    return conn.connection.dbapi_connection


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


#: The groups (see Store.batch_commits) the current API call wrote in, by number.
_GROUPS: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "hatchway_store_groups", default=()
)
_FAILED_KEPT = 10_000  # failed groups remembered for settled()


class _Batch:
    """The event loop thread's open SQLite transaction ("group"), numbered, and the future its
    commit resolves; failed groups are remembered so that every writer hears of it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: int,
        writer: Callable[[], Connection],
        on_failure: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.thread = thread
        self.writer = writer
        self.on_failure = on_failure
        self.done: asyncio.Future[BaseException | None] | None = None
        self.number = 0
        self.failed: dict[int, BaseException] = {}
        self.last_ok = True  # the last group committed (False: it was rolled back)
        self.failures = RateLimitedLog(log)

    def begin(self, raw: Any) -> None:
        # IMMEDIATE: the write lock from the start. A deferred BEGIN whose first statement
        # reads would hold a snapshot that another connection's commit makes stale, and the
        # first write would then fail at once with "database is locked" (SQLITE_BUSY_SNAPSHOT).
        raw.execute("BEGIN IMMEDIATE")
        self.number += 1
        self.done = self.loop.create_future()
        self.loop.call_soon(self.commit)

    def fail(self, exc: BaseException) -> None:
        """The open group is lost (its commit failed, or SQLite rolled it all back)."""
        done, self.done = self.done, None
        self.last_ok = False
        self.failures.failure("store: a group of writes was rolled back", exc, where="group")
        self.failed[self.number] = exc
        while len(self.failed) > _FAILED_KEPT:
            del self.failed[next(iter(self.failed))]
        self.on_failure()
        if done is not None and not done.done() and not self.loop.is_closed():
            done.set_result(exc)

    def finish_checkpoint(self) -> None:
        """Copy what the log gained since the background checkpoint (see _Checkpointer)."""
        raw = _driver(self.writer())
        if raw.in_transaction:  # a group is open: after its commit
            self.loop.call_soon(self.finish_checkpoint)
            return
        with contextlib.suppress(sqlite3.Error):
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def commit(self) -> None:
        if self.done is None:
            return
        raw = _driver(self.writer())
        started = time.perf_counter()
        try:
            raw.execute("COMMIT")
            metrics.store_commit("sqlite", time.perf_counter() - started)
        except Exception as exc:  # every writer of this group hears of it in settled()
            with contextlib.suppress(sqlite3.Error):
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
            self.fail(exc)
            return
        done, self.done = self.done, None
        self.last_ok = True
        if not done.done() and not self.loop.is_closed():
            done.set_result(None)


#: SQLite's default: a commit checkpoints once the log holds this many pages.
AUTOCHECKPOINT = 1000
#: Seconds between the background thread's passive checkpoints while commits are grouped.
CHECKPOINT_INTERVAL = 0.25
#: Log pages (4 KiB) from which the writer finishes a checkpoint so that the log starts over.
RESTART_FRAMES = 1000


class _Checkpointer:
    """A thread that checkpoints the SQLite write-ahead log in passive mode (never waiting for
    or blocking readers and writers) on its own connection; SQLite does the copying without
    holding Python's GIL.

    A log that is written to all the time is never found fully copied when its writer begins
    a transaction, so SQLite would never start it over and it would grow without end. Once
    the thread has copied most of a long log, ``finish`` (called on the writer's event loop,
    between two group commits) copies the pages added since on the writer's connection; the
    writer's next transaction then starts the log over from its beginning.
    """

    def __init__(self, path: str, finish: Callable[[], None]) -> None:
        self._path = path
        self._finish = finish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                try:
                    _busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    continue  # the next round tries again
                if frames >= RESTART_FRAMES and copied > 0:
                    self._finish()
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Store:
    """Records in SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://…``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        require_driver(url)
        if url.startswith("sqlite"):
            kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool
            else:
                # Each thread keeps a reader and a writer; worker threads come and go.
                kwargs.update(pool_size=8, max_overflow=64)
            self.engine: Engine = create_engine(url, **kwargs)
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        with self.engine.connect() as conn:
            self.schema_version = migrate(conn)
        with self.engine.begin() as conn:
            ensure_domains(conn)
        self._stmts: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._insert_stmts: dict[str, Any] = {}
        self._update_stmts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}
        #: What every cache keys on: see :mod:`.invalidation`.
        self.invalidation = Invalidation(self.engine)
        self._local = threading.local()
        self._direct = Statements(self.engine.dialect) if self.dialect == "sqlite" else None
        self._batch: _Batch | None = None
        self._checkpointer: _Checkpointer | None = None
        self._lock_path: str | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        if self._batch is not None and threading.get_ident() != self._batch.thread:
            self._batch = None  # another thread's group: its loop is gone with it
        self.stop_batching()
        for name in ("reader", "writer"):
            c: Connection | None = getattr(self._local, name, None)
            if c is not None:
                c.close()
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._local.lock_fd = None
        self.invalidation.close()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction for several writes: all of them happen, or none.

        Transactions are synchronous: nothing may ``await`` inside one, and one thread holds
        at most one at a time (on SQLite a second one on the same thread raises). On the event
        loop's thread, once :meth:`batch_commits` was called, each is a savepoint inside the
        loop iteration's shared SQLite transaction: see there.
        """
        if getattr(self._local, "open", False):
            raise RuntimeError("a store transaction is already open on this thread")
        if not hasattr(self._local, "dirty"):
            self._local.dirty = set()
        if self._direct is None:
            self._local.open = True
            try:
                with self.engine.begin() as conn:
                    yield conn
                    started = time.perf_counter()  # leaving the block commits
                metrics.store_commit(self.dialect, time.perf_counter() - started)
            except BaseException:
                self._local.dirty.clear()
                raise
            finally:
                self._local.open = False
            self._publish()
            return
        conn = self._writer()
        raw = _driver(conn)
        self._local.open = True
        try:
            batch = self._batch
            if batch is not None and threading.get_ident() == batch.thread:
                if not raw.in_transaction:
                    batch.begin(raw)
                groups = _GROUPS.get()
                if not groups or groups[-1] != batch.number:
                    # Bounded: long-lived tasks (channels) write forever and never settle.
                    _GROUPS.set((*groups[-63:], batch.number))
                raw.execute("SAVEPOINT hw_txn")
                try:
                    yield conn
                except BaseException as exc:
                    if raw.in_transaction:
                        try:
                            raw.execute("ROLLBACK TO hw_txn")
                            raw.execute("RELEASE hw_txn")
                        except sqlite3.Error:
                            raw.execute("ROLLBACK")
                            batch.fail(exc)
                    else:  # SQLite rolled the whole group back (a full disk, I/O error, …)
                        batch.fail(exc)
                    raise
                raw.execute("RELEASE hw_txn")
                return
            with self._write_lock():
                raw.execute("BEGIN IMMEDIATE")  # see _Batch.begin
                try:
                    yield conn
                    started = time.perf_counter()
                    raw.execute("COMMIT")
                    metrics.store_commit("sqlite", time.perf_counter() - started)
                except BaseException:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
                    raise
            self._local.open = False
            self._publish()
        finally:
            if self._local.open:
                self._local.open = False
                self._local.dirty.clear()  # only a commit publishes (and _publish cleared it)

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """The processes' write lock (see :meth:`join_processes`); nothing in one process."""
        if self._lock_path is None:
            yield
            return
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is None:
            fd = self._local.lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def batch_commits(self, loop: asyncio.AbstractEventLoop) -> None:
        """Group commit on SQLite for transactions run on ``loop``'s thread (call it there).

        The first transaction of a loop iteration opens one SQLite transaction; it and every
        later one in the same iteration run as savepoints inside it (a failing one is rolled
        back alone), and a callback scheduled with ``call_soon`` commits them all at once.
        Code that answers a client must ``await`` :meth:`settled` first: it returns once what
        was written so far is committed, and raises if that commit failed. Reads on this
        thread see the iteration's writes at once. No-op on PostgreSQL.

        Checkpoints (copying the write-ahead log into the database file) move off this thread
        too: a background thread runs a passive checkpoint every ``CHECKPOINT_INTERVAL``
        seconds, so that no commit on the loop stalls for one.
        """
        if self._direct is None:
            return
        if self.invalidation.shared is not None:
            raise RuntimeError("group commit is for one process (see join_processes)")
        self._batch = _Batch(loop, threading.get_ident(), self._writer, self.invalidate_all)
        if self.url not in ("sqlite://", "sqlite:///:memory:"):
            _driver(self._writer()).execute("PRAGMA wal_autocheckpoint=0")
            batch = self._batch

            def finish() -> None:  # on the checkpointer's thread
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to do
                    loop.call_soon_threadsafe(batch.finish_checkpoint)

            self._checkpointer = _Checkpointer(self.engine.url.database or "", finish)

    @property
    def commits_ok(self) -> bool:
        """False while the last group commit failed (a full disk): writes that raised no
        error at the time may still be lost. Always True without group commit, where each
        write's own transaction raises."""
        batch = self._batch
        return batch is None or batch.last_ok

    def begin_call(self) -> None:
        """A new API call starts in this task: :meth:`settled` answers for its writes only."""
        _GROUPS.set(())

    async def settled(self) -> None:
        """Wait until the writes of this call (since :meth:`begin_call`) are committed, and
        raise if a group holding any of them failed (see :meth:`batch_commits`)."""
        batch = self._batch
        if batch is None:
            return
        groups = _GROUPS.get()
        if not groups:
            return
        if batch.done is not None and groups[-1] == batch.number:
            failure = await asyncio.shield(batch.done)
            if failure is not None:
                raise failure
        for number in groups:
            failed = batch.failed.get(number)
            if failed is not None:
                raise failed

    def invalidate_all(self) -> None:
        """Count a change of everything: caches built from writes that were then rolled back
        (or from a process that died before publishing its changes) are rebuilt."""
        for name in SharedCounters.NAMES:
            self.bump(name)

    def stop_batching(self) -> None:
        """Commit what is pending and return to one commit per transaction (on the loop's
        thread: the group is that thread's connection's)."""
        batch, self._batch = self._batch, None
        if batch is not None:
            if threading.get_ident() != batch.thread:
                raise RuntimeError("stop_batching belongs on the event loop's thread")
            batch.commit()
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
            _driver(self._writer()).execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")

    def _writer(self) -> Connection:
        """This thread's long-lived SQLite connection, for reads and writes alike (BEGIN is
        the store's to issue; SQLAlchemy's own transaction bookkeeping on it is ignored)."""
        c: Connection | None = getattr(self._local, "writer", None)
        if c is None or c.closed or c.invalidated:
            c = self.engine.connect().execution_options(hatchway_own_begin=True)
            self._local.writer = c
        return c

    @contextmanager
    def _conn(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        elif self._direct is not None:
            with self.transaction() as c:
                yield c
        else:
            with self.engine.begin() as c:
                yield c

    # -- rows ---------------------------------------------------------------------------

    @staticmethod
    def _row(row: Any) -> Record:
        out = {k: _aware(v) for k, v in row.items()}
        if "data" in out and isinstance(out["data"], str):
            out["data"] = json.loads(out["data"])
        return out

    @staticmethod
    def _values(values: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(values)
        if "data" in out and not isinstance(out["data"], str):
            out["data"] = json.dumps(out["data"], default=str)
        return out

    @staticmethod
    def _where(table: Table, keys: Mapping[str, Any]) -> ColumnElement[bool]:
        return and_(*(table.c[k] == v for k, v in keys.items()))

    def _get_stmt(self, table: Table, names: tuple[str, ...]) -> Any:
        stmt = self._stmts.get((table.name, names))
        if stmt is None:
            stmt = select(table).where(and_(*(table.c[k] == bindparam(k) for k in names)))
            self._stmts[(table.name, names)] = stmt
        return stmt

    def _reader(self) -> Connection:
        """This thread's long-lived connection for single reads, outside any transaction
        (PostgreSQL AUTOCOMMIT): no pool round trip per read. On SQLite, the thread's one
        connection (its page cache stays warm across writes)."""
        if self._direct is not None:
            return self._writer()
        c: Connection | None = getattr(self._local, "reader", None)
        if c is None or c.closed:
            c = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._local.reader = c
        return c

    def _read(self, stmt: Any, params: Mapping[str, Any] | None = None) -> list[Any]:
        if self._direct is not None:
            return list(self._writer().execute(stmt, dict(params or {})).mappings())
        c = self._reader()
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

    def get(self, table: Table, conn: Connection | None = None, **keys: Any) -> Record | None:
        if self._direct is not None:
            q = self._direct.get(table, tuple(keys))
            raw = _driver(conn if conn is not None else self._writer())
            found = raw.execute(q.sql, q.args(keys)).fetchone()
            return q.record(found) if found is not None else None
        stmt = self._get_stmt(table, tuple(keys))
        if conn is not None:
            row = conn.execute(stmt, keys).mappings().first()
        else:
            found = self._read(stmt, keys)
            row = found[0] if found else None
        return self._row(row) if row is not None else None

    def select(
        self,
        table: Table,
        *where: ColumnElement[bool],
        order_by: Sequence[Any] = (),
        limit: int | None = None,
        offset: int = 0,
        conn: Connection | None = None,
        **keys: Any,
    ) -> list[Record]:
        q = select(table)
        conds = [*where, *((table.c[k] == v) for k, v in keys.items())]
        if conds:
            q = q.where(and_(*conds))
        if order_by:
            q = q.order_by(*order_by)
        if offset:
            q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        if conn is not None:
            return [self._row(r) for r in conn.execute(q).mappings()]
        return [self._row(r) for r in self._read(q)]

    def count(self, table: Table, conn: Connection | None = None, **keys: Any) -> int:
        q = select(func.count()).select_from(table)
        if keys:
            q = q.where(self._where(table, keys))
        if conn is not None:
            return int(conn.execute(q).scalar_one())
        (row,) = self._read(q)  # a read: no write transaction, no group
        return int(next(iter(row.values())))

    def locked_rows(self, table: Table, conn: Connection, **keys: Any) -> list[Record]:
        """The rows whose ``keys`` equal the values, locked against other writers until
        ``conn``'s transaction ends (PostgreSQL: ``FOR UPDATE``, which also waits for a writer
        holding them and then reads its committed values; SQLite: its transactions hold the
        database's write lock from the start)."""
        if self._direct is not None:
            q = self._direct.get(table, tuple(keys))
            return [q.record(r) for r in _driver(conn).execute(q.sql, q.args(keys)).fetchall()]
        stmt = select(table).where(self._where(table, keys)).with_for_update()
        return [self._row(r) for r in conn.execute(stmt).mappings()]

    def insert(
        self,
        table: Table,
        values: Mapping[str, Any],
        conn: Connection | None = None,
        *,
        savepoint: bool = True,
    ) -> None:
        """Insert a row; :class:`Conflict` if its key exists. In a caller's transaction the
        row goes in under a savepoint so that the rest stays intact; ``savepoint=False`` skips
        that when a conflict should abort the whole transaction anyway."""
        if self._direct is not None:
            # A failing statement is undone by SQLite itself and leaves the caller's
            # transaction as it was: no savepoint needed.
            names = tuple(values)
            p = self._direct.insert(table, names)
            row = {**defaults(table, names), **values}
            try:
                self._run(conn, p.sql, p.args(row))
            except sqlite3.IntegrityError as exc:
                raise Conflict(str(exc)) from exc
            self._changed(table)
            return
        stmt = self._insert_stmts.get(table.name)
        if stmt is None:
            stmt = self._insert_stmts[table.name] = insert(table)
        try:
            if conn is None:
                with self.engine.begin() as c:
                    c.execute(stmt, self._values(values))
                    self.invalidation.mark(c, table.name)
                self._changed(table)
                return
            if savepoint:
                with conn.begin_nested():
                    conn.execute(stmt, self._values(values))
            else:
                conn.execute(stmt, self._values(values))
        except IntegrityError as exc:
            raise Conflict(str(exc.orig)) from exc
        self._changed(table, conn)

    def _run(self, conn: Connection | None, sql: str, args: Sequence[Any]) -> int:
        """One statement on the driver: in ``conn``'s transaction, else on its own."""
        if conn is not None:
            return int(_driver(conn).execute(sql, args).rowcount)
        with self.transaction() as c:
            return int(_driver(c).execute(sql, args).rowcount)

    def insert_many(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert several rows in one transaction (executemany); :class:`Conflict` (and
        nothing inserted) if any key exists."""
        if not rows:
            return
        try:
            if self._direct is not None:
                shapes: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
                for r in rows:
                    shapes.setdefault(tuple(r), []).append(r)
                with self.transaction() as c:
                    for names, group in shapes.items():
                        p = self._direct.insert(table, names)
                        extra = defaults(table, names)
                        _driver(c).executemany(p.sql, [p.args({**extra, **r}) for r in group])
            else:
                with self.engine.begin() as c:
                    c.execute(insert(table), [self._values(r) for r in rows])
                    self.invalidation.mark(c, table.name)
                self._changed(table)
                return
        except (IntegrityError, sqlite3.IntegrityError) as exc:
            raise Conflict(str(getattr(exc, "orig", exc))) from exc
        self._changed(table)

    def version(self, table: Table | str) -> int:
        """A counter of writes to ``table`` (or a named counter, see :meth:`bump`): caches of
        its rows key on it. This process's writes, after :meth:`join_processes` the committed
        writes of every process of the broker, and once :meth:`follow_changes` runs (on
        PostgreSQL) those of every broker on the database (see :mod:`.invalidation`)."""
        return self.invalidation.version(table if isinstance(table, str) else table.name)

    def bump(self, name: str, conn: Connection | None = None) -> None:
        """Count a change that is not a table's (``"iam"``: any IAM write; ``"nodes"``: a
        node deregistered), once committed: in ``conn``'s transaction when given, which on
        PostgreSQL tells the other brokers too."""
        inv = self.invalidation
        inv.count(name)
        if conn is not None and self._direct is None:
            inv.mark(conn, name)
        if inv.shared is not None:
            if getattr(self._local, "open", False):
                self._local.dirty.add(name)
            else:
                inv.publish(name)

    def _changed(self, table: Table, conn: Connection | None = None) -> None:
        self.bump(table.name, conn)

    def _publish(self) -> None:
        """After a commit: the transaction's changes become visible to the other processes."""
        dirty: set[str] = self._local.dirty
        for name in dirty:
            self.invalidation.publish(name)
        dirty.clear()

    def follow_changes(self) -> None:
        """Follow every broker's changes on this database (PostgreSQL: a thread that listens
        and polls; nothing on SQLite, whose brokers are one machine's processes)."""
        self.invalidation.follow()

    def join_processes(self, path: Path, index: int, count: int) -> None:
        """Work as process ``index`` of ``count`` sharing this store on one machine.

        ``path`` holds the shared change counters (:meth:`version`), each process writing only
        its own row, so that a cache in one process sees another's committed writes at its
        next lookup. On SQLite, writers take an exclusive ``flock`` on ``<database>-hwlock``
        (one descriptor per thread) around ``BEGIN IMMEDIATE`` … ``COMMIT``: the kernel wakes
        the next writer the moment the lock is free, where SQLite's own busy handler would
        sleep a millisecond or more. Not combined with :meth:`batch_commits` (a group commit
        would hold the write lock for a whole loop iteration).
        """
        self.invalidation.join_processes(path, index, count)
        if self._direct is not None:
            self._lock_path = f"{self.engine.url.database}-hwlock"

    def update(
        self,
        table: Table,
        keys: Mapping[str, Any],
        values: Mapping[str, Any],
        conn: Connection | None = None,
        *where: ColumnElement[bool],
    ) -> int:
        """Update matching rows; returns how many changed."""
        if self._direct is not None and not where:
            p = self._direct.update(table, tuple(keys), tuple(values))
            args = {f"k_{k}": v for k, v in keys.items()}
            args.update({f"v_{k}": v for k, v in values.items()})
            n = self._run(conn, p.sql, p.args(args))
            self._changed(table)
            return n
        vals = self._values(values)
        if where:
            q: Any = update(table).where(self._where(table, keys), *where).values(**vals)
            params: dict[str, Any] = {}
        else:
            # The common case, a prebuilt statement: no statement building per call.
            sig = (table.name, tuple(keys), tuple(vals))
            q = self._update_stmts.get(sig)
            if q is None:
                q = self._update_stmts[sig] = keyed_update(table, tuple(keys), tuple(vals))
            params = {f"k_{k}": v for k, v in keys.items()}
            params.update({f"v_{k}": v for k, v in vals.items()})
        with self._conn(conn) as c:
            n = int(c.execute(q, params).rowcount if params else c.execute(q).rowcount)
            self.invalidation.mark(c, table.name)
        self._changed(table)
        return n

    def delete(self, table: Table, conn: Connection | None = None, **keys: Any) -> int:
        with self._conn(conn) as c:
            n = int(c.execute(delete(table).where(self._where(table, keys))).rowcount)
            self.invalidation.mark(c, table.name)
        self._changed(table)
        return n

    # -- settings -----------------------------------------------------------------------

    def meta_get(self, key: str) -> str | None:
        row = self.get(schema.meta, key=key)
        return str(row["value"]) if row else None

    def meta_set(self, key: str, value: str) -> None:
        with self.transaction() as c:
            if self.get(schema.meta, c, key=key) is None:
                self.insert(schema.meta, {"key": key, "value": value}, c)
            else:
                self.update(schema.meta, {"key": key}, {"value": value}, c)

    # -- readiness ----------------------------------------------------------------------

    def ping(self) -> None:
        """Raise if the database cannot be reached now (a fresh round trip, not a cache)."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").fetchone()
