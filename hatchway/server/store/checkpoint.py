"""SQLite's write-ahead log, checkpointed off the event loop while commits are grouped."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

#: SQLite's default: a commit checkpoints once the log holds this many pages.
AUTOCHECKPOINT = 1000
#: Seconds between the background thread's passive checkpoints while commits are grouped.
CHECKPOINT_INTERVAL = 0.25
#: Log pages (4 KiB) from which the writer finishes a checkpoint so that the log starts over.
RESTART_FRAMES = 1000


class Checkpointer:
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
