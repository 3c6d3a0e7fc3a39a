"""A third-party protocol client from a registry: the npm package ``ssm-session`` opens a shell
through the broker and runs a command. It never retransmits, acks every frame with odd
sequence numbers and writes garbage payload digests: the broker must cope."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Agent, Broker, start_agent, start_broker, stop_broker

CLIENT_DIR = Path(__file__).resolve().parent.parent / "thirdparty"
TARGET = "i-0e1f2a3b4c5d6e7f8"


def _unavailable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (CLIENT_DIR / "node_modules" / "ssm-session").exists():
        return "tests/thirdparty has no node_modules (make test installs them with npm)"
    return None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent]]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the third-party client is required in CI: {reason}")
        pytest.skip(reason)
    b = start_broker(tmp_path_factory.mktemp("npm") / "data")
    a = start_agent(b, tmp_path_factory.mktemp("npmnode") / "state", TARGET)
    yield b, a
    a.stop()
    stop_broker(b)


def test_ssm_session_npm_client_runs_a_command(setup: tuple[Broker, Agent]) -> None:
    broker, _ = setup
    s = broker.client("ssm").start_session(Target=TARGET)
    proc = subprocess.run(
        [
            "node",
            str(CLIENT_DIR / "ssm_session_client.js"),
            s["StreamUrl"],
            s["TokenValue"],
            "echo A=$((6*7)) W=$(tput cols)",
            "exit",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "A=42 W=120" in proc.stdout
    hist = broker.client("ssm").describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": s["SessionId"]}]
    )["Sessions"]
    assert hist and hist[0]["Status"] == "Terminated"
