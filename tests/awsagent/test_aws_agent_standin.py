"""AWS's agent's dialect against a real broker on TLS (issue 13), with a Python stand-in.

CI cannot build AWS's amazon-ssm-agent, so ``standin.StandIn`` speaks its dialect
(registration, RSA-signed role token, UpdateInstanceInformation, CreateControlChannel, the
control channel's AgentMessages, CreateDataChannel and the data channel with its handshake),
and the sessions are driven by the real ``aws ssm start-session`` with Hatchway's plugin.
``test_aws_agent_real.py`` runs AWS's real agent when its binaries are at hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import botocore.exceptions
import harness
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from standin import (  # noqa: E402
    ControlChannel,
    StandIn,
    agent_message,
    next_agent_message,
    public_key_text,
    xml_token,
)

from hatchway.protocol import (  # noqa: E402
    Deliver,
    PayloadType,
    Role,
    SendBytes,
    Stream,
    build_handshake_complete,
    build_handshake_request,
    session_type_action,
)
from hatchway.protocol.payloads import HandshakeRequest, build_agent_session_state  # noqa: E402
from hatchway.server.base.tls import LocalCA, local_ca  # noqa: E402

srv = harness
REGION = srv.REGION
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return local_ca(tmp_path_factory.mktemp("awsagent-tls") / "ca")


@pytest.fixture(scope="module")
def broker(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(
        tmp_path_factory.mktemp("awsagent-broker") / "data",
        "--tls-cert",
        str(ca.cert),
        "--tls-key",
        str(ca.key),
        "--ping-interval",
        "1",
        ca=str(ca.ca_cert),
    )
    yield b
    srv.stop_broker(b)


def _activation(broker: Any) -> dict[str, str]:
    out: dict[str, str] = broker.client("ssm").create_activation(IamRole="SSMServiceRole")
    return out


def _info(broker: Any, iid: str) -> dict[str, Any]:
    items = broker.client("ssm").describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [iid]}]
    )["InstanceInformationList"]
    assert len(items) == 1
    info: dict[str, Any] = items[0]
    return info


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_registration_credentials_and_health(broker: Any, ca: LocalCA) -> None:
    act = _activation(broker)

    async def main() -> None:
        async with StandIn(broker.url, str(ca.ca_cert), REGION) as node:
            # A wrong code is refused in AWS's shape, and registers nothing.
            status, out = await node.ssm_unsigned(
                "RegisterManagedInstance",
                {
                    "ActivationCode": "x" * 20,
                    "ActivationId": act["ActivationId"],
                    "PublicKey": public_key_text(node.key),
                    "PublicKeyType": "Rsa",
                    "Fingerprint": node.fingerprint,
                },
            )
            assert status == 400 and out["__type"] == "InvalidActivation", out
            status, out = await node.ssm_unsigned(
                "RegisterManagedInstance",
                {
                    "ActivationCode": act["ActivationCode"],
                    "ActivationId": act["ActivationId"],
                    "PublicKey": "A" * 392,
                    "PublicKeyType": "Rsa",
                    "Fingerprint": node.fingerprint,
                },
            )
            assert status == 400 and out["__type"] == "ValidationException", out
            iid = await node.register(act["ActivationId"], act["ActivationCode"])
            assert iid.startswith("mi-") and len(iid) == 20
            info = _info(broker, iid)
            assert info["ResourceType"] == "ManagedInstance"
            assert info["ActivationId"] == act["ActivationId"]
            assert info["PingStatus"] == "ConnectionLost"  # no control channel yet

            # The RSA-signed token request: the activation's role for this node, all five fields.
            before = time.time()
            creds = await node.role_token()
            assert creds.access_key_id.startswith("ASIA") and creds.secret_access_key
            assert creds.session_token and creds.update_key_pair is False
            assert before + 600 < creds.expiration <= before + 3600 + 5
            sts = broker.client(
                "sts", creds.access_key_id, creds.secret_access_key, creds.session_token
            )
            arn = sts.get_caller_identity()["Arn"]
            assert arn == f"arn:aws:sts::{srv.ACCOUNT}:assumed-role/SSMServiceRole/{iid}"

            # Refusals: another key's signature, a changed fingerprint, an unknown node.
            from cryptography.hazmat.primitives.asymmetric import rsa

            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            status, out = await node.ssm_rsa(
                "RequestManagedInstanceRoleToken", {"Fingerprint": node.fingerprint}, other
            )
            assert status == 400 and out["__type"] == "InvalidSignatureException", out
            status, out = await node.ssm_rsa(
                "RequestManagedInstanceRoleToken", {"Fingerprint": str(uuid.uuid4())}
            )
            assert status == 400 and out["__type"] == "InvalidInstanceId", out
            stranger = StandIn(broker.url, str(ca.ca_cert), REGION)
            stranger.http, stranger.instance_id = node.http, "mi-0123456789abcdef0"
            status, out = await stranger.ssm_rsa(
                "RequestManagedInstanceRoleToken", {"Fingerprint": node.fingerprint}
            )
            assert status == 400 and out["__type"] == "UnrecognizedClientException", out

            # Bad input is refused in AWS's shapes and never takes the broker down.
            body = json.dumps({"Fingerprint": node.fingerprint}).encode()
            headers = node.rsa_headers("RequestManagedInstanceRoleToken", body)
            for bad, code in (
                (
                    {k: v for k, v in headers.items() if k != "Authorization"},
                    "MissingAuthenticationTokenException",
                ),
                (
                    {**headers, "Authorization": "AWS4-HMAC-SHA256 Credential=x"},
                    "IncompleteSignatureException",
                ),
                (
                    {
                        **headers,
                        "Authorization": headers["Authorization"].replace(
                            "Signature=", "Signature=!!"
                        ),
                    },
                    "InvalidSignatureException",
                ),
            ):
                status, out = await node._post(bad, body)
                assert status == 400 and out["__type"] == code, out
            status, out = await node._post(headers, b"{not json")
            assert status == 400 and out["__type"] == "InvalidSignatureException", out
            status, out = await node.ssm_rsa("RequestManagedInstanceRoleToken", {})
            assert status == 400 and out["__type"] == "ValidationException", out
            unsigned = {
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "EC2WindowsMessageDeliveryService.GetMessages",
            }
            status, out = await node._post(unsigned, b"{}")
            assert status == 400 and out["__type"] == "MissingAuthenticationTokenException", out

            # Health: UpdateInstanceInformation fills DescribeInstanceInformation.
            status, out = await node.update_instance_information()
            assert status == 200 and out == {}, out
            info = _info(broker, iid)
            assert info["AgentVersion"] == "3.3.0.0"
            assert info["PlatformName"] == "Debian GNU/Linux"
            assert info["IPAddress"] == "192.0.2.10"
            assert info["ComputerName"] == "standin.example"
            # ... for itself only.
            status, out = await node.ssm_signed(
                "UpdateInstanceInformation", {"InstanceId": "mi-0123456789abcdef0"}
            )
            assert status == 400 and out["__type"] == "InvalidInstanceId", out

            # ec2messages polling is answered harmlessly (no messages).
            status, out = await node.ssm_signed(
                "GetMessages",
                {
                    "Destination": iid,
                    "MessagesRequestId": str(uuid.uuid4()),
                    "VisibilityTimeoutInSeconds": 10,
                },
                prefix="EC2WindowsMessageDeliveryService",
                service="ec2messages",
            )
            assert status == 200 and out["Messages"] == [], out
            poll = {
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "EC2WindowsMessageDeliveryService.GetMessages",
            }
            garbage = b"[" * 10_000
            status, out = await node._post(
                node._sigv4("POST", node.url + "/", garbage, poll, "ec2messages"), garbage
            )
            assert status == 400 and out["__type"] == "SerializationException", out

            # Key rotation: the new key works, the old one still does for a grace period.
            old_key = node.key
            new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            status, out = await node.ssm_rsa(
                "UpdateManagedInstancePublicKey",
                {"NewPublicKey": public_key_text(new_key), "NewPublicKeyType": "Rsa"},
            )
            assert status == 200 and out == {}, out
            node.key = new_key
            await node.role_token()
            node.key = old_key
            await node.role_token()
            node.key = new_key

            # Deregistration: the key and the role credentials stop working at once.
            broker.client("ssm").deregister_managed_instance(InstanceId=iid)
            status, out = await node.ssm_rsa(
                "RequestManagedInstanceRoleToken", {"Fingerprint": node.fingerprint}
            )
            assert status == 400 and out["__type"] == "UnrecognizedClientException", out
            with pytest.raises(botocore.exceptions.ClientError):
                sts.get_caller_identity()

    run(main())
    # Audited as AWS names the calls, never with the activation code.
    audit = (broker.data_dir / "audit.jsonl").read_text()
    assert '"RegisterManagedInstance"' in audit and '"RequestManagedInstanceRoleToken"' in audit
    assert act["ActivationCode"] not in audit


def _plugin_path(tmp_path: Path) -> str:
    sys.path.insert(0, str(HERE.parent / "client"))
    from harness.client import plugin_on_path

    return str(plugin_on_path(tmp_path))


async def _serve_session(
    node: StandIn, control: ControlChannel, output: bytes, seen: dict[str, Any]
) -> None:
    """What AWS's agent does for one session: interactive_shell → CreateDataChannel → data
    channel with the handshake → output → Terminating → agent_task_complete, acknowledged."""
    msg = await next_agent_message(control)
    assert msg.message_type == "interactive_shell"
    outer = json.loads(msg.payload)
    task = json.loads(outer["Content"])  # MGS sends the AgentTaskPayload as a JSON string
    seen["task"] = task
    sid = task["SessionId"]
    assert outer["TaskId"] == sid
    # The worker asks for its data channel; every call yields a fresh token.
    status, first = await node.create_data_channel(sid)
    assert status == 201, first
    status, second = await node.create_data_channel(sid)
    assert status == 201 and xml_token(first) != xml_token(second)
    ws = await node.open_data_channel(sid, xml_token(second))
    stream = Stream(Role.AGENT)
    session_type = task["DocumentContent"]["sessionType"]
    request = HandshakeRequest("3.3.0.0", (session_type_action(session_type),))
    await ws.send_bytes(
        stream.send(PayloadType.HANDSHAKE_REQUEST, build_handshake_request(request), time.time())
    )

    async def pump(ws: aiohttp.ClientWebSocketResponse, until: Any) -> None:
        """Read the data channel (acks, the client's messages) until ``until()``."""
        while not until():
            msg_ws = await asyncio.wait_for(ws.receive(), 60)
            assert msg_ws.type == aiohttp.WSMsgType.BINARY, msg_ws
            for event in stream.receive(msg_ws.data, time.time()):
                if isinstance(event, SendBytes):
                    await ws.send_bytes(event.data)
                elif isinstance(event, Deliver):
                    seen.setdefault("delivered", []).append(event.payload_type)

    await pump(ws, lambda: PayloadType.HANDSHAKE_RESPONSE in seen.get("delivered", []))
    complete_frame = stream.send(
        PayloadType.HANDSHAKE_COMPLETE, build_handshake_complete(1000, ""), time.time()
    )
    await ws.send_bytes(complete_frame)
    # The agent's data channel drops: the worker calls CreateDataChannel again and reconnects
    # with the fresh token (a spent one is refused), then re-sends what was not acknowledged.
    await ws.close()
    reused = await node.open_data_channel(sid, xml_token(second))
    assert (await reused.receive(timeout=15)).type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
    )
    assert reused.close_code == 4403
    status, third = await node.create_data_channel(sid)
    assert status == 201, third
    ws = await node.open_data_channel(sid, xml_token(third))
    for frame in stream.resend_all(time.time()):
        await ws.send_bytes(frame)
    for payload_type, payload in (
        (PayloadType.OUTPUT, output),
        (PayloadType.EXIT_CODE, b"EXIT_CODE: 3"),
    ):
        await ws.send_bytes(stream.send(payload_type, payload, time.time()))
    await pump(ws, lambda: stream.unacked_count == 0)  # the client has it all
    from hatchway.protocol.frames import Frame, encode

    state = Frame(
        "agent_session_state",
        0,
        0,
        build_agent_session_state("Terminating", sid),
        uuid.uuid4(),
        int(time.time() * 1000),
    )
    await ws.send_bytes(encode(state))
    await ws.close()
    complete = agent_message(
        "agent_task_complete",
        {
            "SchemaVersion": 1,
            "TaskId": sid,
            "Topic": "aws.ssm.sendCommand",
            "FinalTaskStatus": "Success",
            "IsRoutingFailure": False,
            "AwsAccountId": srv.ACCOUNT,
            "InstanceId": node.instance_id,
            "Output": "",
            "RetryNumber": 0,
        },
    )
    await control.send_bytes(complete)
    ack = await next_agent_message(control)
    assert ack.message_type == "agent_task_acknowledge"
    body = json.loads(ack.payload)
    from hatchway.protocol.frames import decode

    assert body["MessageId"] == str(decode(complete).message_id) and body["TaskId"] == sid
    seen["acked"] = True


