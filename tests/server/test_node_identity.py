"""Node identity and revocation (issue 16, items 6 and 20), through a running broker, the
real ``hatchway agent`` and ``hatchway`` commands, boto3 and the data channel.

* The broker chooses a node's id (``mi-`` + 17 hex digits); an ``i-`` id only where the
  operator allowed it for the activation (``hatchway activation allow-instance-id``).
* Every node can be revoked at once (``DeregisterManagedInstance`` for ``mi-``,
  ``hatchway nodes deregister`` for ``i-``): credentials, sessions, control channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError
from click.testing import CliRunner
from harness import (
    ADMIN_KEY,
    ADMIN_SECRET,
    REGION,
    Agent,
    Broker,
    allow_instance_id,
    start_agent,
    start_broker,
    stop_broker,
)
from harness.wsclient import Client

from hatchway.cli.main import cli

BIN = Path(sys.executable).parent
EC2_ID = "i-0c0ffee0c0ffee0c0"
MI_ID = re.compile(r"mi-[0-9a-f]{17}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("nodeid") / "data")
    yield b
    stop_broker(b)


def register(broker: Broker, body: bytes | dict[str, Any], method: str = "POST") -> Any:
    """POST /hatchway/v1/register as an agent does (anonymous): (status, JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        broker.url + "/hatchway/v1/register",
        data=data if method == "POST" else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def activation(broker: Broker) -> dict[str, str]:
    out: dict[str, str] = broker.client("ssm").create_activation(IamRole="SSMServiceRole")
    return out


def node_sts(broker: Broker, answer: dict[str, str]) -> Any:
    return broker.client("sts", answer["AccessKeyId"], answer["SecretAccessKey"])


def listed(broker: Broker, instance_id: str) -> bool:
    items = broker.client("ssm").describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]
    )["InstanceInformationList"]
    return bool(items)


# ------------------------------------------------------------------ item 6: who picks the id


def test_the_broker_chooses_the_id_and_refuses_an_unallowed_ec2_id(broker: Broker) -> None:
    act = activation(broker)
    status, answer = register(broker, {**act, "InstanceId": "i-02573cafcfEXAMPLE"})
    assert status == 400
    assert answer["__type"] == "InvalidInstanceId"
    assert "does not allow" in answer["message"]
    assert not listed(broker, "i-02573cafcfEXAMPLE")
    # Refused without spending the activation's one registration:
    status, answer = register(broker, {**act, "ComputerName": "web-1"})
    assert status == 200, answer
    assert MI_ID.fullmatch(answer["InstanceId"]), answer["InstanceId"]
    assert listed(broker, answer["InstanceId"])
    ident = node_sts(broker, answer).get_caller_identity()
    assert ident["Arn"].endswith(f"/{answer['InstanceId']}")


def test_the_operator_allows_an_ec2_id_for_one_activation(broker: Broker) -> None:
    act, other = activation(broker), activation(broker)
    allow_instance_id(broker, act["ActivationId"], EC2_ID)
    # The allowance is the activation's: another activation still may not take the id.
    status, answer = register(broker, {**other, "InstanceId": EC2_ID})
    assert (status, answer["__type"]) == (400, "InvalidInstanceId")
    status, answer = register(broker, {**act, "InstanceId": EC2_ID})
    assert status == 200, answer
    assert answer["InstanceId"] == EC2_ID
    # Registered: allowing it again (to catch it with a new node) is refused.
    third = activation(broker)
    refused = operator(broker, third["ActivationId"], EC2_ID)
    assert refused.exit_code == 1
    assert "registered already" in refused.output
    for bad in ("mi-0123456789abcdef0", "i-xyz", "i-0123456789abcdef0123"):
        out = operator(broker, third["ActivationId"], bad)
        assert out.exit_code == 1 and "not an EC2-style instance id" in out.output, bad
    # Revoked through the documented command (botocore refuses i- ids client-side):
    with pytest.raises(ParamValidationError):
        broker.client("ssm").deregister_managed_instance(InstanceId=EC2_ID)
    done = hatchway_deregister(broker, EC2_ID)
    assert done.returncode == 0, done.stderr
    assert not listed(broker, EC2_ID)
    with pytest.raises(ClientError) as err:
        node_sts(broker, answer).get_caller_identity()
    assert err.value.response["Error"]["Code"] == "InvalidClientTokenId"
    with pytest.raises(ClientError) as err:
        _unvalidated_ssm(broker).deregister_managed_instance(InstanceId=EC2_ID)
    assert err.value.response["Error"]["Code"] == "InvalidInstanceId"


def operator(broker: Broker, *args: str) -> Any:
    """``hatchway activation allow-instance-id`` (in-process: the same command, faster)."""
    return CliRunner().invoke(
        cli, ["activation", "allow-instance-id", "--data-dir", str(broker.data_dir), *args]
    )


