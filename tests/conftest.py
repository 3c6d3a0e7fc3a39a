"""Fixtures shared by every test directory; the helpers are in the ``harness`` package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness.postgres import postgres_cluster, why_unavailable

# No config file of the machine's or of the working directory (/etc/hatchway/hatchway.toml,
# ./hatchway.toml) reaches the commands the tests start: tests that want one pass --config.
os.environ["HATCHWAY_CONFIG"] = os.devnull


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL started for this test session (never skipped in CI)."""
    reason = why_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    with postgres_cluster() as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def private_tmux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every ``tmux`` the tests start talks to a server of this test run's own.

    Run from inside tmux, ``$TMUX`` would point the tests' ``tmux new-session`` at the user's
    server (which refuses to nest sessions); beside any other tmux, they would share its default
    socket. Unsetting ``$TMUX`` and giving the run its own ``TMUX_TMPDIR`` isolates both ways;
    the private server is killed at the end.
    """
    saved = {k: os.environ.get(k) for k in ("TMUX", "TMUX_PANE", "TMUX_TMPDIR")}
    os.environ.pop("TMUX", None)
    os.environ.pop("TMUX_PANE", None)
    os.environ["TMUX_TMPDIR"] = str(tmp_path_factory.mktemp("tmux"))
    try:
        yield
    finally:
        if shutil.which("tmux"):
            subprocess.run(["tmux", "kill-server"], capture_output=True, check=False, timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