def test_session_through_the_dialect_with_the_aws_cli(
    broker: Any, ca: LocalCA, tmp_path: Path
) -> None:
    act = _activation(broker)
    path = _plugin_path(tmp_path)

    async def main() -> None:
        async with StandIn(broker.url, str(ca.ca_cert), REGION) as node:
            iid = await node.register(act["ActivationId"], act["ActivationCode"])
            await node.role_token()
            await node.update_instance_information()
            token = await node.create_control_channel()
            # A second channel with a spent or made-up token is refused.
            control = await node.open_control_channel(token)
            for _ in range(100):
                if _info(broker, iid)["PingStatus"] == "Online":
                    break
                await asyncio.sleep(0.1)
            info = _info(broker, iid)
            assert info["PingStatus"] == "Online" and info["AgentVersion"] == "3.3.0.0"
            bad = await node.open_control_channel(token)
            assert await bad.wait_closed(15) == 4403

            seen: dict[str, Any] = {}
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(
                AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
                AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
                AWS_DEFAULT_REGION=REGION,
                AWS_CONFIG_FILE="/dev/null",
                AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                AWS_CA_BUNDLE=str(ca.ca_cert),  # the CLI and Hatchway's plugin
                PATH=path,
            )
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "aws"),
                "--endpoint-url",
                broker.url,
                "ssm",
                "start-session",
                "--target",
                iid,
                "--document-name",
                "AWS-StartNonInteractiveCommand",
                "--parameters",
                # AWS's agent reports a command's exit code only with separateOutputStream
                json.dumps(
                    {"command": ["echo $((6*7)); exit 3"], "separateOutputStream": ["true"]}
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            serve = asyncio.create_task(_serve_session(node, control, b"42\n", seen))
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            # The aws CLI turns the plugin's exit status (the command's) into its 255.
            assert proc.returncode == 255 and b"non-zero exit status 3." in err, (out, err)
            assert b"\n42\n" in out, (out, err)
            await asyncio.wait_for(serve, 30)
            task = seen["task"]
            assert task["DocumentName"] == "AWS-StartNonInteractiveCommand"
            assert task["Parameters"]["command"] == "echo $((6*7)); exit 3"
            assert task["Parameters"]["separateOutputStream"] == "true"
            assert task["DocumentContent"]["sessionType"] == "NonInteractiveCommands"
            assert task["SessionOwner"].endswith(":root") or task["SessionOwner"]
            sessions = broker.client("ssm").describe_sessions(State="History")["Sessions"]
            assert any(s["SessionId"] == task["SessionId"] for s in sessions)

            await control.close()

    run(main())


def _node_role(broker: Any, name: str, deny: list[str]) -> None:
    """A role nodes may act as (trusts ssm.amazonaws.com), AWS's managed core policy, and an
    explicit deny of ``deny``."""
    iam = broker.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ssm.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    iam.attach_role_policy(
        RoleName=name, PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    )
    if deny:
        iam.put_role_policy(
            RoleName=name,
            PolicyName="deny",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Deny", "Action": deny, "Resource": "*"}],
                }
            ),
        )


