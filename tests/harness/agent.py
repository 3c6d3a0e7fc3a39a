"""A real node: ``hatchway agent`` as a subprocess, registered with a broker's activation."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.broker import BIN, Broker, store_args


@dataclass
class Agent:
    instance_id: str
    state_dir: Path
    proc: subprocess.Popen[str]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_agent(
    broker: Broker,
    state_dir: Path,
    instance_id: str | None = None,
    activation: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> Agent:
    """Create an activation (unless given), run ``hatchway agent``, wait until it is Online.

    An EC2-style ``instance_id`` is allowed for the activation first, as an operator does
    (``hatchway activation allow-instance-id``); the code reaches the agent through
    ``HATCHWAY_ACTIVATION_CODE``, never its command line."""
    ssm = broker.client("ssm")
    if activation is None and not (state_dir / "registration.json").exists():
        activation = ssm.create_activation(IamRole="SSMServiceRole")
        if instance_id and instance_id.startswith("i-"):
            allow_instance_id(broker, activation["ActivationId"], instance_id)
    args = [str(BIN / "hatchway"), "agent", "--endpoint", broker.url, "--state-dir", str(state_dir)]
    env = {k: v for k, v in os.environ.items() if k != "HATCHWAY_ACTIVATION_CODE"}
    if activation is not None:
        args += ["--activation-id", activation["ActivationId"]]
        env["HATCHWAY_ACTIVATION_CODE"] = activation["ActivationCode"]
    if instance_id:
        args += ["--instance-id", instance_id]
    if broker.ca:
        args += ["--ca-file", broker.ca]
    args += extra
    log = state_dir.parent / f"{state_dir.name}.log"
    out = open(log, "w")  # noqa: SIM115 - lives as long as the agent
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reg = state_dir / "registration.json"
        if reg.exists():
            iid = json.loads(reg.read_text())["instance_id"]
            if wait_ping(broker, iid, "Online", 0.5):
                return Agent(iid, state_dir, proc, log)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"agent did not come online:\n{log.read_text()}")


def allow_instance_id(broker: Broker, activation_id: str, *instance_ids: str) -> None:
    """``hatchway activation allow-instance-id``, the operator's command (run in-process)."""
    from click.testing import CliRunner

    from hatchway.cli.main import cli

    result = CliRunner().invoke(
        cli, ["activation", "allow-instance-id", *store_args(broker), activation_id, *instance_ids]
    )
    assert result.exit_code == 0, result.output


def wait_ping(broker: Broker, instance_id: str, status: str, timeout: float = 15) -> bool:
    ssm = broker.client("ssm")
    deadline = time.monotonic() + timeout
    while True:
        items = ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]
        )["InstanceInformationList"]
        if items and items[0]["PingStatus"] == status:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
