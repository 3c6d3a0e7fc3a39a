"""Run Command end to end: a real broker, a real agent (run as root, so commands run as root
as on AWS), boto3 and the real ``aws ssm send-command`` / ``get-command-invocation`` /
``list-command-invocations``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import (
    ACCOUNT,
    REGION,
    Agent,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
    user_with_policy,
)

TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Agent, Agent]]:
    b = start_broker(tmp_path_factory.mktemp("rc-broker") / "data")
    web = start_agent(b, tmp_path_factory.mktemp("rc-web") / "state")
    db = start_agent(b, tmp_path_factory.mktemp("rc-db") / "state")
    ssm = b.client("ssm")
    ssm.add_tags_to_resource(
        ResourceType="ManagedInstance",
        ResourceId=web.instance_id,
        Tags=[{"Key": "Role", "Value": "web"}],
    )
    ssm.add_tags_to_resource(
        ResourceType="ManagedInstance",
        ResourceId=db.instance_id,
        Tags=[{"Key": "Role", "Value": "db"}],
    )
    yield b, web, db
    web.stop()
    db.stop()
    stop_broker(b)


def wait_invocation(
    ssm: Any, command_id: str, instance_id: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            out: dict[str, Any] = ssm.get_command_invocation(
                CommandId=command_id, InstanceId=instance_id
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InvocationDoesNotExist":
                raise
        else:
            if out["Status"] in TERMINAL:
                return out
        assert time.monotonic() < deadline, f"command {command_id} did not finish"
        time.sleep(0.1)


def wait_command(ssm: Any, command_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        (cmd,) = ssm.list_commands(CommandId=command_id)["Commands"]
        if cmd["Status"] in TERMINAL:
            return dict(cmd)
        assert time.monotonic() < deadline, f"command {command_id} did not finish: {cmd}"
        time.sleep(0.1)


def run(ssm: Any, iid: str, *commands: str, **kw: Any) -> str:
    out = ssm.send_command(
        InstanceIds=[iid],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": list(commands), **kw.pop("parameters", {})},
        **kw,
    )
    return str(out["Command"]["CommandId"])


def test_success_as_root_with_output(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")
    sent = ssm.send_command(
        InstanceIds=[web.instance_id],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["id -u", "echo oops >&2"]},
        Comment="who am I",
    )["Command"]
    assert sent["Status"] == "Pending" and sent["StatusDetails"] == "Pending"
    assert sent["TargetCount"] == 1 and sent["Comment"] == "who am I"
    assert sent["MaxConcurrency"] == "50" and sent["MaxErrors"] == "0"
    assert sent["TimeoutSeconds"] == 3600
    cid = sent["CommandId"]
    inv = wait_invocation(ssm, cid, web.instance_id)
    assert inv["Status"] == "Success" and inv["StatusDetails"] == "Success"
    assert inv["ResponseCode"] == 0
    assert inv["StandardOutputContent"] == "0\n"  # root, as AWS's agent runs commands
    assert inv["StandardErrorContent"] == "oops\n"
    assert inv["PluginName"] == "aws:runShellScript"
    assert inv["ExecutionElapsedTime"].startswith("PT")
    assert inv["ExecutionStartDateTime"].endswith("Z")
    cmd = wait_command(ssm, cid)
    assert (cmd["Status"], cmd["StatusDetails"]) == ("Success", "Success")
    assert cmd["CompletedCount"] == 1 and cmd["ErrorCount"] == 0
    (listed,) = ssm.list_command_invocations(CommandId=cid, Details=True)["CommandInvocations"]
    (plugin,) = listed["CommandPlugins"]
    assert plugin["Name"] == "aws:runShellScript" and plugin["ResponseCode"] == 0
    assert plugin["Output"] == "0\n\n----------ERROR-------\noops\n"
    (brief,) = ssm.list_command_invocations(CommandId=cid)["CommandInvocations"]
    assert brief["CommandPlugins"] == []


def test_failure_exit_code(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")
    cid = run(ssm, web.instance_id, "echo before", "exit 3")
    inv = wait_invocation(ssm, cid, web.instance_id)
    assert (inv["Status"], inv["StatusDetails"], inv["ResponseCode"]) == ("Failed", "Failed", 3)
    assert inv["StandardOutputContent"] == "before\n"
    cmd = wait_command(ssm, cid)
    assert (cmd["Status"], cmd["StatusDetails"], cmd["ErrorCount"]) == ("Failed", "Failed", 1)


def test_execution_timeout(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")
    cid = run(
        ssm, web.instance_id, "echo started", "sleep 60", parameters={"executionTimeout": ["1"]}
    )
    inv = wait_invocation(ssm, cid, web.instance_id)
    assert (inv["Status"], inv["StatusDetails"]) == ("TimedOut", "Execution Timed Out")
    assert inv["ResponseCode"] == 137
    assert inv["StandardOutputContent"] == "started\n"
    cmd = wait_command(ssm, cid)
    assert (cmd["Status"], cmd["StatusDetails"]) == ("TimedOut", "Execution Timed Out")


def test_cancel_a_running_command(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")
    cid = run(ssm, web.instance_id, "echo started", "sleep 60")
    deadline = time.monotonic() + 20
    while ssm.list_command_invocations(CommandId=cid)["CommandInvocations"][0]["Status"] != (
        "InProgress"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ssm.cancel_command(CommandId=cid)
    inv = wait_invocation(ssm, cid, web.instance_id)
    assert (inv["Status"], inv["StatusDetails"]) == ("Cancelled", "Cancelled")
    cmd = wait_command(ssm, cid)
    assert (cmd["Status"], cmd["StatusDetails"]) == ("Cancelled", "Cancelled")


def test_output_truncation_as_aws(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")
    cid = run(
        ssm,
        web.instance_id,
        "head -c 30000 /dev/zero | tr '\\0' o",
        "head -c 9000 /dev/zero | tr '\\0' e >&2",
    )
    inv = wait_invocation(ssm, cid, web.instance_id)
    out, err = inv["StandardOutputContent"], inv["StandardErrorContent"]
    assert len(out) == 24000 and out.endswith("o--output truncated--")
    assert len(err) == 8000 and err.endswith("e--output truncated--")
    (listed,) = ssm.list_command_invocations(CommandId=cid, Details=True)["CommandInvocations"]
    output = listed["CommandPlugins"][0]["Output"]
    assert len(output) == 2500
    assert "\n---Output truncated---\n----------ERROR-------\n" in output
    assert output.endswith("\n---Error truncated----")


def test_targets_by_tag(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, db = stack
    ssm = b.client("ssm")
    sent = ssm.send_command(
        Targets=[{"Key": "tag:Role", "Values": ["db"]}],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["echo db"]},
    )["Command"]
    assert sent["Targets"] == [{"Key": "tag:Role", "Values": ["db"]}]
    assert sent["InstanceIds"] == [] and sent["TargetCount"] == 1
    inv = wait_invocation(ssm, sent["CommandId"], db.instance_id)
    assert inv["StandardOutputContent"] == "db\n"
    with pytest.raises(ClientError) as exc:
        ssm.get_command_invocation(CommandId=sent["CommandId"], InstanceId=web.instance_id)
    assert exc.value.response["Error"]["Code"] == "InvocationDoesNotExist"
    both = ssm.send_command(
        Targets=[{"Key": "tag:Role", "Values": ["db", "web"]}],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
    )["Command"]
    assert both["TargetCount"] == 2
    assert wait_command(ssm, both["CommandId"])["CompletedCount"] == 2
    none = ssm.send_command(
        Targets=[{"Key": "tag:Role", "Values": ["nobody"]}],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
    )["Command"]
    assert (none["Status"], none["StatusDetails"]) == ("Failed", "No Instances In Tag")


def test_custom_document_schema_2_2_steps(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")
    ssm.create_document(
        Name="Greet",
        DocumentType="Command",
        Content=json.dumps(
            {
                "schemaVersion": "2.2",
                "description": "two steps",
                "parameters": {"who": {"type": "String", "default": "world"}},
                "mainSteps": [
                    {
                        "action": "aws:runShellScript",
                        "name": "hello",
                        "inputs": {"runCommand": ["echo hello {{ who }}"]},
                    },
                    {
                        "action": "aws:runShellScript",
                        "name": "fail",
                        "inputs": {"runCommand": ["exit 5"]},
                    },
                ],
            }
        ),
    )
    cid = ssm.send_command(
        InstanceIds=[web.instance_id],
        DocumentName="Greet",
        Parameters={"who": ["x; touch /tmp/pwned-by-run-command"]},
    )["Command"]["CommandId"]
    wait_command(ssm, cid)
    hello = ssm.get_command_invocation(
        CommandId=cid, InstanceId=web.instance_id, PluginName="hello"
    )
    # The parameter is data, never shell code (docs/run-command.md, "Parameters").
    assert hello["StandardOutputContent"] == "hello x; touch /tmp/pwned-by-run-command\n"
    fail = ssm.get_command_invocation(CommandId=cid, InstanceId=web.instance_id, PluginName="fail")
    assert (fail["Status"], fail["ResponseCode"]) == ("Failed", 5)
    with pytest.raises(ClientError) as exc:
        ssm.get_command_invocation(CommandId=cid, InstanceId=web.instance_id)
    assert exc.value.response["Error"]["Code"] == "InvalidPluginName"
    (inv,) = ssm.list_command_invocations(CommandId=cid, Details=True)["CommandInvocations"]
    assert [p["Name"] for p in inv["CommandPlugins"]] == ["hello", "fail"]
    assert (inv["Status"], inv["StatusDetails"]) == ("Failed", "Failed")


def test_bad_input_gets_aws_errors(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")

    def code(**kw: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as exc:
            ssm.send_command(**kw)
        err = exc.value.response["Error"]
        return err["Code"], err["Message"]

    assert code(
        InstanceIds=["mi-0123456789abcdef0"],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
    ) == (
        "InvalidInstanceId",
        f"Instances [[mi-0123456789abcdef0]] not in a valid state for account {ACCOUNT}",
    )
    assert code(InstanceIds=[web.instance_id], DocumentName="NoSuchDoc")[0] == "InvalidDocument"
    # A Session document is not a Command document.
    assert code(InstanceIds=[web.instance_id], DocumentName="AWS-StartSSHSession")[0] == (
        "InvalidDocument"
    )
    assert code(InstanceIds=[web.instance_id], DocumentName="AWS-RunShellScript")[0] == (
        "InvalidParameters"  # commands is required
    )
    assert (
        code(
            InstanceIds=[web.instance_id],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["true"], "nope": ["x"]},
        )[0]
        == "InvalidParameters"
    )
    with pytest.raises(ClientError) as exc:
        ssm.get_command_invocation(
            CommandId="00000000-0000-0000-0000-000000000000", InstanceId=web.instance_id
        )
    assert exc.value.response["Error"]["Code"] == "InvalidCommandId"
    with pytest.raises(ClientError) as exc:
        ssm.cancel_command(CommandId="00000000-0000-0000-0000-000000000000")
    assert exc.value.response["Error"]["Code"] == "InvalidCommandId"


def test_access_denied_by_document_and_by_instance(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, db = stack
    doc_arn = f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ssm:SendCommand",
                "Resource": [doc_arn, f"arn:aws:ssm:*:*:managed-instance/{web.instance_id}"],
            },
            {
                "Effect": "Allow",
                "Action": ["ssm:GetCommandInvocation", "ssm:ListCommandInvocations"],
                "Resource": "*",
            },
        ],
    }
    key, secret = user_with_policy(b, "operator", policy)
    ssm = b.client("ssm", key, secret)
    cid = run(ssm, web.instance_id, "echo allowed")
    assert wait_invocation(ssm, cid, web.instance_id)["StandardOutputContent"] == "allowed\n"
    with pytest.raises(ClientError) as exc:
        run(ssm, db.instance_id, "echo denied")
    err = exc.value.response["Error"]
    assert err["Code"] == "AccessDeniedException"
    assert f"managed-instance/{db.instance_id}" in err["Message"]
    assert "ssm:SendCommand" in err["Message"]
    b.client("ssm").create_document(
        Name="Other",
        DocumentType="Command",
        Content=json.dumps(
            {
                "schemaVersion": "2.2",
                "description": "x",
                "mainSteps": [
                    {"action": "aws:runShellScript", "name": "s", "inputs": {"runCommand": ["id"]}}
                ],
            }
        ),
    )
    with pytest.raises(ClientError) as exc:
        ssm.send_command(InstanceIds=[web.instance_id], DocumentName="Other")
    err = exc.value.response["Error"]
    assert err["Code"] == "AccessDeniedException"
    assert f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/Other" in err["Message"]
    # Nothing was created by the refused calls.
    mine = ssm.list_command_invocations(InstanceId=db.instance_id)["CommandInvocations"]
    assert all("denied" not in json.dumps(i, default=str) for i in mine)
    with pytest.raises(ClientError) as exc:
        ssm.list_commands()
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert f"arn:aws:ssm:{REGION}:{ACCOUNT}:*" in exc.value.response["Error"]["Message"]


def test_max_concurrency_and_max_errors(stack: tuple[Broker, Agent, Agent]) -> None:
    """One node at a time, no error allowed: the first failure stops the rest (Terminated)."""
    b, web, db = stack
    ssm = b.client("ssm")
    sent = ssm.send_command(
        InstanceIds=[web.instance_id, db.instance_id],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["exit 1"]},
        MaxConcurrency="1",
        MaxErrors="0",
    )["Command"]
    cmd = wait_command(ssm, sent["CommandId"])
    assert (cmd["Status"], cmd["StatusDetails"]) == ("Failed", "Failed")
    invs = ssm.list_command_invocations(CommandId=sent["CommandId"])["CommandInvocations"]
    outcomes = sorted((i["Status"], i["StatusDetails"]) for i in invs)
    assert outcomes == [("Cancelled", "Terminated"), ("Failed", "Failed")]
    assert cmd["CompletedCount"] == 2 and cmd["ErrorCount"] == 1


def test_offline_node_is_delayed_and_gets_the_command_when_it_reconnects(
    stack: tuple[Broker, Agent, Agent], tmp_path_factory: pytest.TempPathFactory
) -> None:
    b, _, _ = stack
    ssm = b.client("ssm")
    node = start_agent(b, tmp_path_factory.mktemp("rc-late") / "state")
    node.stop()
    deadline = time.monotonic() + 20
    while (
        ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [node.instance_id]}]
        )["InstanceInformationList"][0]["PingStatus"]
        != "ConnectionLost"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cid = run(ssm, node.instance_id, "echo late")
    deadline = time.monotonic() + 20
    while True:
        (inv,) = ssm.list_command_invocations(CommandId=cid)["CommandInvocations"]
        if inv["Status"] == "Delayed":
            break
        assert inv["Status"] == "Pending" and time.monotonic() < deadline
        time.sleep(0.1)
    assert inv["StatusDetails"] == "Delayed"
    got = ssm.get_command_invocation(CommandId=cid, InstanceId=node.instance_id)
    assert got["ResponseCode"] == -1 and got["StandardOutputContent"] == ""
    assert got["ExecutionStartDateTime"] == "" and got["ExecutionElapsedTime"] == ""
    again = start_agent(b, node.state_dir)
    try:
        done = wait_invocation(ssm, cid, again.instance_id)
        assert (done["Status"], done["StandardOutputContent"]) == ("Success", "late\n")
    finally:
        again.stop()


def test_delivery_timeout(
    stack: tuple[Broker, Agent, Agent], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """TimeoutSeconds passes before the node comes back: Delivery Timed Out (the duty run with
    an injected clock on the broker's own database, as the broker runs it every second)."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from hatchway.server.base.crypto import SecretBox
    from hatchway.server.ops.commandduty import expire_commands
    from hatchway.server.runtime.state import ServerConfig, ServerState
    from hatchway.server.store import Store

    b, _, _ = stack
    ssm = b.client("ssm")
    node = start_agent(b, tmp_path_factory.mktemp("rc-gone") / "state")
    node.stop()
    cid = run(ssm, node.instance_id, "echo never", TimeoutSeconds=30)
    config = ServerConfig(data_dir=b.data_dir)
    store = Store(config.store_url)
    state = ServerState(config, store, SecretBox.from_dir(b.data_dir), [])
    try:
        assert asyncio.run(expire_commands(state, datetime.now(UTC))) == 0  # not yet
        later = datetime.now(UTC) + timedelta(seconds=31)
        assert asyncio.run(expire_commands(state, later)) == 1
    finally:
        state.audit_log.close()
        store.close()
    got = ssm.get_command_invocation(CommandId=cid, InstanceId=node.instance_id)
    assert (got["Status"], got["StatusDetails"]) == ("TimedOut", "Delivery Timed Out")
    assert got["ResponseCode"] == -1
    (cmd,) = ssm.list_commands(CommandId=cid)["Commands"]
    assert (cmd["Status"], cmd["StatusDetails"]) == ("TimedOut", "Delivery Timed Out")
    assert cmd["DeliveryTimedOutCount"] == 1 and cmd["ErrorCount"] == 0


def test_the_real_aws_cli(stack: tuple[Broker, Agent, Agent]) -> None:
    b, web, _ = stack
    sent = b.aws_json(
        "ssm",
        "send-command",
        "--instance-ids",
        web.instance_id,
        "--document-name",
        "AWS-RunShellScript",
        "--comment",
        "from the cli",
        "--parameters",
        'commands=["echo from-cli","uname -s"]',
        "--output-s3-bucket-name",
        "my-bucket",
    )["Command"]
    assert sent["DocumentName"] == "AWS-RunShellScript" and sent["Comment"] == "from the cli"
    assert sent["OutputS3BucketName"] == "my-bucket"
    cid = sent["CommandId"]
    wait_invocation(b.client("ssm"), cid, web.instance_id)
    got = b.aws_json(
        "ssm", "get-command-invocation", "--command-id", cid, "--instance-id", web.instance_id
    )
    assert got["Status"] == "Success" and got["StandardOutputContent"] == "from-cli\nLinux\n"
    listed = b.aws_json("ssm", "list-command-invocations", "--command-id", cid, "--details")[
        "CommandInvocations"
    ]
    assert listed[0]["CommandPlugins"][0]["Output"] == "from-cli\nLinux\n"
    assert listed[0]["CommandPlugins"][0]["OutputS3BucketName"] == "my-bucket"
    cmds = b.aws_json("ssm", "list-commands", "--command-id", cid)["Commands"]
    assert cmds[0]["Status"] == "Success"
    proc = b.aws(
        "ssm",
        "send-command",
        "--instance-ids",
        "mi-0123456789abcdef0",
        "--document-name",
        "AWS-RunShellScript",
        "--parameters",
        "commands=true",
    )
    assert proc.returncode != 0 and "(InvalidInstanceId)" in proc.stderr


def test_send_command_is_audited_with_its_authorizations(
    stack: tuple[Broker, Agent, Agent],
) -> None:
    b, web, _ = stack
    ssm = b.client("ssm")
    run(ssm, web.instance_id, "echo audited-marker")
    events = [json.loads(line) for line in (b.data_dir / "audit.jsonl").read_text().splitlines()]
    sends = [e for e in events if e["eventName"] == "SendCommand" and e["decision"] == "allowed"]
    last = sends[-1]
    assert last["requestParameters"]["Parameters"] == {"commands": ["echo audited-marker"]}
    resources = [a["resource"] for a in last["authorizations"]]
    assert resources == [
        f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript",
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:managed-instance/{web.instance_id}",
    ]


def test_nodes_running_aws_agent_are_refused(stack: tuple[Broker, Agent, Agent]) -> None:
    """A node whose agent is AWS's amazon-ssm-agent (its registration's AgentName) gets AWS's
    InvalidInstanceId until Hatchway speaks that agent's job messages (docs/run-command.md)."""
    import urllib.request

    b, _, _ = stack
    ssm = b.client("ssm")
    act = ssm.create_activation(IamRole="SSMServiceRole")
    body = {
        "ActivationId": act["ActivationId"],
        "ActivationCode": act["ActivationCode"],
        "AgentName": "amazon-ssm-agent",
        "AgentVersion": "3.3.0.0",
    }
    req = urllib.request.Request(
        b.url + "/hatchway/v1/register",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        iid = json.loads(resp.read())["InstanceId"]
    with pytest.raises(ClientError) as exc:
        run(ssm, iid, "true")
    assert exc.value.response["Error"]["Code"] == "InvalidInstanceId"
    assert exc.value.response["Error"]["Message"] == (
        f"Instances [[{iid}]] not in a valid state for account {ACCOUNT}"
    )
    assert ssm.list_commands(InstanceId=iid)["Commands"] == []


def test_run_command_user_as_configured(
    stack: tuple[Broker, Agent, Agent], tmp_path_factory: pytest.TempPathFactory
) -> None:
    b, _, _ = stack
    ssm = b.client("ssm")
    node = start_agent(
        b, tmp_path_factory.mktemp("rc-nobody") / "state", extra=("--run-command-user", "nobody")
    )
    try:
        cid = run(ssm, node.instance_id, "id -un", "pwd")
        inv = wait_invocation(ssm, cid, node.instance_id)
        assert inv["Status"] == "Success", inv
        user, cwd = inv["StandardOutputContent"].splitlines()
        assert user == "nobody" and "hatchway-command-" in cwd
    finally:
        node.stop()