def test_iam_and_the_seed_rule_apply_to_aws_agent_nodes(broker: Any, ca: LocalCA) -> None:
    _node_role(broker, "StandInNoControl", ["ssmmessages:CreateControlChannel"])
    denied_act = broker.client("ssm").create_activation(IamRole="StandInNoControl")
    act = _activation(broker)

    async def main() -> str:
        async with StandIn(broker.url, str(ca.ca_cert), REGION) as denied:
            await denied.register(denied_act["ActivationId"], denied_act["ActivationCode"])
            await denied.role_token()
            # The node's role decides, as for Hatchway's nodes: an explicit deny refuses.
            status, text = await denied.rest(
                f"/v1/control-channel/{denied.instance_id}",
                {"MessageSchemaVersion": "1.0", "RequestId": str(uuid.uuid4())},
            )
            assert status == 400 and "AccessDeniedException" in text, text
            assert "ssmmessages:CreateControlChannel" in text
            # Its credentials name only itself: not another node's channel.
            status, text = await denied.rest(
                "/v1/control-channel/mi-0123456789abcdef0",
                {"MessageSchemaVersion": "1.0", "RequestId": str(uuid.uuid4())},
            )
            assert status == 400 and "AccessDeniedException" in text, text
        async with StandIn(broker.url, str(ca.ca_cert), REGION) as node:
            iid = await node.register(act["ActivationId"], act["ActivationCode"])
            await node.role_token()
            control = await node.open_control_channel(await node.create_control_channel())
            await asyncio.to_thread(_seed_rule_checks, broker, iid)  # while it is Online
            await control.close()
            return iid

    run(main())


