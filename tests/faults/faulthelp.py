"""Helpers of the fault suite: a broker and an agent behind a :class:`TcpProxy`.

No fixtures here (other fault tests bring their own): tests/server/conftest.py's
``start_broker`` / ``start_agent`` are loaded by path, as tests/client does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "client"))

from clienthelp import PipeClient, wait_for  # noqa: E402

__all__ = ["PipeClient", "wait_for"]


def _server_conftest() -> ModuleType:
    name = "hatchway_tests_server_conftest"
    if name in sys.modules:
        return sys.modules[name]
    path = HERE.parent / "server" / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


srv = _server_conftest()


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
