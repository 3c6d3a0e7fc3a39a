"""Sessions and nodes through the real clients: the seed document end to end.

A broker and a registered agent (``i-02573cafcfEXAMPLE``, as in the seed) run as processes;
users get the seed's policies; ``aws ssm start-session`` and boto3 decide as AWS does.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
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
    wait_ping,
)

TARGET = "i-02573cafcfEXAMPLE"
INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{TARGET}"
RUN_SHELL = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/SSM-SessionManagerRunShell"
CHECK = {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}
SESSIONS = [
    {
        "Effect": "Allow",
        "Action": ["ssm:DescribeSessions", "ssm:GetConnectionStatus"],
        "Resource": "*",
    },
    {
        "Effect": "Allow",
        "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
        "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*",
    },
]


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [*statements, *SESSIONS]}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(
        tmp_path_factory.mktemp("broker") / "data",
        "--session-token-ttl",
        "3",
        "--ping-interval",
        "1",
    )
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("node") / "state", TARGET)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def users(broker: Broker, node: Agent) -> dict[str, tuple[str, str]]:
    return {
        "plain": user_with_policy(
            broker,
            "plain",
            _policy({"Effect": "Allow", "Action": "ssm:StartSession", "Resource": [INSTANCE]}),
        ),
        "seed": user_with_policy(
            broker,
            "seed",
            _policy(
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": [INSTANCE, RUN_SHELL],
                    "Condition": CHECK,
                }
            ),
        ),
        "ssh": user_with_policy(
            broker,
            "ssh",
            _policy(
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": [INSTANCE, "arn:aws:ssm:*:*:document/AWS-StartSSHSession"],
                    "Condition": CHECK,
                }
            ),
        ),
    }


def _denied(exc: pytest.ExceptionInfo[ClientError], resource: str, user: str) -> None:
    err = exc.value.response["Error"]
    assert err["Code"] == "AccessDeniedException"
    assert err["Message"] == (
        f"User: arn:aws:iam::{ACCOUNT}:user/{user} is not authorized to perform: "
        f"ssm:StartSession on resource: {resource} because no identity-based policy allows "
        "the ssm:StartSession action"
    )


def test_node_registered_online_with_private_state(broker: Broker, node: Agent) -> None:
    info = broker.aws_json("ssm", "describe-instance-information")["InstanceInformationList"]
    (item,) = [i for i in info if i["InstanceId"] == TARGET]
    assert item["PingStatus"] == "Online"
    assert item["ResourceType"] == "EC2Instance"
    assert item["IamRole"] == "SSMServiceRole"
    for name in ("credentials", "registration.json"):
        mode = stat.S_IMODE(os.stat(node.state_dir / name).st_mode)
        assert mode == 0o600, name
    stored = "".join(p.read_text() for p in node.state_dir.iterdir())
    assert "ActivationCode" not in stored
    status = broker.aws_json("ssm", "get-connection-status", "--target", TARGET)
    assert status == {"Target": TARGET, "Status": "connected"}


def test_seed_condition_denies_omitted_document(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    key, secret = users["seed"]
    ssm = broker.client("ssm", key, secret)
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=TARGET)
    _denied(exc, INSTANCE, "seed")
    proc = broker.aws("ssm", "start-session", "--target", TARGET, key=key, secret=secret)
    assert proc.returncode != 0
    assert "AccessDeniedException" in proc.stderr and INSTANCE in proc.stderr


def test_seed_condition_allows_the_named_default_document(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    ssm = broker.client("ssm", *users["seed"])
    out = ssm.start_session(Target=TARGET, DocumentName="SSM-SessionManagerRunShell")
    assert out["SessionId"].startswith("seed-")
    assert len(out["SessionId"].split("-")[-1]) == 17
    assert out["StreamUrl"] == (
        f"{broker.url.replace('http://', 'ws://')}/v1/data-channel/"
        f"{out['SessionId']}?role=publish_subscribe"
    )
    assert out["TokenValue"]
    ssm.terminate_session(SessionId=out["SessionId"])


def test_seed_condition_denies_another_document(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    ssm = broker.client("ssm", *users["seed"])
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=TARGET, DocumentName="AWS-StartSSHSession")
    _denied(exc, f"arn:aws:ssm:{REGION}::document/AWS-StartSSHSession", "seed")


def test_without_condition_the_default_document_is_implicit(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    ssm = broker.client("ssm", *users["plain"])
    out = ssm.start_session(Target=TARGET)
    sessions = ssm.describe_sessions(
        State="Active", Filters=[{"key": "SessionId", "value": out["SessionId"]}]
    )
    (s,) = sessions["Sessions"]
    assert s["DocumentName"] == "SSM-SessionManagerRunShell"
    assert s["Status"] == "Connecting"
    assert s["Owner"] == f"arn:aws:iam::{ACCOUNT}:user/plain"
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=TARGET, DocumentName="SSM-SessionManagerRunShell")
    _denied(exc, RUN_SHELL, "plain")
    ssm.terminate_session(SessionId=out["SessionId"])


def test_ssh_document_needs_its_own_grant(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    ssm = broker.client("ssm", *users["ssh"])
    out = ssm.start_session(
        Target=TARGET, DocumentName="AWS-StartSSHSession", Parameters={"portNumber": ["22"]}
    )
    ssm.terminate_session(SessionId=out["SessionId"])
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=TARGET)
    _denied(exc, INSTANCE, "ssh")


def test_aws_cli_runs_our_plugin_which_needs_open_data_channel(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    # Our session-manager-plugin (on PATH) signs the data-channel upgrade like AWS's plugin
    # >= 1.2.688: the user then also needs ssmmessages:OpenDataChannel on the session.
    key, secret = users["plain"]
    proc = broker.aws(
        "ssm", "start-session", "--target", TARGET, "--reason", "no-odc", key=key, secret=secret
    )
    assert proc.returncode != 0
    key, secret = user_with_policy(
        broker,
        "dcuser",
        _policy(
            {"Effect": "Allow", "Action": "ssm:StartSession", "Resource": [INSTANCE]},
            {
                "Effect": "Allow",
                "Action": "ssmmessages:OpenDataChannel",
                "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*",
            },
        ),
    )
    proc = broker.aws(
        "ssm", "start-session", "--target", TARGET, "--reason", "cli", key=key, secret=secret
    )
    assert proc.returncode == 0, proc.stderr
    assert "Starting session with SessionId: dcuser-" in proc.stdout
    history = broker.client("ssm").describe_sessions(
        State="History", Filters=[{"key": "Owner", "value": f"arn:aws:iam::{ACCOUNT}:user/dcuser"}]
    )
    assert [s.get("Reason") for s in history["Sessions"]] == ["cli"]


def test_resume_terminate_and_history(broker: Broker, users: dict[str, tuple[str, str]]) -> None:
    ssm = broker.client("ssm", *users["plain"])
    out = ssm.start_session(Target=TARGET, Reason="resume me")
    again = ssm.resume_session(SessionId=out["SessionId"])
    assert again["TokenValue"] and again["TokenValue"] != out["TokenValue"]
    assert ssm.terminate_session(SessionId=out["SessionId"])["SessionId"] == out["SessionId"]
    assert ssm.terminate_session(SessionId=out["SessionId"])["SessionId"] == out["SessionId"]
    after = ssm.resume_session(SessionId=out["SessionId"])
    assert "TokenValue" not in after
    hist = ssm.describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": out["SessionId"]}]
    )
    (s,) = hist["Sessions"]
    assert s["Status"] == "Terminated" and s["EndDate"] >= s["StartDate"]
    assert s["Reason"] == "resume me"


def test_sessions_of_other_users_cannot_be_terminated(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    mine = broker.client("ssm", *users["plain"]).start_session(Target=TARGET)
    other = broker.client("ssm", *users["ssh"])
    with pytest.raises(ClientError) as exc:
        other.terminate_session(SessionId=mine["SessionId"])
    err = exc.value.response["Error"]
    assert err["Code"] == "AccessDeniedException"
    assert f"session/{mine['SessionId']}" in err["Message"]
    with pytest.raises(ClientError):
        other.resume_session(SessionId=mine["SessionId"])
    broker.client("ssm").terminate_session(SessionId=mine["SessionId"])


def test_unused_token_expires_and_the_session_ends(
    broker: Broker, users: dict[str, tuple[str, str]]
) -> None:
    ssm = broker.client("ssm", *users["plain"])
    out = ssm.start_session(Target=TARGET)
    time.sleep(3.5)  # the broker was started with --session-token-ttl 3
    hist = ssm.describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": out["SessionId"]}]
    )
    assert [s["Status"] for s in hist["Sessions"]] == ["Terminated"]


def test_unknown_or_offline_target_is_not_connected(broker: Broker, node: Agent) -> None:
    ssm = broker.client("ssm")
    for target in ("i-0123456789abcdef0", "mi-0123456789abcdef0", "not-a-target"):
        with pytest.raises(ClientError) as exc:
            ssm.start_session(Target=target)
        assert exc.value.response["Error"]["Code"] == "TargetNotConnected"
        assert exc.value.response["Error"]["Message"] == f"{target} is not connected."
    assert ssm.get_connection_status(Target="i-0123456789abcdef0")["Status"] == "notconnected"


def test_bad_input_is_refused_with_aws_errors(broker: Broker) -> None:
    ssm = broker.client("ssm")
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target="x" * 401)
    err = exc.value.response["Error"]
    assert err["Code"] == "ValidationException"
    assert err["Message"].startswith("1 validation error detected: Value '")
    assert (
        "at 'target' failed to satisfy constraint: Member must have length less than or "
        "equal to 400" in err["Message"]
    )
    with pytest.raises(ClientError) as exc:
        ssm.describe_sessions(
            State="Active", Filters=[{"key": "Status", "value": "Connected"}], NextToken="forged"
        )
    assert exc.value.response["Error"]["Code"] == "InvalidNextToken"


def test_activation_errors_and_limits(broker: Broker, tmp_path: Path) -> None:
    ssm = broker.client("ssm")
    act = ssm.create_activation(
        IamRole="SSMServiceRole", RegistrationLimit=1, DefaultInstanceName="edge"
    )
    bad = subprocess.run(
        [
            str(Path(sys.executable).with_name("hatchway")),
            "agent",
            "--endpoint",
            broker.url,
            "--activation-id",
            act["ActivationId"],
            "--activation-code",
            "wrong-code-000000000",
            "--state-dir",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and "InvalidActivation" in bad.stderr
    assert not (tmp_path / "bad" / "credentials").exists()
    listed = ssm.describe_activations(
        Filters=[{"FilterKey": "ActivationIds", "FilterValues": [act["ActivationId"]]}]
    )
    (a,) = listed["ActivationList"]
    assert a["RegistrationsCount"] == 0 and a["DefaultInstanceName"] == "edge"
    ssm.delete_activation(ActivationId=act["ActivationId"])
    with pytest.raises(ClientError) as exc:
        ssm.delete_activation(ActivationId=act["ActivationId"])
    assert exc.value.response["Error"]["Code"] == "InvalidActivationId"


def test_agent_reconnects_after_the_broker_restarts(tmp_path: Path) -> None:
    b = start_broker(tmp_path / "data", "--ping-interval", "1")
    port = int(b.url.rsplit(":", 1)[1])
    agent = start_agent(b, tmp_path / "node")
    try:
        stop_broker(b)
        time.sleep(1.5)  # the agent notices and starts backing off
        b2 = start_broker(tmp_path / "data", "--ping-interval", "1", port=port)
        try:
            assert wait_ping(b2, agent.instance_id, "Online", 40)
            ssm = b2.client("ssm")
            assert ssm.get_connection_status(Target=agent.instance_id)["Status"] == "connected"
            agent.stop()
            assert wait_ping(b2, agent.instance_id, "ConnectionLost", 15)
            ssm.deregister_managed_instance(InstanceId=agent.instance_id)
            info = ssm.describe_instance_information()["InstanceInformationList"]
            assert agent.instance_id not in [i["InstanceId"] for i in info]
            with pytest.raises(ClientError) as exc:
                ssm.deregister_managed_instance(InstanceId=agent.instance_id)
            assert exc.value.response["Error"]["Code"] == "InvalidInstanceId"
        finally:
            stop_broker(b2)
    finally:
        agent.stop()


def test_audit_records_decisions(broker: Broker, users: dict[str, tuple[str, str]]) -> None:
    key, secret = users["seed"]
    with pytest.raises(ClientError):
        broker.client("ssm", key, secret).start_session(Target=TARGET)
    hatchway = str(Path(sys.executable).with_name("hatchway"))
    # The store receives audit rows in batches within ~50 ms (the JSON line is immediate).
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run(
            [
                hatchway,
                "audit",
                "--data-dir",
                str(broker.data_dir),
                "--event",
                "StartSession",
                "--decision",
                "denied",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        if out.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    events = [json.loads(line) for line in out.splitlines()]
    ev = events[-1]
    assert ev["userIdentity"]["arn"] == f"arn:aws:iam::{ACCOUNT}:user/seed"
    assert ev["authorizations"][0]["resource"] == INSTANCE
    assert ev["authorizations"][0]["decision"] == "implicitDeny"
    assert "because no identity-based policy allows" in ev["denialMessage"]
    lines = (broker.data_dir / "audit.jsonl").read_text().splitlines()
    assert any(json.loads(x)["eventID"] == ev["eventID"] for x in lines)


def test_document_and_parameter_errors_create_no_session(broker: Broker, node: Agent) -> None:
    ssm = broker.client("ssm")

    def count() -> int:
        return sum(len(ssm.describe_sessions(State=s)["Sessions"]) for s in ("Active", "History"))

    before = count()
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=TARGET, DocumentName="NoSuchDocument")
    assert exc.value.response["Error"]["Code"] == "InvalidDocument"
    for bad in ({"portNumber": ["not-a-port"]}, {"noSuchParameter": ["1"]}):
        with pytest.raises(ClientError) as exc:
            ssm.start_session(
                Target=TARGET, DocumentName="AWS-StartPortForwardingSession", Parameters=bad
            )
        assert exc.value.response["Error"]["Code"] == "InvalidParameters", bad
    ok = ssm.start_session(
        Target=TARGET,
        DocumentName="AWS-StartPortForwardingSession",
        Parameters={"portNumber": ["8080"], "localPortNumber": ["0"]},
    )
    ssm.terminate_session(SessionId=ok["SessionId"])
    assert count() == before + 1


# -- issue 15 item 5: targets resolve case-insensitively ---------------------------------------


def test_a_lowercased_target_reaches_the_registered_node(broker: Broker, node: Agent) -> None:
    """ssh lowercases ``%h``: AWS's ProxyCommand recipe sends ``i-02573cafcfexample``."""
    ssm = broker.client("ssm")
    out = ssm.start_session(Target=TARGET.lower())
    (s,) = ssm.describe_sessions(
        State="Active", Filters=[{"key": "SessionId", "value": out["SessionId"]}]
    )["Sessions"]
    assert s["Target"] == TARGET
    ssm.terminate_session(SessionId=out["SessionId"])
    proc = broker.aws(
        "ssm", "start-session", "--target", "i-02573CAFCFEXAMPLE", "--document-name", "nope"
    )
    assert "TargetNotConnected" not in proc.stderr  # resolved; the document is what fails
    assert "InvalidDocument" in proc.stderr


