"""Counting the store's changes for the caches, within a process and across processes.

Every write bumps the counter of its table (or a named counter such as ``"iam"``) at once in
this process; caches key on :meth:`Changes.version`. With other processes sharing the store
(:meth:`Changes.join_processes`, the broker's ``--workers``), a change is published to them
through the shared counters only once its transaction commits: changes made inside an open
transaction wait in this thread's *pending* set until :meth:`Changes.end` says how it ended.
The mechanism itself (shared counters, PostgreSQL's generation rows) is :mod:`.invalidation`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Connection

from hatchway.server.store.invalidation import Invalidation, SharedCounters


class Changes:
    """This process's change counters and their publication (one per store)."""

    def __init__(self, invalidation: Invalidation, *, mark_in_database: bool) -> None:
        self.invalidation = invalidation
        # PostgreSQL: a change also marks its domain's generation row in the transaction
        # (SQLite's brokers are one machine's processes: the shared counters suffice).
        self._mark = mark_in_database
        self._local = threading.local()

    # -- a transaction's life -----------------------------------------------------------

    def begin(self) -> None:
        """A transaction opens on this thread (one at a time)."""
        if getattr(self._local, "open", False):
            raise RuntimeError("a store transaction is already open on this thread")
        if not hasattr(self._local, "pending"):
            self._local.pending = set()
        self._local.open = True

    def is_open(self) -> bool:
        return bool(getattr(self._local, "open", False))

    def end(self, *, committed: bool) -> None:
        """The thread's transaction ended: its changes become visible to the other processes
        if it committed, and are forgotten if not."""
        if not getattr(self._local, "open", False):
            return
        self._local.open = False
        pending: set[str] = self._local.pending
        if committed:
            for name in pending:
                self.invalidation.publish(name)
        pending.clear()

    # -- counting -----------------------------------------------------------------------

    def bump(self, name: str, conn: Connection | None = None) -> None:
        """Count a change of ``name`` (a table or a named counter), published to the other
        processes once committed; in ``conn``'s transaction when given, which on PostgreSQL
        tells the other brokers too."""
        inv = self.invalidation
        inv.count(name)
        if conn is not None and self._mark:
            inv.mark(conn, name)
        if inv.shared is not None:
            if getattr(self._local, "open", False):
                self._local.pending.add(name)
            else:
                inv.publish(name)

    def version(self, name: str) -> int:
        return self.invalidation.version(name)

    def invalidate_all(self) -> None:
        """Count a change of everything: caches built from writes that were then rolled back
        (or from a process that died before publishing its changes) are rebuilt."""
        for name in SharedCounters.NAMES:
            self.bump(name)

    # -- other processes and brokers ----------------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether other processes share the counters (:meth:`join_processes`)."""
        return self.invalidation.shared is not None

    def join_processes(self, path: Path, index: int, count: int) -> None:
        self.invalidation.join_processes(path, index, count)

    def follow(self) -> None:
        self.invalidation.follow()

    def close(self) -> None:
        self.invalidation.close()
