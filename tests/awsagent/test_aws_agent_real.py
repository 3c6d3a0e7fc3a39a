"""AWS's real amazon-ssm-agent as a Hatchway node, end to end (issue 13).

Runs when ``HATCHWAY_AWS_AGENT_BIN`` names a folder with the agent's binaries
(``amazon-ssm-agent``, ``ssm-agent-worker``, ``ssm-session-worker``; built from
aws/amazon-ssm-agent with its vendored modules, ``CGO_ENABLED=0``), as root; skipped otherwise.
The binaries are copied to a root-owned temporary folder with
``configuration/amazon-ssm-agent.json`` (Ssm/Mgs/Kms/Mds endpoints: the broker) and
``seelog.xml`` beside them, which the agent reads instead of /etc. The agent keeps its state in
/var/lib/amazon/ssm (hard-coded): a previous one is moved aside and put back afterwards. The
broker runs on TLS with a test CA that the agent trusts through ``SSL_CERT_FILE`` and
``AWS_CA_BUNDLE`` (docs/aws-agent.md). Sessions are driven by the real ``aws ssm
start-session`` with Hatchway's plugin. The output of a run is kept in
docs/aws-agent-transcript.txt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import pytest

from hatchway.server.base.tls import LocalCA, local_ca

HERE = Path(__file__).resolve().parent
AGENT_BIN = os.environ.get("HATCHWAY_AWS_AGENT_BIN", "")
STATE = Path("/var/lib/amazon/ssm")
BINARIES = ("amazon-ssm-agent", "ssm-agent-worker", "ssm-session-worker", "ssm-document-worker")

pytestmark = pytest.mark.skipif(
    not AGENT_BIN or not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="set HATCHWAY_AWS_AGENT_BIN to a folder with AWS's agent binaries (runs as root)",
)


srv = harness
REGION = srv.REGION
BIN = Path(sys.executable).parent


def say(text: str) -> None:
    """A line of the transcript (docs/aws-agent-transcript.txt is a run's output, -s)."""
    print(f"[aws-agent e2e] {text}", flush=True)


@dataclass
class Node:
    broker: Any
    ca: LocalCA
    instance_id: str
    root: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    path: str

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=srv.ADMIN_KEY,
            AWS_SECRET_ACCESS_KEY=srv.ADMIN_SECRET,
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
            AWS_CA_BUNDLE=str(self.ca.ca_cert),
            SSL_CERT_FILE=str(self.ca.ca_cert),  # AWS's plugin (Go) trusts the system store
            PATH=self.path,
        )
        return env

    def aws(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(BIN / "aws"), "--endpoint-url", self.broker.url, *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=self.cli_env(),
            timeout=timeout,
        )

    def agent_log(self) -> str:
        log = self.root / "log" / "amazon-ssm-agent.log"
        return log.read_text(errors="replace") if log.exists() else ""


def _agent_config(url: str) -> dict[str, Any]:
    return {
        "Profile": {"ShareCreds": True, "ShareProfile": "", "KeyAutoRotateDays": 0},
        "Mds": {"Endpoint": url, "CommandWorkersLimit": 5, "StopTimeoutMillis": 20000},
        "Ssm": {"Endpoint": url, "HealthFrequencyMinutes": 5, "SessionLogsDestination": "none"},
        # a full URL: "host:port" alone fails Go's url.Parse and the agent falls back to AWS
        "Mgs": {"Region": REGION, "Endpoint": url, "StopTimeoutMillis": 20000},
        "Agent": {"Region": REGION, "SelfUpdate": False, "TelemetryMetricsToSSM": False},
        "S3": {"Endpoint": url, "Region": REGION},
        "Kms": {"Endpoint": url},
        "Identity": {"ConsumptionOrder": ["OnPrem"]},
    }