def test_a_deny_on_the_registered_id_holds_whatever_the_case(broker: Broker, node: Agent) -> None:
    key, secret = user_with_policy(
        broker,
        "casey",
        _policy(
            {"Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*"},
            {"Effect": "Deny", "Action": "ssm:StartSession", "Resource": INSTANCE},
        ),
    )
    ssm = broker.client("ssm", key, secret)
    for spelling in (TARGET, TARGET.lower(), TARGET.upper().replace("I-", "i-")):
        with pytest.raises(ClientError) as exc:
            ssm.start_session(Target=spelling)
        err = exc.value.response["Error"]
        assert err["Code"] == "AccessDeniedException", spelling
        assert f"on resource: {INSTANCE} with an explicit deny" in err["Message"], spelling


# -- issue 15 item 6: AWS-owned documents ---------------------------------------------------


def test_aws_owned_documents_of_other_kinds_exist(broker: Broker, node: Agent) -> None:
    ssm = broker.client("ssm")
    for name, kind in (
        ("AWS-StartPortForwardingSessionToSocket", "Session"),
        ("AWS-PasswordReset", "Session"),
        ("AWS-RunShellScript", "Command"),
    ):
        d = broker.aws_json("ssm", "describe-document", "--name", name)["Document"]
        assert d["Owner"] == "Amazon" and d["DocumentType"] == kind, name
    run = json.loads(ssm.get_document(Name="AWS-RunShellScript")["Content"])
    assert run["parameters"]["commands"]["type"] == "StringList"
    assert run["parameters"]["executionTimeout"]["default"] == "3600"
    reset = json.loads(ssm.get_document(Name="AWS-PasswordReset")["Content"])
    linux = reset["properties"]["linux"]
    assert linux == {"commands": "passwd {{username}}", "runAsElevated": True}
    # A Command document is not for Session Manager: AWS's text (its troubleshooting page).
    proc = broker.aws(
        "ssm", "start-session", "--target", TARGET, "--document-name", "AWS-RunShellScript"
    )
    assert proc.returncode != 0
    assert (
        "An error occurred (InvalidDocument) when calling the StartSession operation: "
        "Document type: 'Command' is not supported. Only type: 'Session' is supported for "
        "Session Manager." in proc.stderr
    )
    with pytest.raises(ClientError) as exc:
        ssm.start_session(
            Target=TARGET,
            DocumentName="AWS-PasswordReset",
            Parameters={"username": ["bad user;"]},
        )
    assert exc.value.response["Error"]["Code"] == "InvalidParameters"
    out = ssm.start_session(
        Target=TARGET,
        DocumentName="AWS-StartPortForwardingSessionToSocket",
        Parameters={"portNumber": ["22"], "localUnixSocket": ["/tmp/x.sock"]},
    )
    ssm.terminate_session(SessionId=out["SessionId"])


