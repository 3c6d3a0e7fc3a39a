"""Drivers for hatchway.client sessions in tests: pipes, a clean AWS environment, the plugin."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hatchway.client.aws import BotoControlPlane
from hatchway.client.session import Backoff, Session, SessionParams
from hatchway.client.terminal import TerminalIO

REGION = "us-east-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIATESTCLIENT000001",
    "AWS_SECRET_ACCESS_KEY": "test-secret-0000000000000000000000000000",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_MAX_ATTEMPTS": "1",
}


def clean_aws_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENV)
    env.update(extra or {})
    return env


class PipeClient:
    """A :class:`Session` with a pipe for stdin and BytesIO for stdout/stderr."""

    def __init__(self, response: dict[str, str], endpoint: str, **kw: Any) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.out = io.BytesIO()
        self.err = io.BytesIO()
        self.io = TerminalIO(self.read_fd, self.out, self.err, interactive=False)
        self.params = SessionParams(
            session_id=response["SessionId"],
            token=response["TokenValue"],
            stream_url=response["StreamUrl"],
            region=REGION,
            endpoint_url=endpoint,
            target="mi-0123456789abcdef0",
        )
        kw.setdefault("backoff", Backoff(initial=(0.05, 0.06)))
        kw.setdefault("eof_idle", 0.3)
        self.session = Session(
            self.params,
            api=BotoControlPlane(REGION, "", endpoint),
            io=self.io,
            signals=False,
            **kw,
        )

    def type(self, data: bytes) -> None:
        os.write(self.write_fd, data)

    def close_stdin(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_stdin()
        os.close(self.read_fd)

    @property
    def output(self) -> bytes:
        return self.out.getvalue()


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def wait_sync(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def plugin_on_path(tmp_path: Path) -> str:
    """A PATH whose ``session-manager-plugin`` is ours (works without reinstalling)."""
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "session-manager-plugin"
    exe.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m hatchway.client.session_manager_plugin "$@"\n'
    )
    exe.chmod(0o755)
    return f"{d}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
