"""One invalidation mechanism for every cache of every process of every broker.

A cache keys its entries on :meth:`Invalidation.version` of what it was built from (a table's
name, or a named counter such as ``"iam"``); a change makes the version move and the next lookup
rebuild the entry. Three sources of changes are added up:

* this process's own writes, counted at once (``count``);
* on one machine, the other processes of the broker (``--workers``): counters in a file mapped
  into each process (:class:`SharedCounters`), bumped once a transaction commits;
* on PostgreSQL, every process of every broker on the database: a row per *domain* in
  ``hw_cache_generation`` is incremented in the same transaction as the change (just before its
  commit, domains in a fixed order, so that two writers never wait on each other's rows in
  opposite orders), and ``NOTIFY hatchway_cache`` is sent with it. Each process follows the
  table on a thread of its own (:class:`DatabaseGenerations`): it ``LISTEN``s for instant
  wake-ups and reads the table at least every :data:`POLL_INTERVAL` seconds anyway (a lost
  notification, a restarted listener connection), so a change reaches every cache within about
  a quarter of a second. While the follower cannot reach the database, every version moves on
  every lookup: caches are bypassed rather than trusted (fail safe).

The domains (:data:`DOMAIN_OF`) are what the caches depend on: IAM (users, groups, roles,
policies, attachments), access keys (users', STS sessions', nodes'), nodes (deregistration),
documents (session documents and preferences) and KMS keys. Tables written all the time that no
cache reads (sessions, tokens, recordings, the nodes' heartbeats, audit) count only locally, so
that busy writes never contend on a generation row.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import Connection, Engine, event, text

from hatchway.server.store import schema

log = logging.getLogger("hatchway.server.store.invalidation")

#: Seconds between two reads of the generation table by each process's follower.
POLL_INTERVAL = 0.25
#: The PostgreSQL notification channel.
CHANNEL = "hatchway_cache"

#: Cache domains followed across brokers, and the tables (or named counters) in each.
DOMAIN_OF: dict[str, str] = {
    "iam": "iam",
    schema.iam_entities.name: "iam",
    schema.iam_policies.name: "iam",
    schema.iam_policy_versions.name: "iam",
    schema.iam_attachments.name: "iam",
    schema.iam_inline.name: "iam",
    schema.iam_group_members.name: "iam",
    schema.access_keys.name: "access_keys",
    "nodes": "nodes",
    schema.documents.name: "documents",
    schema.document_versions.name: "documents",
    schema.kms_keys.name: "kms",
    schema.kms_aliases.name: "kms",
}
DOMAINS: tuple[str, ...] = tuple(sorted(set(DOMAIN_OF.values())))

_DIRTY = "hatchway_dirty_domains"  # Connection.info key: domains the open transaction changed


class SharedCounters:
    """Change counters shared by the processes of one broker: a file mapped into each, one
    row of 64-bit counters per process; a counter's value is the sum over the rows."""

    NAMES: tuple[str, ...] = (
        "iam",
        "nodes",
        *(table.name for table in schema.metadata.sorted_tables),
    )

    def __init__(self, path: Path, index: int, count: int) -> None:
        width = len(self.NAMES)
        size = 8 * width * count
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._cells = memoryview(self._map).cast("Q")
        self._slot = {name: i for i, name in enumerate(self.NAMES)}
        self._width = width
        self._count = count
        self._row = index * width

    def read(self, name: str) -> int:
        slot = self._slot.get(name)
        if slot is None:
            return 0
        cells, width = self._cells, self._width
        return sum(cells[p * width + slot] for p in range(self._count))

    def close(self) -> None:
        self._cells.release()
        self._map.close()

    def bump(self, name: str) -> None:
        slot = self._slot.get(name)
        if slot is not None:  # only this process writes its row: no lost updates
            cell = self._row + slot
            self._cells[cell] = (self._cells[cell] + 1) & 0xFFFFFFFFFFFFFFFF


