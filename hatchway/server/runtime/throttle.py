"""Per-principal throttling of API calls: a token bucket each (``--throttle-rate``,
``--throttle-burst``). Moved here from ``front/limits.py``: the state holds the buckets."""

from __future__ import annotations

import time
from collections.abc import Callable


class Throttle:
    """A token bucket per principal: ``burst`` requests at once, ``rate`` per second after.
    A rate of 0 turns throttling off."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, when)

    def allow(self, principal: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, when = self.buckets.get(principal, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if len(self.buckets) > 100_000:  # full buckets carry nothing: forget them
            self.buckets = {
                k: v
                for k, v in self.buckets.items()
                if v[0] + (now - v[1]) * self.rate < self.burst
            }
        if tokens < 1.0:
            self.buckets[principal] = (tokens, now)
            return False
        self.buckets[principal] = (tokens - 1.0, now)
        return True