# -- issue 15 item 7: DescribeInstanceInformation as AWS -------------------------------------


def _os_release() -> dict[str, str]:
    out = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip().strip("\"'")
    return out


def test_instance_information_of_an_ec2_node(broker: Broker, node: Agent) -> None:
    ssm = broker.client("ssm")
    (item,) = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [TARGET]}]
    )["InstanceInformationList"]
    for absent in ("ActivationId", "RegistrationDate", "Name"):
        assert absent not in item, absent  # AWS reports these for mi- nodes only
    release = _os_release()
    assert item["PlatformName"] == release["NAME"]  # "Ubuntu", "Debian GNU/Linux", …
    assert item["PlatformVersion"] == release["VERSION_ID"]
    got = ssm.describe_instance_information(
        Filters=[{"Key": "AssociationStatus", "Values": ["Success"]}]
    )
    assert got["InstanceInformationList"] == []  # no associations in Hatchway
    listed = broker.aws_json(
        "ssm", "describe-instance-information", "--filters", "Key=PingStatus,Values=Online"
    )["InstanceInformationList"]
    assert TARGET in [i["InstanceId"] for i in listed]
    with pytest.raises(ClientError) as exc:
        ssm.describe_instance_information(Filters=[{"Key": "PingStatus", "Values": ["Up"]}])
    err = exc.value.response["Error"]
    assert err["Code"] == "InvalidInstanceInformationFilterValue"


def test_access_denied_on_actions_without_resource_types_names_the_region(broker: Broker) -> None:
    deny = {"Effect": "Deny", "Action": "ssm:ListDocuments", "Resource": "*"}
    key, secret = user_with_policy(broker, "nolist", _policy(deny))
    ssm = broker.client("ssm", key, secret)
    where = f"arn:aws:ssm:{REGION}:{ACCOUNT}:*"
    with pytest.raises(ClientError) as exc:
        ssm.describe_instance_information()
    assert exc.value.response["Error"]["Message"] == (
        f"User: arn:aws:iam::{ACCOUNT}:user/nolist is not authorized to perform: "
        f"ssm:DescribeInstanceInformation on resource: {where} because no identity-based "
        "policy allows the ssm:DescribeInstanceInformation action"
    )
    with pytest.raises(ClientError) as exc:
        ssm.list_documents()
    assert exc.value.response["Error"]["Message"] == (
        f"User: arn:aws:iam::{ACCOUNT}:user/nolist is not authorized to perform: "
        f"ssm:ListDocuments on resource: {where} with an explicit deny in an identity-based "
        "policy"
    )
