"""Helpers of the fault suite: a broker and an agent behind a :class:`TcpProxy`.

No fixtures here (other fault tests bring their own): the broker and agent are the harness's
(``srv`` is :mod:`harness`).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness as srv
from harness.client import PipeClient, wait_for

HERE = Path(__file__).resolve().parent

__all__ = ["PipeClient", "srv", "wait_for"]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def session_status(broker: Any, sid: str) -> tuple[str, str]:
    """(Status, Details) of a session, Active or History."""
    ssm = broker.client("ssm")
    for state in ("Active", "History"):
        found = ssm.describe_sessions(State=state, Filters=[{"key": "SessionId", "value": sid}])
        if found["Sessions"]:
            s = found["Sessions"][0]
            return str(s["Status"]), str(s.get("Details", ""))
    return "missing", ""


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` (a generous deadline, never a sleep "long enough")."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def gate_dir() -> Path:
    """A directory the session's user (ssm-user) can look into: commands wait on a file."""
    d = Path(tempfile.mkdtemp(prefix="hatchway-gate-"))
    d.chmod(0o755)
    return d


def numbered_lines(out: bytes, prefix: str) -> list[int]:
    return [int(m) for m in re.findall(rf"{prefix}-(\d+)\b".encode(), out)]


def admin_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
        AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
        AWS_DEFAULT_REGION=srv.REGION,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_MAX_ATTEMPTS="1",
    )
    return env