SEELOG = """<seelog type="sync" minlevel="info">
    <outputs formatid="fmt">
        <file path="{log}/amazon-ssm-agent.log"/>
        <filter levels="error,critical"><file path="{log}/errors.log"/></filter>
    </outputs>
    <formats><format id="fmt" format="%Date(2006-01-02 15:04:05.0000) %LEVEL %Msg%n"/></formats>
</seelog>
"""


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _info(broker: Any, iid: str) -> dict[str, Any]:
    items = broker.client("ssm").describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [iid]}]
    )["InstanceInformationList"]
    return items[0] if items else {}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    source = Path(AGENT_BIN)
    version = subprocess.run(
        [str(source / "amazon-ssm-agent"), "-version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    say(f"agent: {version} from {source}")
    cli = subprocess.run([str(BIN / "aws"), "--version"], capture_output=True, text=True)
    say(f"aws CLI: {cli.stdout.strip()}; Hatchway's session-manager-plugin")
    ca = local_ca(tmp_path_factory.mktemp("aws-agent-tls") / "ca")
    broker = srv.start_broker(
        tmp_path_factory.mktemp("aws-agent-broker") / "data",
        "--tls-cert",
        str(ca.cert),
        "--tls-key",
        str(ca.key),
        "--timeout-unit",
        "1",
        ca=str(ca.ca_cert),
    )
    say(f"broker: {broker.url} (TLS, test CA)")
    root = tmp_path_factory.mktemp("aws-agent-root")
    os.chmod(root, 0o755)
    bindir = root / "bin"
    (bindir / "configuration").mkdir(parents=True)
    for name in BINARIES:
        if (source / name).exists():
            shutil.copy2(source / name, bindir / name)
            os.chmod(bindir / name, 0o755)
    for d in (bindir, bindir / "configuration"):
        os.chown(d, 0, 0)
        os.chmod(d, 0o755)
    (bindir / "configuration" / "amazon-ssm-agent.json").write_text(
        json.dumps(_agent_config(broker.url), indent=2)
    )
    (root / "log").mkdir()
    (bindir / "configuration" / "seelog.xml").write_text(SEELOG.format(log=root / "log"))
    (root / "home").mkdir()
    backup = None
    # Left by the agent where it hard-codes them (state; its audit folder): removed after the
    # run unless they were there before.
    created = [d for d in (STATE.parent, Path("/var/log/amazon")) if not d.exists()]
    if STATE.exists():
        backup = STATE.with_name(f"ssm.hatchway-test-backup-{os.getpid()}")
        STATE.rename(backup)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(root / "home"),
        "SSL_CERT_FILE": str(ca.ca_cert),  # Go's system pool: the broker's CA
        "AWS_CA_BUNDLE": str(ca.ca_cert),  # the SDK sessions that honour it trust only it
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "home" / "credentials"),
    }
    proc: subprocess.Popen[bytes] | None = None
    try:
        act = broker.client("ssm").create_activation(IamRole="SSMServiceRole")
        reg = subprocess.run(
            [
                str(bindir / "amazon-ssm-agent"),
                "-register",
                "-code",
                act["ActivationCode"],
                "-id",
                act["ActivationId"],
                "-region",
                REGION,
                "-y",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert reg.returncode == 0, reg.stdout + reg.stderr
        iid = json.loads((STATE / "registration").read_text())["ManagedInstanceID"]
        say(f"registered: amazon-ssm-agent -register exit 0, ManagedInstanceID {iid}")
        out = open(root / "log" / "console.log", "wb")  # noqa: SIM115 - lives with the agent
        proc = subprocess.Popen(
            [str(bindir / "amazon-ssm-agent")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        path = f"{root / 'plugin'}:{BIN}:{os.environ.get('PATH', '')}"
        (root / "plugin").mkdir()
        plugin = root / "plugin" / "session-manager-plugin"
        plugin.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -m hatchway.client.session_manager_plugin "$@"\n'
        )
        plugin.chmod(0o755)
        yield Node(broker, ca, iid, root, proc, env, path)
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
        srv.stop_broker(broker)
        shutil.rmtree(STATE, ignore_errors=True)
        if backup is not None:
            backup.rename(STATE)
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        errors = root / "log" / "errors.log"
        if errors.exists():
            say(f"agent errors.log ({errors.stat().st_size} bytes) kept in {errors}")


def test_registers_comes_online_and_reports_itself(node: Node) -> None:
    info = _wait(
        lambda: (i := _info(node.broker, node.instance_id)).get("PingStatus") == "Online" and i,
        180,
        "the agent's control channel",
    )
    info = _wait(
        lambda: (i := _info(node.broker, node.instance_id)).get("AgentVersion") and i,
        60,
        "UpdateInstanceInformation",
    )
    assert node.instance_id.startswith("mi-")
    assert info["ResourceType"] == "ManagedInstance" and info["PingStatus"] == "Online"
    assert info["AgentVersion"].startswith("3.")
    say(
        "DescribeInstanceInformation: "
        + json.dumps(
            {
                k: info.get(k)
                for k in (
                    "InstanceId",
                    "PingStatus",
                    "AgentVersion",
                    "PlatformName",
                    "PlatformVersion",
                    "IPAddress",
                    "ComputerName",
                    "IamRole",
                )
            }
        )
    )
    calls = [
        json.loads(line)
        for line in (node.broker.data_dir / "audit.jsonl").read_text().splitlines()
        if line.strip()
    ]
    ops = {(c.get("eventName"), c.get("errorCode")) for c in calls}
    for op in (
        "RegisterManagedInstance",
        "RequestManagedInstanceRoleToken",
        "UpdateInstanceInformation",
    ):
        assert (op, None) in ops, sorted(map(str, ops))
    say("audited: " + ", ".join(sorted({str(c.get("eventName")) for c in calls})))


def test_noninteractive_command_prints_42_with_its_exit_code(node: Node) -> None:
    # AWS's agent splits a NonInteractiveCommands command with shlex and runs it without a
    # shell, and reports its exit code only with separateOutputStream (as on AWS).
    command = "sh -c 'echo $((6*7)); exit 3'"
    done = node.aws(
        "ssm",
        "start-session",
        "--target",
        node.instance_id,
        "--document-name",
        "AWS-StartNonInteractiveCommand",
        "--parameters",
        json.dumps({"command": [command], "separateOutputStream": ["true"]}),
    )
    say(f"aws ssm start-session AWS-StartNonInteractiveCommand {command!r} separateOutputStream")
    say("  stdout: " + done.stdout.decode(errors="replace").strip().replace("\n", " | "))
    say(f"  aws exit {done.returncode}: " + done.stderr.decode(errors="replace").strip()[-60:])
    assert b"\n42\n" in done.stdout, (done.stdout, done.stderr)
    assert done.returncode == 255 and b"non-zero exit status 3." in done.stderr


def _pty_session(
    node: Node, args: list[str], script: list[bytes], until: bytes, timeout: float = 90
) -> bytes:
    """Run ``aws ssm start-session …`` on a terminal, type ``script`` once the shell is up."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the aws CLI on the terminal
        env = node.cli_env()
        os.execve(
            str(BIN / "aws"), [str(BIN / "aws"), "--endpoint-url", node.broker.url, *args], env
        )
    out = b""
    deadline = time.monotonic() + timeout
    typed = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if (
                not typed
                and b"Starting session with SessionId" in out
                and (b"$ " in out or b"# " in out)
            ):
                for line in script:
                    os.write(fd, line)
                    time.sleep(0.3)
                typed = True
            if until in out and typed:
                os.write(fd, b"exit\r")
                until = b"\x00never"
    finally:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):  # still running after the deadline
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    time.sleep(2)
                    os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    return out


def test_interactive_shell_with_the_aws_cli(node: Node) -> None:
    out = _pty_session(
        node,
        ["ssm", "start-session", "--target", node.instance_id],
        [b"echo A=$((6*7)) U=$(id -un)\r"],
        b"A=42",
    )
    text = out.decode(errors="replace")
    say(
        "interactive shell (aws ssm start-session, Hatchway's plugin, a terminal): "
        + ("A=42 seen" if "A=42" in text else "no A=42")
    )
    match = re.search(r"A=42 U=(\S+)", text)
    assert match, text[-2000:]
    say(f"  shell user: {match.group(1)}")


def _tcp_server() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _forward(node: Node, document: str, parameters: str) -> bytes:
    server, port = _tcp_server()
    proc = subprocess.Popen(
        [
            str(BIN / "aws"),
            "--endpoint-url",
            node.broker.url,
            "ssm",
            "start-session",
            "--target",
            node.instance_id,
            "--document-name",
            document,
            "--parameters",
            parameters.format(port=port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=node.cli_env(),
    )
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 90
        local = None
        while time.monotonic() < deadline and local is None:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            m = re.search(rb"Port (\d+) opened for sessionId", line)
            if m:
                local = int(m.group(1))
        assert local is not None, seen
        answer = b""
        for _ in range(20):  # the agent dials the port when the first connection comes
            with socket.create_connection(("127.0.0.1", local), timeout=30) as c:
                c.sendall(b"ping-42")
                c.settimeout(30)
                with contextlib.suppress(TimeoutError):
                    answer = c.recv(1024)
            if answer:
                break
            time.sleep(1)
        return answer
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        server.close()


def test_port_forwarding_local(node: Node) -> None:
    answer = _forward(node, "AWS-StartPortForwardingSession", "portNumber={port},localPortNumber=0")
    say(f"port forwarding (AWS-StartPortForwardingSession): answer {answer!r}")
    assert answer == b"echo:ping-42"


def test_port_forwarding_to_a_remote_host(node: Node) -> None:
    answer = _forward(
        node,
        "AWS-StartPortForwardingSessionToRemoteHost",
        "host=localhost,portNumber={port},localPortNumber=0",
    )
    say(f"port forwarding to a remote host (host=localhost): answer {answer!r}")
    assert answer == b"echo:ping-42"


def _document(node: Node, name: str, inputs: dict[str, Any]) -> None:
    node.broker.client("ssm").create_document(
        Name=name,
        DocumentType="Session",
        Content=json.dumps(
            {
                "schemaVersion": "1.0",
                "description": name,
                "sessionType": "Standard_Stream",
                "inputs": inputs,
            }
        ),
    )


def _history(node: Node, text: str) -> dict[str, Any]:
    sid = re.search(r"Starting session with SessionId: (\S+)", text)
    assert sid, text[-2000:]
    found = _wait(
        lambda: node.broker.client("ssm").describe_sessions(
            State="History", Filters=[{"key": "SessionId", "value": sid.group(1)}]
        )["Sessions"],
        60,
        "the session in History",
    )
    session: dict[str, Any] = found[0]
    return session


def test_run_as(node: Node) -> None:
    _document(node, "HwAwsRunAs", {"runAsEnabled": True, "runAsDefaultUser": "nobody"})
    out = _pty_session(
        node,
        ["ssm", "start-session", "--target", node.instance_id, "--document-name", "HwAwsRunAs"],
        [b"echo U=$(id -un) R=$((6*7))\r"],
        b"R=42",
    )
    text = out.decode(errors="replace")
    match = re.search(r"U=(\S+) R=42", text)
    say(f"Run As (runAsDefaultUser nobody): {match.group(0) if match else 'not seen'}")
    assert match and match.group(1) == "nobody", text[-2000:]


def test_idle_timeout(node: Node) -> None:
    # --timeout-unit 1: the document's "minutes" are seconds.
    _document(node, "HwAwsIdle", {"idleSessionTimeout": "3"})
    started = time.monotonic()
    out = _pty_session(
        node,
        ["ssm", "start-session", "--target", node.instance_id, "--document-name", "HwAwsIdle"],
        [],
        b"\x00never",
        timeout=120,
    )
    text = out.decode(errors="replace")
    session = _history(node, text)
    say(
        f"idle timeout (3 s): {session['Status']}, {session.get('Details')!r} "
        f"after {time.monotonic() - started:.0f} s"
    )
    from hatchway.server.relay.datachannel import IDLE_MESSAGE

    assert session["Status"] == "Terminated" and session["Details"] == IDLE_MESSAGE


def test_kms_encrypted_session(node: Node) -> None:
    kms = node.broker.client("kms")
    key = kms.create_key(Description="AWS agent session keys")["KeyMetadata"]["KeyId"]
    _document(node, "HwAwsKms", {"kmsKeyId": key})
    out = _pty_session(
        node,
        ["ssm", "start-session", "--target", node.instance_id, "--document-name", "HwAwsKms"],
        [b"echo K=$((6*7))\r"],
        b"K=42",
    )
    text = out.decode(errors="replace")
    say(
        "KMS-encrypted shell (the broker's KMS as Kms.Endpoint): "
        + ("K=42 seen" if "K=42" in text else "no K=42")
    )
    assert "K=42" in text, text[-2000:]
    audit = (node.broker.data_dir / "audit.jsonl").read_text()
    assert '"GenerateDataKey"' in audit and '"Decrypt"' in audit


def test_broker_side_recording(node: Node) -> None:
    out = _pty_session(
        node,
        ["ssm", "start-session", "--target", node.instance_id],
        [b"echo rec-$((6*7))\r"],
        b"rec-42",
    )
    sid = _history(node, out.decode(errors="replace"))["SessionId"]
    replay: subprocess.CompletedProcess[str] | None = None
    for _ in range(60):  # the recording is written in batches, a moment after the session
        replay = subprocess.run(
            [
                str(BIN / "hatchway"),
                "sessions",
                "replay",
                sid,
                "--raw",
                *srv.store_args(node.broker),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if replay.returncode == 0 and "rec-42" in replay.stdout and _ended(replay.stdout):
            break
        time.sleep(0.5)
    assert replay is not None and replay.returncode == 0, replay
    lines = replay.stdout.splitlines()
    say(
        f"recording (hatchway sessions replay --raw): {len(lines) - 1} events, rec-42 "
        + ("recorded" if "rec-42" in replay.stdout else "missing")
    )
    assert "rec-42" in replay.stdout and _ended(replay.stdout), replay.stdout[-2000:]


def _ended(cast: str) -> bool:
    """An asciicast whose marker says the session ended."""
    events = [json.loads(line) for line in cast.splitlines()[1:] if line.strip()]
    return any(e[1] == "m" and json.loads(e[2]).get("event") == "exit" for e in events)


# AWS's own session-manager-plugin, when HATCHWAY_AWS_PLUGIN_BIN names its binary (built from
# aws/session-manager-plugin outside the repository, never committed): the same shell and port
# sessions with AWS's plugin instead of Hatchway's, through the real aws CLI.
AWS_PLUGIN = os.environ.get("HATCHWAY_AWS_PLUGIN_BIN", "")


@pytest.fixture(scope="module")
def aws_plugin_node(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Node:
    if not AWS_PLUGIN or not os.access(AWS_PLUGIN, os.X_OK):
        pytest.skip("set HATCHWAY_AWS_PLUGIN_BIN to AWS's session-manager-plugin binary")
    folder = tmp_path_factory.mktemp("aws-plugin")
    (folder / "session-manager-plugin").symlink_to(AWS_PLUGIN)
    version = subprocess.run(
        [AWS_PLUGIN, "--version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    say(f"AWS's session-manager-plugin {version} from {AWS_PLUGIN}")
    return dataclasses.replace(node, path=f"{folder}:{BIN}:{os.environ.get('PATH', '')}")


def test_interactive_shell_with_aws_s_plugin(aws_plugin_node: Node) -> None:
    out = _pty_session(
        aws_plugin_node,
        ["ssm", "start-session", "--target", aws_plugin_node.instance_id],
        [b"echo A=$((6*7)) U=$(id -un)\r"],
        b"A=42",
    )
    text = out.decode(errors="replace")
    say(
        "interactive shell (aws ssm start-session, AWS's plugin, a terminal): "
        + ("A=42 seen" if "A=42" in text else "no A=42")
    )
    assert re.search(r"A=42 U=(\S+)", text), text[-2000:]


def test_port_forwarding_with_aws_s_plugin(aws_plugin_node: Node) -> None:
    local = _forward(
        aws_plugin_node, "AWS-StartPortForwardingSession", "portNumber={port},localPortNumber=0"
    )
    remote = _forward(
        aws_plugin_node,
        "AWS-StartPortForwardingSessionToRemoteHost",
        "host=localhost,portNumber={port},localPortNumber=0",
    )
    say(f"port forwarding with AWS's plugin: local {local!r}, remote host {remote!r}")
    assert local == remote == b"echo:ping-42"
