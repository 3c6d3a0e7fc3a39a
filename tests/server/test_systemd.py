"""systemd units (packaging/systemd) checked by ``systemd-analyze``, and the readiness
protocol (``Type=notify``) of the broker and the agent against a local notify socket."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Broker, start_agent, start_broker, stop_broker
from harness.wsclient import Client

from hatchway.cli import notify

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
BIN = Path(sys.executable).parent
INSTALLED = "/opt/hatchway/bin/hatchway"
TARGET = "i-0badc0ffee1234567"


def installed_units(tmp_path: Path) -> Path:
    """The units as docs/deploy.md installs them, with ExecStart pointing at this
    environment's ``hatchway`` instead of /opt/hatchway (verify checks it is executable)."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert INSTALLED in text
        (out / unit.name).write_text(text.replace(INSTALLED, str(BIN / "hatchway")))
    return out


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing (.ci/run installs systemd)"
    return path


@pytest.mark.parametrize("unit", ["hatchway-server.service", "hatchway-agent.service"])
def test_units_pass_systemd_analyze_verify(analyze: str, tmp_path: Path, unit: str) -> None:
    units = installed_units(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(units / unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "hatchway" not in result.stderr  # no warning about our unit


def settings(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_broker_unit_is_hardened_and_the_agent_unit_is_not(
    analyze: str, tmp_path: Path
) -> None:
    broker = settings(UNITS / "hatchway-server.service")
    for key, value in {
        "Type": "notify",
        "User": "hatchway",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "StateDirectory": "hatchway",
    }.items():
        assert broker[key] == [value], key
    agent = settings(UNITS / "hatchway-agent.service")
    assert agent["Type"] == ["notify"] and agent["Restart"] == ["always"]
    assert "User" not in agent  # root: it runs sessions as other users
    for key in ("ProtectSystem", "PrivateTmp", "NoNewPrivileges", "ProtectHome"):
        assert key not in agent, key  # would apply to every session's shell
    units = installed_units(tmp_path)
    score = subprocess.run(
        [analyze, "security", "--offline=yes", str(units / "hatchway-server.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", score.stdout + score.stderr)
    assert m is not None, score.stdout + score.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK"
    sysusers = (UNITS / "hatchway.sysusers").read_text()
    assert re.search(r"^u hatchway - ", sysusers, re.M)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


def test_notify_sends_datagrams_and_hides_the_socket_from_children(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    notify.reset()
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify("READY=1") is False  # not under systemd: nothing to do
    notify.reset()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify.notify("READY=1\nSTATUS=up") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    assert "NOTIFY_SOCKET" not in os.environ  # what the process starts does not inherit it
    assert notify.notify("STOPPING=1") is True
    assert sock.recv(4096) == b"STOPPING=1"
    notify.reset()


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hatchway-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        notify.reset()
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
        notify.reset()
        monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
        assert notify.notify("READY=1") is False  # logged, never raised
    finally:
        notify.reset()
        sock.close()


def test_the_broker_and_the_agent_tell_systemd_when_they_are_ready(
    notify_socket: tuple[socket.socket, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    b: Broker = start_broker(tmp_path / "data", env={"NOTIFY_SOCKET": path})
    try:
        ready = sock.recv(4096).decode()
        assert ready == f"READY=1\nSTATUS=listening on {b.url}"
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        agent = start_agent(b, tmp_path / "agent", TARGET)
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1\nSTATUS=node ") and b.url in ready
            assert TARGET in ready
            # A session's shell does not inherit the notify socket.
            s = b.client("ssm").start_session(Target=TARGET)

            async def go() -> bytes:
                c = Client(s["StreamUrl"], s["TokenValue"])
                await c.open()
                await c.send(b"echo notify=[$NOTIFY_SOCKET]\r")
                r = await c.read_until(b"notify=[]")
                await c.send(b"exit\r")
                await c.read_until(None)
                await c.close()
                return r.output

            assert b"notify=[]" in asyncio.run(go())
        finally:
            agent.stop()
        b.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    finally:
        stop_broker(b)
