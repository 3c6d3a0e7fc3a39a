"""A broker whose session timers run on a clock the test moves.

The idle timeout, the maximum session duration and the resume window are measured with the
broker's ``ServerState.clock`` (``time.monotonic`` in production; nothing but this module sets
it). A test makes a :class:`MovableClock` and passes it to ``start_broker(..., clock=...)``:
the broker is then started as ``python tests/harness/clock.py CLOCK_DIR server …``, which runs
the real ``hatchway`` command line with two additions, both in this file:

* ``ServerState.clock`` reads ``time.monotonic()`` plus the offset in ``CLOCK_DIR/offset``,
  which :meth:`MovableClock.advance` raises (the clock never goes back);
* the timers' sweep (``datachannel.sweep_timeouts``) runs every 50 ms instead of every second,
  and each pass is counted in ``CLOCK_DIR/sweeps``, so that :meth:`MovableClock.settle` can
  wait until a whole pass has run at the new time: a test learns that a timer did *not* fire
  without sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from pathlib import Path

SWEEP_INTERVAL = 0.05  # seconds between the timers' sweeps in a broker on a movable clock


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers see the old or the new value, never half of one


def _read_number(path: Path) -> float:
    try:
        return float(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0.0


class MovableClock:
    """The test's side: moves the broker's session clock forward, waits for the sweep."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.offset = 0.0
        _write(directory / "offset", "0")
        _write(directory / "sweeps", "0")

    def launcher(self) -> list[str]:
        """The command that starts ``hatchway`` with this clock (instead of ``bin/hatchway``)."""
        return [sys.executable, str(Path(__file__).resolve()), str(self.directory)]

    def advance(self, seconds: float) -> None:
        """Move the broker's session clock ``seconds`` forward (at once)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds
        _write(self.directory / "offset", repr(self.offset))

    def sweeps(self) -> int:
        """How many passes of the timers' sweep the broker has made."""
        return int(_read_number(self.directory / "sweeps"))

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until a whole sweep has run since now (two passes complete: the first may have
        read the clock before the last :meth:`advance`). ``timeout`` is a generous bound."""
        target = self.sweeps() + 2
        deadline = time.monotonic() + timeout
        while self.sweeps() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker's timers made no sweep in {timeout} s")
            await asyncio.sleep(0.05)


def _install(directory: Path) -> None:
    """The broker's side: the two hooks (see the module's docstring)."""
    from hatchway.server.process import main
    from hatchway.server.relay import datachannel
    from hatchway.server.runtime.state import ServerConfig, ServerState

    offset_file, sweeps_file = directory / "offset", directory / "sweeps"

    def clock() -> float:
        return time.monotonic() + _read_number(offset_file)

    build_state = main.build_state

    def build_with_clock(config: ServerConfig) -> tuple[ServerState, tuple[str, str] | None]:
        state, generated = build_state(config)
        state.clock = clock
        return state, generated

    main.build_state = build_with_clock

    sweep = datachannel.sweep_timeouts
    count = 0

    async def counted_sweep(state: ServerState) -> None:
        nonlocal count
        await sweep(state)
        count += 1
        _write(sweeps_file, str(count))

    datachannel.sweep_timeouts = counted_sweep
    enforce = datachannel.enforce_timeouts
    datachannel.enforce_timeouts = functools.partial(enforce, interval=SWEEP_INTERVAL)


if __name__ == "__main__":
    _install(Path(sys.argv[1]))
    from hatchway.cli.main import cli

    sys.argv = ["hatchway", *sys.argv[2:]]
    cli()
