"""What the broker keeps, and for how long (docs/audit.md, "Retention and rotation").

* :func:`retention_duty` — one function, run every :data:`INTERVAL` by every broker (and,
  once brokers share a cluster lease, by the lease holder only): deletes recordings older than
  ``--recording-retention-days`` and audit rows older than ``--audit-retention-days``.
* :class:`Rotation` — ``audit.jsonl`` is rotated when it reaches ``--audit-rotate-size``
  bytes or ``--audit-rotate-age`` hours, keeping ``--audit-rotate-keep`` old files
  (``audit.jsonl.1`` the newest). Rotation is per host: each broker's own file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from hatchway.server.base import metrics
from hatchway.server.store import schema as t

log = logging.getLogger("hatchway.server.runtime.retention")

INTERVAL = 60.0
"""Seconds between runs of :func:`retention_duty`."""
AUDIT_BATCH = 5000
"""Audit rows deleted per transaction (a long backlog goes in several, never one huge one)."""


@dataclass
class Expired:
    recordings: list[str]
    audit_rows: int


def expire_audit(state: Any, now: datetime) -> int:
    """Delete audit rows older than ``--audit-retention-days`` (none when it is 0)."""
    days = float(getattr(state.config, "audit_retention_days", 0.0) or 0.0)
    if days <= 0:
        return 0
    cutoff = now - timedelta(days=days)
    c = t.audit.c
    total = 0
    while True:
        with state.store.transaction() as conn:
            seqs = [
                r[0]
                for r in conn.execute(
                    select(c.seq).where(c.time < cutoff).order_by(c.seq).limit(AUDIT_BATCH)
                )
            ]
            if seqs:
                conn.execute(delete(t.audit).where(c.seq.in_(seqs)))
        total += len(seqs)
        if len(seqs) < AUDIT_BATCH:
            break
    if total:
        log.info("deleted %d audit rows older than %s days", total, days)
    return total


def retention_duty(state: Any, now: datetime | None = None) -> Expired:
    """Everything past its retention goes: recordings, then audit rows."""
    when = now or datetime.now(UTC)
    return Expired(state.recordings.expire(when), expire_audit(state, when))


async def run(state: Any, interval: float = INTERVAL) -> None:
    """:func:`retention_duty` every ``interval`` seconds (first at start) until cancelled."""
    ticker = metrics.Ticker("retention", interval)
    while True:
        try:
            if state.leader():  # once across the cluster (docs/scale-out.md)
                await asyncio.to_thread(retention_duty, state)
        except Exception:
            log.exception("the retention duty failed; trying again later")
        await ticker.sleep()


class Rotation:
    """When and how ``audit.jsonl`` is rotated. ``clock`` (seconds) is injectable."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 0,
        max_age: float = 0.0,
        keep: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.keep = max(1, keep)
        self.clock = clock
        self.opened = clock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.max_age > 0

    def due(self, fd: int) -> bool:
        """Whether the file behind ``fd`` should be rotated now."""
        if not self.enabled:
            return False
        size = os.fstat(fd).st_size
        if self.max_bytes > 0 and size >= self.max_bytes:
            return True
        return self.max_age > 0 and size > 0 and self.clock() - self.opened >= self.max_age

    def moved(self, fd: int) -> bool:
        """Whether ``audit.jsonl`` is no longer the file behind ``fd`` (another process of the
        broker rotated it): then the writer reopens it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)

    def rotate(self, fd: int) -> None:
        """``audit.jsonl`` → ``.1`` → ``.2`` … (beyond ``keep``: deleted), under a lock so
        that the processes of one broker rotate it once."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.moved(fd):
                    return  # another process did it while we waited
                for n in range(self.keep, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{n}")
                    if n == self.keep:
                        with contextlib.suppress(FileNotFoundError):
                            older.unlink()
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
                self.path.rename(self.path.with_name(f"{self.path.name}.1"))
                log.info("rotated %s", self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def reopened(self) -> None:
        self.opened = self.clock()
