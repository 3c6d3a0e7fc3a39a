"""The terminal as a person sees it: tmux runs the real ``aws ssm start-session`` with our
``session-manager-plugin`` on PATH; ``send-keys`` types, ``capture-pane`` reads the screen."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_client_broker import TARGET, srv

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"), reason="tmux is not installed"
)


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "api-workers"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    # With API workers, the CLI's StartSession and the plugin's TerminateSession reach a
    # worker, the data channel the broker's own process.
    b = srv.start_broker(
        tmp_path_factory.mktemp("tmux-broker") / "data", "--workers", str(request.param)
    )
    a = srv.start_agent(b, tmp_path_factory.mktemp("tmux-node") / "state", TARGET)
    yield b
    a.stop()
    srv.stop_broker(b)


class Tmux:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def wait(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared on screen:\n{screen}")
            time.sleep(0.1)


def _env(broker: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
        AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
        AWS_DEFAULT_REGION=srv.REGION,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        PATH=f"{BIN}:{env.get('PATH', '')}",
        TERM="xterm-256color",
    )
    return env


def test_aws_cli_start_session_in_tmux(stack: object) -> None:
    broker = stack
    name = f"hw-{uuid.uuid4().hex[:8]}"
    cmd = (
        f"{BIN / 'aws'} --endpoint-url {broker.url} ssm start-session "  # type: ignore[attr-defined]
        f"--target {TARGET}; echo CLI-EXIT=$?; sleep 30"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd],
        env=_env(broker),
        check=True,
        timeout=10,
    )
    t = Tmux(name)
    try:
        screen = t.wait("Starting session with SessionId:")
        session_id = screen.split("Starting session with SessionId:")[1].split()[0]
        t.wait("~$")  # the prompt (capture-pane trims trailing spaces)
        t.keys("echo $((6*7))", "Enter")
        t.wait("\n42")
        # Resize: the shell sees the new width.
        t.run("resize-window", "-t", name, "-x", "123", "-y", "30")
        time.sleep(1.0)
        t.keys("tput cols", "Enter")
        t.wait("\n123")
        # Ctrl-C interrupts the remote command, not the session.
        t.keys("sleep 100", "Enter")
        time.sleep(0.5)
        t.keys("C-c")
        t.keys("echo still-here-$((2*2))", "Enter")
        t.wait("still-here-4")
        t.keys("exit", "Enter")
        t.wait(f"Exiting session with sessionId: {session_id}.")
        t.wait("CLI-EXIT=0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)
    ssm = broker.client("ssm")  # type: ignore[attr-defined]
    hist = ssm.describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": session_id}]
    )["Sessions"]
    assert [s["Status"] for s in hist] == ["Terminated"]
