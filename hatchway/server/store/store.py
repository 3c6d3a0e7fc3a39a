"""A small record store over SQLAlchemy Core: the records, and the store's one interface.

Rows come back as plain dicts of their columns, with the JSON ``data`` column decoded. Every
write runs in its own transaction unless the caller passes one from :meth:`Store.transaction`,
so an operation that changes several tables changes all or nothing.

:class:`Store` is record access (get, select, insert, update, delete; sessions typed as
:class:`~.records.SessionRow`) and the transaction that ties the other parts together:

* :mod:`.engine` opens the database (SQLite's settings, the PostgreSQL driver);
* :mod:`.connections` keeps each thread's connections and the processes' write lock;
* :mod:`.direct` runs the simple statements on the SQLite driver itself (the raw SQLite path);
  everything else, and everything on PostgreSQL, goes through SQLAlchemy;
* :mod:`.groupcommit` groups an event-loop iteration's SQLite transactions into one commit,
  and :mod:`.checkpoint` checkpoints the write-ahead log on a thread meanwhile;
* :mod:`.changes` counts changes for the caches and publishes them to the other processes
  (through :mod:`.invalidation`'s shared counters);
* :mod:`.migrations` and :mod:`.schema` hold the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from hatchway.server.base import metrics
from hatchway.server.store import schema
from hatchway.server.store.changes import Changes
from hatchway.server.store.checkpoint import AUTOCHECKPOINT, Checkpointer
from hatchway.server.store.connections import ThreadConnections
from hatchway.server.store.direct import Statements, defaults, keyed_update
from hatchway.server.store.engine import DriverMissing, aware, driver, is_memory, open_engine
from hatchway.server.store.groupcommit import GroupCommit
from hatchway.server.store.groupcommit import begin_call as _begin_call
from hatchway.server.store.invalidation import Invalidation, ensure_domains
from hatchway.server.store.migrations import migrate
from hatchway.server.store.records import NodeRow, SessionRow

__all__ = ["Conflict", "DriverMissing", "Record", "Store"]

Record = dict[str, Any]


class Conflict(Exception):
    """A row with that key exists already."""


class Store:
    """Records in SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://…``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = open_engine(url)
        with self.engine.connect() as conn:
            self.schema_version = migrate(conn)
        with self.engine.begin() as conn:
            ensure_domains(conn)
        self._stmts: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._insert_stmts: dict[str, Any] = {}
        self._update_stmts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}
        sqlite = self.dialect == "sqlite"
        #: What every cache keys on: see :mod:`.invalidation`.
        self.invalidation = Invalidation(self.engine)
        self.changes = Changes(self.invalidation, mark_in_database=not sqlite)
        self.connections = ThreadConnections(self.engine, sqlite=sqlite)
        self._direct = Statements(self.engine.dialect) if sqlite else None
        self._batch: GroupCommit | None = None
        self._checkpointer: Checkpointer | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        if self._batch is not None and threading.get_ident() != self._batch.thread:
            self._batch = None  # another thread's group: its loop is gone with it
        self.stop_batching()
        self.connections.close()
        self.changes.close()
        self.engine.dispose()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction for several writes: all of them happen, or none.

        Transactions are synchronous: nothing may ``await`` inside one, and one thread holds
        at most one at a time (on SQLite a second one on the same thread raises). On the event
        loop's thread, once :meth:`batch_commits` was called, each is a savepoint inside the
        loop iteration's shared SQLite transaction: see there.
        """
        changes = self.changes
        if self._direct is None:
            changes.begin()
            try:
                with self.engine.begin() as conn:
                    yield conn
                    started = time.perf_counter()  # leaving the block commits
                metrics.store_commit(self.dialect, time.perf_counter() - started)
            except BaseException:
                changes.end(committed=False)
                raise
            changes.end(committed=True)
            return
        if changes.is_open():  # before touching the thread's connection
            changes.begin()  # raises
        conn = self._writer()
        raw = driver(conn)
        changes.begin()
        try:
            batch = self._batch
            if batch is not None and threading.get_ident() == batch.thread:
                if not raw.in_transaction:
                    batch.begin(raw)
                batch.joined()
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
                return  # group commit is for one process: nothing to publish
            with self.connections.write_lock():
                raw.execute("BEGIN IMMEDIATE")  # see GroupCommit.begin
                try:
                    yield conn
                    started = time.perf_counter()
                    raw.execute("COMMIT")
                    metrics.store_commit("sqlite", time.perf_counter() - started)
                except BaseException:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
                    raise
            changes.end(committed=True)
        finally:
            changes.end(committed=False)  # only a commit publishes (a no-op after one)

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
        seconds, so that no commit on the loop stalls for one (:mod:`.checkpoint`).
        """
        if self._direct is None:
            return
        if self.changes.shared:
            raise RuntimeError("group commit is for one process (see join_processes)")
        self._batch = GroupCommit(
            loop, threading.get_ident(), self._writer, self.changes.invalidate_all
        )
        if not is_memory(self.url):
            driver(self._writer()).execute("PRAGMA wal_autocheckpoint=0")
            batch = self._batch

            def finish() -> None:  # on the checkpointer's thread
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to do
                    loop.call_soon_threadsafe(batch.finish_checkpoint)

            self._checkpointer = Checkpointer(self.engine.url.database or "", finish)

    @property
    def commits_ok(self) -> bool:
        """False while the last group commit failed (a full disk): writes that raised no
        error at the time may still be lost. Always True without group commit, where each
        write's own transaction raises."""
        batch = self._batch
        return batch is None or batch.last_ok

    def begin_call(self) -> None:
        """A new API call starts in this task: :meth:`settled` answers for its writes only."""
        _begin_call()

    async def settled(self) -> None:
        """Wait until the writes of this call (since :meth:`begin_call`) are committed, and
        raise if a group holding any of them failed (see :meth:`batch_commits`)."""
        batch = self._batch
        if batch is not None:
            await batch.settled()

    def invalidate_all(self) -> None:
        """Count a change of everything: caches built from writes that were then rolled back
        (or from a process that died before publishing its changes) are rebuilt."""
        self.changes.invalidate_all()

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
            driver(self._writer()).execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")

    def _writer(self) -> Connection:
        """This thread's long-lived SQLite connection (see :mod:`.connections`)."""
        return self.connections.writer()

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

    # -- changes (for the caches) -------------------------------------------------------

    def version(self, table: Table | str) -> int:
        """A counter of writes to ``table`` (or a named counter, see :meth:`bump`): caches of
        its rows key on it. This process's writes, after :meth:`join_processes` the committed
        writes of every process of the broker, and once :meth:`follow_changes` runs (on
        PostgreSQL) those of every broker on the database (see :mod:`.invalidation`)."""
        return self.changes.version(table if isinstance(table, str) else table.name)

    def bump(self, name: str, conn: Connection | None = None) -> None:
        """Count a change that is not a table's (``"iam"``: any IAM write; ``"nodes"``: a
        node deregistered), once committed: in ``conn``'s transaction when given, which on
        PostgreSQL tells the other brokers too."""
        self.changes.bump(name, conn)

    def _changed(self, table: Table, conn: Connection | None = None) -> None:
        self.changes.bump(table.name, conn)

    def follow_changes(self) -> None:
        """Follow every broker's changes on this database (PostgreSQL: a thread that listens
        and polls; nothing on SQLite, whose brokers are one machine's processes)."""
        self.changes.follow()

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
        self.changes.join_processes(path, index, count)
        if self._direct is not None:
            self.connections.lock_path = f"{self.engine.url.database}-hwlock"

    # -- typed records (see .records) ---------------------------------------------------

    def node(self, instance_id: str, conn: Connection | None = None) -> NodeRow | None:
        """The node's row (``hw_instances``), typed."""
        return cast("NodeRow | None", self.get(schema.instances, conn, instance_id=instance_id))

    def nodes(
        self,
        *where: ColumnElement[bool],
        order_by: Sequence[Any] = (),
        limit: int | None = None,
        conn: Connection | None = None,
        **keys: Any,
    ) -> list[NodeRow]:
        """Nodes' rows (``hw_instances``) matching ``where`` and ``keys``, typed."""
        rows = self.select(
            schema.instances, *where, order_by=order_by, limit=limit, conn=conn, **keys
        )
        return cast("list[NodeRow]", rows)

    def session(self, session_id: str, conn: Connection | None = None) -> SessionRow | None:
        """The session's row (``hw_sessions``), typed."""
        return cast("SessionRow | None", self.get(schema.sessions, conn, session_id=session_id))

    def sessions(
        self,
        *where: ColumnElement[bool],
        order_by: Sequence[Any] = (),
        limit: int | None = None,
        conn: Connection | None = None,
        **keys: Any,
    ) -> list[SessionRow]:
        """Sessions' rows (``hw_sessions``) matching ``where`` and ``keys``, typed."""
        rows = self.select(
            schema.sessions, *where, order_by=order_by, limit=limit, conn=conn, **keys
        )
        return cast("list[SessionRow]", rows)

    # -- rows ---------------------------------------------------------------------------

    @staticmethod
    def _row(row: Any) -> Record:
        out = {k: aware(v) for k, v in row.items()}
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

    def get(self, table: Table, conn: Connection | None = None, **keys: Any) -> Record | None:
        if self._direct is not None:
            q = self._direct.get(table, tuple(keys))
            raw = driver(conn if conn is not None else self._writer())
            found = raw.execute(q.sql, q.args(keys)).fetchone()
            return q.record(found) if found is not None else None
        stmt = self._get_stmt(table, tuple(keys))
        if conn is not None:
            row = conn.execute(stmt, keys).mappings().first()
        else:
            found = self.connections.read(stmt, keys)
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
        return [self._row(r) for r in self.connections.read(q)]

    def count(self, table: Table, conn: Connection | None = None, **keys: Any) -> int:
        q = select(func.count()).select_from(table)
        if keys:
            q = q.where(self._where(table, keys))
        if conn is not None:
            return int(conn.execute(q).scalar_one())
        (row,) = self.connections.read(q)  # a read: no write transaction, no group
        return int(next(iter(row.values())))

    def locked_rows(self, table: Table, conn: Connection, **keys: Any) -> list[Record]:
        """The rows whose ``keys`` equal the values, locked against other writers until
        ``conn``'s transaction ends (PostgreSQL: ``FOR UPDATE``, which also waits for a writer
        holding them and then reads its committed values; SQLite: its transactions hold the
        database's write lock from the start)."""
        if self._direct is not None:
            q = self._direct.get(table, tuple(keys))
            return [q.record(r) for r in driver(conn).execute(q.sql, q.args(keys)).fetchall()]
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
            return int(driver(conn).execute(sql, args).rowcount)
        with self.transaction() as c:
            return int(driver(c).execute(sql, args).rowcount)

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
                        driver(c).executemany(p.sql, [p.args({**extra, **r}) for r in group])
            else:
                with self.engine.begin() as c:
                    c.execute(insert(table), [self._values(r) for r in rows])
                    self.invalidation.mark(c, table.name)
                self._changed(table)
                return
        except (IntegrityError, sqlite3.IntegrityError) as exc:
            raise Conflict(str(getattr(exc, "orig", exc))) from exc
        self._changed(table)

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
