"""Group commit on SQLite: the transactions of one event-loop iteration commit together.

The first transaction of a loop iteration opens one SQLite transaction (a *group*); it and every
later one in the same iteration run as savepoints inside it, and a callback scheduled with
``call_soon`` commits them all at once. An API call that wrote must not answer before its
writes are committed: :func:`begin_call` starts the call's list of groups (in its task's
context), :meth:`GroupCommit.joined` adds the open group to it, and :meth:`GroupCommit.settled`
waits for them and raises if one failed. See :meth:`hatchway.server.store.Store.batch_commits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from hatchway.server.base import metrics
from hatchway.server.base.ratelog import RateLimitedLog
from hatchway.server.store.engine import driver

log = logging.getLogger("hatchway.server.store")

#: The groups the current API call wrote in, by number.
_GROUPS: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "hatchway_store_groups", default=()
)
FAILED_KEPT = 10_000  # failed groups remembered for settled()
CALL_GROUPS_KEPT = 64  # groups remembered per call (long-lived tasks write forever)


def begin_call() -> None:
    """A new API call starts in this task: :meth:`GroupCommit.settled` answers for its writes
    only."""
    _GROUPS.set(())


class GroupCommit:
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

    def joined(self) -> None:
        """The current call writes in the open group: :meth:`settled` waits for it."""
        groups = _GROUPS.get()
        if not groups or groups[-1] != self.number:
            # Bounded: long-lived tasks (channels) write forever and never settle.
            _GROUPS.set((*groups[-(CALL_GROUPS_KEPT - 1) :], self.number))

    def fail(self, exc: BaseException) -> None:
        """The open group is lost (its commit failed, or SQLite rolled it all back)."""
        done, self.done = self.done, None
        self.last_ok = False
        self.failures.failure("store: a group of writes was rolled back", exc, where="group")
        self.failed[self.number] = exc
        while len(self.failed) > FAILED_KEPT:
            del self.failed[next(iter(self.failed))]
        self.on_failure()
        if done is not None and not done.done() and not self.loop.is_closed():
            done.set_result(exc)

    def finish_checkpoint(self) -> None:
        """Copy what the log gained since the background checkpoint (see
        :class:`.checkpoint.Checkpointer`)."""
        raw = driver(self.writer())
        if raw.in_transaction:  # a group is open: after its commit
            self.loop.call_soon(self.finish_checkpoint)
            return
        with contextlib.suppress(sqlite3.Error):
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def commit(self) -> None:
        if self.done is None:
            return
        raw = driver(self.writer())
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

    async def settled(self) -> None:
        """Wait until the writes of this call (since :func:`begin_call`) are committed, and
        raise if a group holding any of them failed."""
        groups = _GROUPS.get()
        if not groups:
            return
        if self.done is not None and groups[-1] == self.number:
            failure = await asyncio.shield(self.done)
            if failure is not None:
                raise failure
        for number in groups:
            failed = self.failed.get(number)
            if failed is not None:
                raise failed