def _seed_rule_checks(broker: Any, iid: str) -> None:
    srv.wait_ping(broker, iid, "Online")
    arn = f"arn:aws:ssm:{REGION}:{srv.ACCOUNT}"
    # The seed's rule: with SessionDocumentAccessCheck the default shell needs --document-name
    # and only the documents the policy names.
    key, secret = srv.user_with_policy(
        broker,
        "standin-checked",
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": [
                        f"{arn}:managed-instance/{iid}",
                        f"arn:aws:ssm:{REGION}::document/AWS-StartNonInteractiveCommand",
                    ],
                    "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
                }
            ],
        },
    )
    ssm = broker.client("ssm", key, secret)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.start_session(Target=iid)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    started = ssm.start_session(
        Target=iid,
        DocumentName="AWS-StartNonInteractiveCommand",
        Parameters={"command": ["true"]},
    )
    broker.client("ssm").terminate_session(SessionId=started["SessionId"])
    # Without the node in the policy's resources: refused.
    key, secret = srv.user_with_policy(
        broker,
        "standin-elsewhere",
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": [f"{arn}:managed-instance/mi-0123456789abcdef0"],
                }
            ],
        },
    )
    with pytest.raises(botocore.exceptions.ClientError) as err:
        broker.client("ssm", key, secret).start_session(Target=iid)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"


