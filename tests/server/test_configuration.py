"""A broker and an agent configured by a file and the environment (issue 14, items 1 and 3).

``hatchway server`` and ``hatchway agent`` run with (almost) no flags: their settings come
from a TOML file named by ``$HATCHWAY_CONFIG`` and from ``HATCHWAY_<COMMAND>_<FLAG>``
variables, with flags > environment > file. The agent reports Hatchway's own name and version.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from harness import ADMIN_KEY, ADMIN_SECRET, BIN, Broker

from hatchway import __version__
from hatchway.protocol import AGENT_VERSION as HANDSHAKE_VERSION


def _wait_for(log: Path, proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {pattern!r} in:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path]]:
    """A broker whose listen address, data dir, region and account come from the file, the
    account overridden by the environment, and the region by the environment and a flag."""
    tmp = tmp_path_factory.mktemp("configured")
    cfg = tmp / "hatchway.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
data-dir = "{tmp / "data"}"
region = "eu-west-1"
account-id = "111111111111"
ping-interval = 5.0

[agent]
state-dir = "{tmp / "node"}"
log-level = "DEBUG"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHWAY_")}
    env.update(
        HATCHWAY_CONFIG=str(cfg),
        HATCHWAY_ADMIN_ACCESS_KEY_ID=ADMIN_KEY,
        HATCHWAY_ADMIN_SECRET_ACCESS_KEY=ADMIN_SECRET,
        HATCHWAY_SERVER_ACCOUNT_ID="222222222222",  # environment > file
        HATCHWAY_SERVER_REGION="ap-south-1",  # the flag below > environment > file
    )
    log = tmp / "broker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "hatchway"), "server", "--region", "eu-central-1"],
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    url = _wait_for(log, proc, r"listening on (http://[\d.]+:\d+)").group(1)
    broker = Broker(url, tmp / "data", proc, log)
    yield broker, cfg
    _stop(proc)


def test_broker_settings_from_file_environment_and_flags(
    configured: tuple[Broker, Path],
) -> None:
    broker, _ = configured
    assert (broker.data_dir / "hatchway.db").exists()  # data-dir from the file
    ident = broker_client(broker, "sts", "eu-central-1").get_caller_identity()
    assert ident["Account"] == "222222222222"  # the environment over the file
    broker_client(broker, "ssm", "eu-central-1").describe_instance_information()
    for region in ("eu-west-1", "ap-south-1", "us-east-1"):  # the file's, the env's, default
        with pytest.raises(botocore.exceptions.ClientError) as err:
            broker_client(broker, "ssm", region).describe_instance_information()
        assert err.value.response["Error"]["Code"] == "InvalidSignatureException", err.value
    with urllib.request.urlopen(broker.url + "/health", timeout=10) as resp:
        health = json.load(resp)
        assert (health["status"], health["version"]) == ("ok", __version__)


def test_agent_from_file_reports_hatchway_version(configured: tuple[Broker, Path]) -> None:
    broker, cfg = configured
    ssm = broker_client(broker, "ssm", "eu-central-1")
    act = ssm.create_activation(IamRole="SSMServiceRole")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHWAY_")}
    env.update(
        HATCHWAY_CONFIG=str(cfg),
        HATCHWAY_AGENT_ENDPOINT=broker.url,  # required: satisfied by the environment
        HATCHWAY_AGENT_ACTIVATION_ID=act["ActivationId"],
        HATCHWAY_ACTIVATION_CODE=act["ActivationCode"],  # the existing name still works
    )
    log = cfg.parent / "agent.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "hatchway"), "agent"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        _wait_for(log, proc, r"registered as (mi-\w+)")
        reg = json.loads((cfg.parent / "node" / "registration.json").read_text())  # state-dir
        iid = reg["instance_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            items = ssm.describe_instance_information(
                Filters=[{"Key": "InstanceIds", "Values": [iid]}]
            )["InstanceInformationList"]
            if items and items[0]["PingStatus"] == "Online":
                break
            time.sleep(0.1)
        assert items and items[0]["PingStatus"] == "Online", log.read_text()
        # Hatchway's version, not a borrowed AWS agent version...
        assert items[0]["AgentVersion"] == __version__
        assert __version__ != HANDSHAKE_VERSION  # ...which the data channel still announces
        assert "DEBUG" in log.read_text()  # log-level from the file
    finally:
        _stop(proc)


def broker_client(broker: Broker, service: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=broker.url,
        region_name=region,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(retries={"max_attempts": 1}),
    )
