"""The activation code never stays on the agent's command line (issue 16, item 18): it comes
from ``HATCHWAY_ACTIVATION_CODE``, ``--activation-code-file`` (``-``: standard input), or
``--activation-code``, which the agent scrubs by re-executing itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    Broker,
    start_broker,
    stop_broker,
    wait_ping,
)
from harness.wsclient import Client

BIN = Path(sys.executable).parent
MI_ID = re.compile(r"mi-[0-9a-f]{17}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("actcode") / "data")
    yield b
    stop_broker(b)


def activation(broker: Broker) -> dict[str, str]:
    out: dict[str, str] = broker.client("ssm").create_activation(IamRole="SSMServiceRole")
    return out


# ----------------------------------------------- item 18: the activation code and the agent


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_activation_code_is_scrubbed_from_the_agents_command_line(
    broker: Broker, tmp_path: Path
) -> None:
    act = activation(broker)
    code = act["ActivationCode"]
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if k != "HATCHWAY_ACTIVATION_CODE"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "hatchway"),
                "agent",
                "--endpoint",
                broker.url,
                "--activation-id",
                act["ActivationId"],
                "--activation-code",
                code,
                "--state-dir",
                str(state),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while not (state / "registration.json").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        iid = json.loads((state / "registration.json").read_text())["instance_id"]
        assert wait_ping(broker, iid, "Online")
        cmdline = _cmdline(proc.pid)
        assert b"agent" in cmdline and b"--activation-id" in cmdline
        assert code.encode() not in cmdline, cmdline
        # Sessions do not inherit it either.
        s = broker.client("ssm").start_session(Target=iid)

        async def go() -> bytes:
            c = Client(s["StreamUrl"], s["TokenValue"])
            await c.open()
            await c.send(b"env; echo env-done.\r")
            r = await c.read_until(b"env-done.\r\n")
            await c.send(b"exit\r")
            await c.read_until(None)
            await c.close()
            return r.output

        assert code.encode() not in asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(10)


def test_activation_code_from_standard_input(broker: Broker, tmp_path: Path) -> None:
    act = activation(broker)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            str(BIN / "hatchway"),
            "agent",
            "--endpoint",
            broker.url,
            "--activation-id",
            act["ActivationId"],
            "--activation-code-file",
            "-",
            "--state-dir",
            str(state),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(act["ActivationCode"] + "\n")
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while not (state / "registration.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        iid = json.loads((state / "registration.json").read_text())["instance_id"]
        assert MI_ID.fullmatch(iid)
    finally:
        proc.terminate()
        proc.wait(10)