def test_terminate_session_reaches_the_agent_as_channel_closed(
    broker: Any, ca: LocalCA, tmp_path: Path
) -> None:
    act = _activation(broker)
    path = _plugin_path(tmp_path)

    async def main() -> None:
        async with StandIn(broker.url, str(ca.ca_cert), REGION) as node:
            iid = await node.register(act["ActivationId"], act["ActivationCode"])
            await node.role_token()
            control = await node.open_control_channel(await node.create_control_channel())
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(
                AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
                AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
                AWS_DEFAULT_REGION=REGION,
                AWS_CONFIG_FILE="/dev/null",
                AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                AWS_CA_BUNDLE=str(ca.ca_cert),
                PATH=path,
            )
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "aws"),
                "--endpoint-url",
                broker.url,
                "ssm",
                "start-session",
                "--target",
                iid,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
            )
            try:
                shell = await next_agent_message(control, 60)
                assert shell.message_type == "interactive_shell"
                task = json.loads(json.loads(shell.payload)["Content"])
                assert task["DocumentContent"]["sessionType"] == "Standard_Stream"
                sid = task["SessionId"]
                broker.client("ssm").terminate_session(SessionId=sid)
                closed = await next_agent_message(control, 30)
                assert closed.message_type == "channel_closed"
                body = json.loads(closed.payload)
                assert body["SessionId"] == sid and body["DestinationId"] == iid
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()

    run(main())