def hatchway_deregister(
    broker: Broker, instance_id: str, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    return subprocess.run(
        [str(BIN / "hatchway"), "nodes", "deregister", instance_id, "--endpoint-url", broker.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_deregistering_an_ec2_id_is_authorized_on_its_arn(broker: Broker, tmp_path: Path) -> None:
    """The ``i-`` exemption is from the model's length rule only: IAM still decides."""
    act = activation(broker)
    allow_instance_id(broker, act["ActivationId"], "i-0badc0de0badc0de1")
    status, _ = register(broker, {**act, "InstanceId": "i-0badc0de0badc0de1"})
    assert status == 200
    iam = broker.client("iam")
    iam.create_user(UserName="other-nodes-admin")
    iam.put_user_policy(
        UserName="other-nodes-admin",
        PolicyName="p",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "ssm:DeregisterManagedInstance",
                        "Resource": "arn:aws:ec2:*:*:instance/i-0ffffffffffffffff",
                    }
                ],
            }
        ),
    )
    k = iam.create_access_key(UserName="other-nodes-admin")["AccessKey"]
    out = hatchway_deregister(broker, "i-0badc0de0badc0de1", k["AccessKeyId"], k["SecretAccessKey"])
    assert out.returncode == 1 and "AccessDeniedException" in out.stderr
    assert listed(broker, "i-0badc0de0badc0de1")
    # The AWS CLI sends it too with a profile's `parameter_validation = false`.
    config = tmp_path / "aws-config"
    config.write_text("[default]\nparameter_validation = false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ADMIN_KEY,
        AWS_SECRET_ACCESS_KEY=ADMIN_SECRET,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    cli_run = subprocess.run(
        [
            str(BIN / "aws"),
            "--endpoint-url",
            broker.url,
            "ssm",
            "deregister-managed-instance",
            "--instance-id",
            "i-0badc0de0badc0de1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert cli_run.returncode == 0, cli_run.stderr
    assert not listed(broker, "i-0badc0de0badc0de1")
    # Anything else that is not an mi- id is still the model's ValidationException.
    ssm = _unvalidated_ssm(broker)
    with pytest.raises(ClientError) as err:
        ssm.deregister_managed_instance(InstanceId="x-1")
    assert err.value.response["Error"]["Code"] == "ValidationException"


def _unvalidated_ssm(broker: Broker) -> Any:
    return boto3.client(
        "ssm",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )


# ------------------------------------------------- item 20: revocation ends sessions at once


def _history(broker: Broker, sid: str) -> dict[str, Any]:
    found = broker.client("ssm").describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": sid}]
    )["Sessions"]
    assert found, f"{sid} is not in History"
    out: dict[str, Any] = found[0]
    return out


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _revoke_during_a_session(broker: Broker, agent: Agent, revoke: Any) -> None:
    """A shell session is open; ``revoke()`` must end it on both sides, with its reason."""
    s = broker.client("ssm").start_session(Target=agent.instance_id)

    async def go() -> tuple[int, Any]:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(b"echo pid=$$ end$((1+1))\r")
        r = await c.read_until(b" end2")
        shell = int(re.findall(rb"pid=(\d+) end2", r.output)[-1])
        await asyncio.to_thread(revoke)
        r = await c.read_until(None, 15)
        await c.close()
        return shell, r

    shell, r = asyncio.run(go())
    assert r.closed is not None, "the client's data channel stayed open"
    assert "was deregistered" in r.closed.output
    assert _gone(shell), "the node's shell kept running"
    hist = _history(broker, s["SessionId"])
    assert hist["Status"] == "Terminated"
    assert hist["Details"] == f"The managed node {agent.instance_id} was deregistered."
    assert not listed(broker, agent.instance_id)
    # Its credentials are refused, and its control channel stays closed.
    creds = dict(
        line.split(" = ", 1)
        for line in (agent.state_dir / "credentials").read_text().splitlines()
        if " = " in line
    )
    with pytest.raises(ClientError):
        broker.client(
            "sts", creds["aws_access_key_id"], creds["aws_secret_access_key"]
        ).get_caller_identity()
    assert broker.client("ssm").get_connection_status(Target=agent.instance_id)["Status"] == (
        "notconnected"
    )
    assert "code 4001" in agent.log.read_text()


def test_deregister_managed_instance_ends_the_nodes_sessions(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """An mi- node, revoked with boto3. With ``--workers`` (the one-process broker is the
    next test's) the call runs in an API worker, the relay and control channel in the
    primary."""
    b = start_broker(tmp_path_factory.mktemp("dereg-workers") / "data", "--workers", "1")
    agent = start_agent(b, tmp_path_factory.mktemp("dereg-w") / "state")
    try:
        assert MI_ID.fullmatch(agent.instance_id)
        _revoke_during_a_session(
            b,
            agent,
            lambda: b.client("ssm").deregister_managed_instance(InstanceId=agent.instance_id),
        )
    finally:
        agent.stop()
        stop_broker(b)


def test_hatchway_nodes_deregister_ends_an_ec2_id_nodes_sessions(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    agent = start_agent(broker, tmp_path_factory.mktemp("dereg-i") / "state", "i-0123abcd4567ef890")
    try:
        assert agent.instance_id == "i-0123abcd4567ef890"

        def revoke() -> None:
            out = hatchway_deregister(broker, agent.instance_id)
            assert out.returncode == 0, out.stderr

        _revoke_during_a_session(broker, agent, revoke)
    finally:
        agent.stop()
