"""CPU-heavy work off the event loop: a small pool of threads, and a count of what it runs.

A large SimulateCustomPolicy or SimulatePrincipalPolicy (up to 128 actions × 2,048 resources
over policies of 128 KiB) is pure computation; run on the event loop it would stall every
other request, ``/health`` and the nodes' channels included. :func:`run_cpu` runs it in this
pool instead: the loop keeps serving (the interpreter hands it the GIL every few
milliseconds). Two threads, so that one huge job does not hold up every other one, and a
queue rather than more threads beyond that. ``/health`` reports :func:`running` as
``cpuJobs``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

WORKERS = 2

_lock = threading.Lock()
_running = 0
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="hatchway-cpu")
        return _pool


def _job(fn: Callable[[], T]) -> T:
    global _running
    with _lock:
        _running += 1
    try:
        return fn()
    finally:
        with _lock:
            _running -= 1


def running() -> int:
    """How many CPU-heavy jobs are executing right now (queued ones not counted)."""
    return _running


async def run_cpu(fn: Callable[[], T]) -> T:
    """``fn()`` in the CPU pool; its exceptions propagate to the caller."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), _job, fn)
