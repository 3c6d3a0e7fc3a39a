"""Failures logged once per distinct cause per interval, with a count of the repeats.

A full disk or a stopped database makes every call fail the same way; logging each one with its
traceback flooded the log (490 tracebacks a minute). :class:`RateLimitedLog` logs the first
failure of a cause with its traceback, then at most one line per ``interval`` for that cause,
saying how many more there were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

MAX_CAUSES = 1000
"""Distinct causes remembered (beyond, the oldest are forgotten)."""


def cause_of(exc: BaseException) -> str:
    """What makes two failures "the same": the exception's type and its first words."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {text}"


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._seen: dict[str, list[float | int]] = {}  # cause -> [logged at, repeats since]

    def failure(self, message: str, exc: BaseException, *, where: str = "") -> bool:
        """Log ``message`` (with ``exc``'s traceback the first time) unless this cause was
        logged less than ``interval`` ago; returns whether it was logged."""
        cause = f"{where}|{cause_of(exc)}"
        now = self.clock()
        entry = self._seen.get(cause)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if entry is None:
            if len(self._seen) >= MAX_CAUSES:
                self._seen.pop(next(iter(self._seen)))
            self.logger.error("%s", message, exc_info=exc)
        else:
            repeats = int(entry[1])
            self.logger.error(
                "%s: %s (%d more time(s) in the last %.0f s)",
                message,
                cause_of(exc),
                repeats,
                now - entry[0],
            )
        self._seen[cause] = [now, 0]
        return True