def _libpq_url(engine: Engine) -> str:
    """The engine's URL as psycopg takes it (no SQLAlchemy driver suffix)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


_READ = f"SELECT domain, generation FROM {schema.cache_generation.name}"


def ensure_domains(conn: Connection) -> None:
    """A generation row for every domain (idempotent, also when brokers start together; a
    domain added later gets its row at the next start)."""
    from sqlalchemy.dialects import postgresql, sqlite

    have = {r[0] for r in conn.execute(text(_READ))}
    missing = [{"domain": d, "generation": 0} for d in DOMAINS if d not in have]
    if not missing:
        return
    table = schema.cache_generation
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), missing)
    else:
        conn.execute(sqlite.insert(table).on_conflict_do_nothing(), missing)


class DatabaseGenerations:
    """The generation rows of a PostgreSQL store, followed by a thread of this process."""

    def __init__(self, engine: Engine, interval: float = POLL_INTERVAL) -> None:
        self._engine = engine
        self._interval = interval
        self._seen: dict[str, int] = {}
        self._blind = True  # until the first read: every version moves (caches bypassed)
        self._tick = itertools.count(1 << 40)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.following = False  # start() was called: versions include the generations
        self._listeners: list[tuple[str, Callable[[], None]]] = []
        self.reads = 0  # how many times the table was read (tests, diagnostics)
        event.listen(engine, "commit", self._before_commit)
        event.listen(engine, "rollback", self._rolled_back)

    # -- writers --------------------------------------------------------------------------

    @staticmethod
    def mark(conn: Connection, domain: str) -> None:
        """``conn``'s transaction changed ``domain`` (its row is bumped at commit)."""
        dirty: set[str] | None = conn.info.get(_DIRTY)
        if dirty is None:
            dirty = conn.info[_DIRTY] = set()
        dirty.add(domain)

    @staticmethod
    def _before_commit(conn: Connection) -> None:
        dirty: set[str] | None = conn.info.pop(_DIRTY, None)
        if not dirty:
            return
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            for domain in sorted(dirty):  # one order for everyone: no lock-order deadlocks
                cur.execute(
                    f"UPDATE {schema.cache_generation.name} "
                    "SET generation = generation + 1 WHERE domain = %s",
                    (domain,),
                )
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, ",".join(sorted(dirty))))
        finally:
            cur.close()

    @staticmethod
    def _rolled_back(conn: Connection) -> None:
        conn.info.pop(_DIRTY, None)

    # -- readers --------------------------------------------------------------------------

    @property
    def blind(self) -> bool:
        """Not following (yet, or for now): every version moves on every lookup."""
        return self._blind

    def generation(self, domain: str) -> int:
        if self._blind:
            return next(self._tick)
        return self._seen.get(domain, 0)

    def subscribe(self, domain: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the follower's thread) when another process changes
        ``domain``."""
        self._listeners.append((domain, callback))

    def start(self) -> None:
        if self._thread is not None:
            return
        self.following = True
        self._thread = threading.Thread(target=self._run, name="cache-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _apply(self, rows: Iterable[tuple[str, int]]) -> None:
        new = {str(d): int(g) for d, g in rows}
        old, self._seen = self._seen, new
        was_blind, self._blind = self._blind, False
        self.reads += 1
        for domain, callback in self._listeners:
            if was_blind or old.get(domain) != new.get(domain):
                try:
                    callback()
                except Exception:
                    log.exception("a cache listener for %s failed", domain)

    def _run(self) -> None:
        import psycopg

        url = _libpq_url(self._engine)
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        self._apply(db.execute(_READ).fetchall())
                        # Wakes at the first notification, or after the interval anyway.
                        for _ in db.notifies(timeout=self._interval, stop_after=1):
                            pass
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not self._blind:
                    log.warning("cache follower lost the database (%s); caches bypassed", exc)
                self._blind = True
                self._stop.wait(self._interval)


class Invalidation:
    """The versions caches key on: this process's changes, the other processes' on this
    machine (:meth:`join_processes`) and, on PostgreSQL, every broker's (:meth:`follow`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local: dict[str, int] = {}
        self.shared: SharedCounters | None = None
        self.database: DatabaseGenerations | None = (
            DatabaseGenerations(engine) if engine.dialect.name == "postgresql" else None
        )

    def version(self, name: str) -> int:
        shared = self.shared
        value = shared.read(name) if shared is not None else self._local.get(name, 0)
        db = self.database
        if db is not None and db.following:
            domain = DOMAIN_OF.get(name)
            if domain is not None:
                value += db.generation(domain)
        return value

    def count(self, name: str) -> None:
        """This process changed ``name`` (seen by its own caches at once)."""
        self._local[name] = self._local.get(name, 0) + 1

    def publish(self, name: str) -> None:
        """A committed change of ``name``, for the other processes on this machine."""
        if self.shared is not None:
            self.shared.bump(name)

    def mark(self, conn: Connection | None, name: str) -> None:
        """``conn``'s transaction changed ``name``: for the other brokers, at its commit."""
        if self.database is not None and conn is not None:
            domain = DOMAIN_OF.get(name)
            if domain is not None:
                self.database.mark(conn, domain)

    def join_processes(self, path: Path, index: int, count: int) -> None:
        self.shared = SharedCounters(path, index, count)

    def follow(self) -> None:
        """Follow the other brokers' changes (PostgreSQL; nothing to follow on SQLite)."""
        if self.database is not None:
            self.database.start()

    def subscribe(self, domain: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on another thread) when another broker changes ``domain``."""
        if self.database is not None:
            self.database.subscribe(domain, callback)

    def close(self) -> None:
        if self.database is not None:
            self.database.stop()
        if self.shared is not None:
            self.shared.close()
            self.shared = None
