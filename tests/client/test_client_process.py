"""The plugin as a process: run by the real ``aws ssm start-session``, and on a real PTY
(raw mode and its restore, SIGWINCH → Size, ``~.``, SIGTERM)."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakepeer import FakePeer
from harness.client import clean_aws_env, plugin_on_path, wait_sync

from hatchway.protocol import PayloadType

BIN = Path(sys.executable).parent


@pytest.fixture
def peer() -> Iterator[FakePeer]:
    p = FakePeer()
    p.start_in_thread()
    yield p
    p.stop_thread()


@pytest.fixture
def plugin_path(tmp_path: Path) -> str:
    """A PATH whose ``session-manager-plugin`` is ours (works without reinstalling)."""
    return plugin_on_path(tmp_path)


def test_aws_cli_runs_our_plugin(peer: FakePeer, plugin_path: str) -> None:
    env = clean_aws_env({"PATH": plugin_path})
    done = subprocess.run(
        [
            str(BIN / "aws"),
            "ssm",
            "start-session",
            "--target",
            "mi-0123456789abcdef0",
            "--endpoint-url",
            peer.url,
        ],
        input=b"uname\rexit\r",
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    (sid,) = peer.sessions
    out = done.stdout
    assert out.startswith(f"\nStarting session with SessionId: {sid}\n".encode())
    assert b"$ uname\rexit\r" in out
    assert out.endswith(f"\n\nExiting session with sessionId: {sid}.\n\n".encode())
    s = peer.sessions[sid]
    assert bytes(s.input) == b"uname\rexit\r"
    assert s.upgrade_headers[0]["Authorization"].startswith("AWS4-HMAC-SHA256")


class PtyPlugin:
    """The plugin on a PTY, started with the CLI's argv and env-var contract."""

    def __init__(
        self,
        peer: FakePeer,
        plugin_path: str,
        cols: int = 100,
        rows: int = 30,
        env: dict[str, str] | None = None,
    ) -> None:
        self.peer = peer
        response = peer.new_session()
        self.sid = response["SessionId"]
        self.master, self.slave = pty.openpty()
        self.set_size(cols, rows)
        self.attrs = termios.tcgetattr(self.slave)
        env = clean_aws_env(
            {
                "PATH": plugin_path,
                "AWS_SSM_START_SESSION_RESPONSE": json.dumps(response),
                **(env or {}),
            }
        )
        self.proc = subprocess.Popen(
            [
                "session-manager-plugin",
                "AWS_SSM_START_SESSION_RESPONSE",
                "us-east-1",
                "StartSession",
                "",
                json.dumps({"Target": "mi-0123456789abcdef0"}),
                peer.url,
            ],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
        )
        self.output = b""

    @property
    def session(self) -> Any:
        return self.peer.sessions[self.sid]

    def set_size(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def read_until(self, needle: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not in {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:
                    break

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 20) -> int:
        code = self.proc.wait(timeout)
        self.drain()
        return code

    def drain(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def raw(self) -> bool:
        lflag = termios.tcgetattr(self.slave)[3]
        return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def tty_plugin(peer: FakePeer, plugin_path: str) -> Iterator[PtyPlugin]:
    p = PtyPlugin(peer, plugin_path)
    yield p
    p.close()


def sizes(p: PtyPlugin) -> list[dict[str, int]]:
    return [json.loads(x) for x in p.session.sizes]


def test_raw_mode_keystrokes_and_restore_on_channel_closed(tty_plugin: PtyPlugin) -> None:
    p = tty_plugin
    p.read_until(b"$ ")
    wait_sync(lambda: p.session.sizes != [])
    assert p.raw()
    assert sizes(p) == [{"cols": 100, "rows": 30}]
    p.type(b"\x03\x1a\x04\x1c")  # Ctrl-C, Ctrl-Z, Ctrl-D, Ctrl-\ are just bytes in raw mode
    wait_sync(lambda: p.session.input.endswith(b"\x1c"))
    p.type(b"exit\r")
    assert p.wait() == 0
    assert bytes(p.session.input) == b"\x03\x1a\x04\x1cexit\r"
    assert termios.tcgetattr(p.slave) == p.attrs
    assert f"Exiting session with sessionId: {p.sid}.".encode() in p.output


def test_sigwinch_sends_size(tty_plugin: PtyPlugin) -> None:
    p = tty_plugin
    p.read_until(b"$ ")
    wait_sync(lambda: len(p.session.sizes) == 1)
    p.set_size(120, 40)
    p.proc.send_signal(signal.SIGWINCH)
    wait_sync(lambda: len(p.session.sizes) == 2)
    assert sizes(p)[-1] == {"cols": 120, "rows": 40}
    p.proc.send_signal(signal.SIGWINCH)  # same size: nothing new
    p.type(b"exit\r")
    assert p.wait() == 0
    assert len(p.session.sizes) == 2
    assert all(t != PayloadType.SIZE or b'"cols"' in x for _, t, x in p.session.payloads)


def test_tilde_dot_after_enter_terminates(tty_plugin: PtyPlugin) -> None:
    p = tty_plugin
    p.read_until(b"$ ")
    wait_sync(lambda: p.session.sizes != [])
    p.type(b"sleep 999\r")
    wait_sync(lambda: p.session.input.endswith(b"\r"))
    p.type(b"~.")
    assert p.wait() == 0
    assert p.session.terminated
    assert bytes(p.session.input) == b"sleep 999\r"  # ~. stayed local
    assert termios.tcgetattr(p.slave) == p.attrs
    assert f"Exiting session with sessionId: {p.sid}.".encode() in p.output


def test_sigterm_restores_the_terminal(tty_plugin: PtyPlugin) -> None:
    p = tty_plugin
    p.read_until(b"$ ")
    wait_sync(lambda: p.session.sizes != [])
    assert p.raw()
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == 128 + signal.SIGTERM
    assert termios.tcgetattr(p.slave) == p.attrs
    assert p.session.terminated


def test_signals_are_forwarded_as_bytes_without_a_tty(peer: FakePeer, plugin_path: str) -> None:
    """Piped stdin (no raw mode): SIGINT/SIGQUIT/SIGTSTP become 0x03/0x1c/0x1a
    (docs/reference/data-channel.md#shell-sessions)."""
    response = peer.new_session()
    s = peer.sessions[response["SessionId"]]
    env = clean_aws_env(
        {"PATH": plugin_path, "AWS_SSM_START_SESSION_RESPONSE": json.dumps(response)}
    )
    proc = subprocess.Popen(
        [
            "session-manager-plugin",
            "AWS_SSM_START_SESSION_RESPONSE",
            "us-east-1",
            "StartSession",
            "",
            json.dumps({"Target": "mi-0123456789abcdef0"}),
            peer.url,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        wait_sync(lambda: s.sizes != [])
        for count, signum in enumerate((signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP), 1):
            proc.send_signal(signum)
            wait_sync(functools.partial(lambda n: len(s.input) >= n, count))
        assert proc.stdin is not None
        proc.stdin.write(b"exit\r")
        proc.stdin.close()
        assert proc.wait(20) == 0
        assert bytes(s.input) == b"\x03\x1c\x1aexit\r"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
