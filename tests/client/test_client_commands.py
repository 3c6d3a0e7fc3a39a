"""Command sessions, custom documents and Run As, end to end: the real ``aws ssm start-session``
with our ``session-manager-plugin`` on PATH, a real broker and a real agent (as root), real OS
users made with useradd for the occasion."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.client import clean_aws_env, plugin_on_path
from test_client_broker import srv

from hatchway.agent.shell import NO_RUN_AS_USER

BIN = Path(sys.executable).parent
TARGET = "i-0c0ffee0c0ffee001"
ACCOUNT, REGION = srv.ACCOUNT, srv.REGION
INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{TARGET}"


SESSIONS_ANYWHERE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["ssm:*", "ssmmessages:*"], "Resource": "*"}],
}


def doc_arn(name: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/{name}"


@dataclass
class Creds:
    key: str = srv.ADMIN_KEY
    secret: str = srv.ADMIN_SECRET
    token: str | None = None

    def env(self, path: str) -> dict[str, str]:
        extra = {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}
        if self.token:
            extra["AWS_SESSION_TOKEN"] = self.token
        return clean_aws_env({**extra, "PATH": path})


@dataclass
class Run:
    code: int
    out: bytes
    err: bytes

    @property
    def session_id(self) -> str:
        return self.out.split(b"Starting session with SessionId: ", 1)[1].split(b"\n")[0].decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(tmp_path_factory.mktemp("cmd-broker") / "data")
    a = srv.start_agent(b, tmp_path_factory.mktemp("cmd-node") / "state", TARGET)
    yield b
    a.stop()
    srv.stop_broker(b)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return plugin_on_path(tmp_path_factory.mktemp("cmd-plugin"))


def start(broker: Any, path: str, *args: str, creds: Creds | None = None, keys: bytes = b"") -> Run:
    """``aws ssm start-session --target TARGET …``; stdin stays open (a person at a terminal
    who has not typed anything), ``keys`` are typed first."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [
                str(BIN / "aws"),
                "ssm",
                "start-session",
                "--target",
                TARGET,
                "--endpoint-url",
                broker.url,
                *args,
            ],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            env=(creds or Creds()).env(path),
        )
        assert proc.stdin is not None
        try:
            if keys:
                proc.stdin.write(keys)
                proc.stdin.flush()
            code = proc.wait(90)
        finally:
            proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
        out.seek(0)
        err.seek(0)
        return Run(code, out.read(), err.read())


def history(broker: Any, sid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        found = broker.client("ssm").describe_sessions(
            State="History", Filters=[{"key": "SessionId", "value": sid}]
        )["Sessions"]
        if found or time.monotonic() > deadline:
            assert found, f"session {sid} never ended"
            return dict(found[0])
        time.sleep(0.2)


def create_doc(broker: Any, name: str, body: dict[str, Any], creds: Creds | None = None) -> None:
    c = creds or Creds()
    broker.client("ssm", c.key, c.secret, c.token).create_document(
        Name=name, DocumentType="Session", Content=json.dumps({"schemaVersion": "1.0", **body})
    )


@pytest.fixture
def os_users() -> Iterator[list[str]]:
    """Two real OS users for Run As, removed afterwards."""
    names = [f"hwr{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    yield names
    for name in names:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


# -- AWS's command documents -----------------------------------------------------------------


def test_aws_start_non_interactive_command_output_and_exit_code(stack: Any, path: str) -> None:
    run = start(
        stack,
        path,
        "--document-name",
        "AWS-StartNonInteractiveCommand",
        "--parameters",
        json.dumps({"command": ["echo to-out; echo to-err >&2; id -un; exit 3"]}),
    )
    # AWS-StartNonInteractiveCommand does not separate the streams: both on stdout.
    assert b"to-out\nto-err\nssm-user\n" in run.out
    assert b"EXIT_CODE" not in run.out
    # The plugin exits with the command's code; the AWS CLI reports that as its own failure.
    assert run.code == 255
    assert b"returned non-zero exit status 3." in run.err
    h = history(stack, run.session_id)
    assert h["Status"] == "Terminated" and h["Details"] == "The command exited with code 3."


def test_custom_non_interactive_document_separates_stdout_and_stderr(stack: Any, path: str) -> None:
    create_doc(
        stack,
        "HwSeparate",
        {
            "sessionType": "NonInteractiveCommands",
            "parameters": {"code": {"type": "String", "allowedPattern": "^[0-9]+$"}},
            "properties": {
                "linux": {
                    "commands": "echo good; echo bad >&2; exit {{code}}",
                    "separateOutputStream": True,
                    "stdOutSeparatorPrefix": "",
                    "stdErrSeparatorPrefix": "E:",
                }
            },
        },
    )
    run = start(stack, path, "--document-name", "HwSeparate", "--parameters", '{"code":["0"]}')
    assert run.code == 0, run.err
    assert b"good\n" in run.out and b"bad" not in run.out
    assert run.err == b"E:bad\n"
    run = start(stack, path, "--document-name", "HwSeparate", "--parameters", '{"code":["7"]}')
    assert run.code == 255 and b"returned non-zero exit status 7." in run.err
    assert b"E:bad\n" in run.err


def test_our_plugin_alone_exits_with_the_command_code(stack: Any, path: str) -> None:
    response = stack.client("ssm").start_session(
        Target=TARGET,
        DocumentName="AWS-StartNonInteractiveCommand",
        Parameters={"command": ["sh -c 'kill -TERM $$'"]},
    )
    done = subprocess.run(
        [
            "session-manager-plugin",
            json.dumps(response),
            REGION,
            "StartSession",
            "",
            json.dumps({"Target": TARGET}),
            stack.url,
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=Creds().env(path),
        timeout=60,
    )
    assert done.returncode == 128 + 15, done.stderr  # killed by SIGTERM, as a shell reports it


def test_hatchway_start_session_exits_with_the_command_code(stack: Any, path: str) -> None:
    done = subprocess.run(
        [
            str(BIN / "hatchway"),
            "start-session",
            "--target",
            TARGET,
            "--endpoint-url",
            stack.url,
            "--region",
            REGION,
            "--document-name",
            "AWS-StartNonInteractiveCommand",
            "--parameters",
            json.dumps({"command": ["echo almost; exit 4"]}),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=Creds().env(path),
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    assert b"\nalmost\n" in done.stdout


def test_aws_start_interactive_command_runs_on_a_terminal(stack: Any, path: str) -> None:
    run = start(
        stack,
        path,
        "--document-name",
        "AWS-StartInteractiveCommand",
        "--parameters",
        # The plugin learns the session type from the first output (no handshake for
        # InteractiveCommands), so only then does it send keystrokes: prompt first.
        json.dumps({"command": ["printf 'name? '; read -r name; echo hello-$name-$(tty)"]}),
        keys=b"bob\r",
    )
    assert run.code == 0, run.err
    assert b"hello-bob-/dev/pts/" in run.out
    h = history(stack, run.session_id)
    assert h["Status"] == "Terminated" and h["Details"] == "The command exited with code 0."


# -- parameters: no shell injection ----------------------------------------------------------


def test_a_parameter_value_cannot_inject_commands(stack: Any, path: str) -> None:
    marker = Path(f"/tmp/hw-pwned-{uuid.uuid4().hex[:8]}")
    create_doc(
        stack,
        "HwGreet",
        {
            "sessionType": "NonInteractiveCommands",
            "parameters": {"name": {"type": "String", "description": "who to greet"}},
            "properties": {"linux": {"commands": "echo hello {{ name }}"}},
        },
    )
    run = start(
        stack,
        path,
        "--document-name",
        "HwGreet",
        "--parameters",
        json.dumps({"name": [f"x; touch {marker}; echo $(id -un)"]}),
    )
    assert run.code == 0, run.err
    assert f"hello x; touch {marker}; echo $(id -un)\n".encode() in run.out
    assert not marker.exists()


def test_the_broker_refuses_a_value_outside_the_pattern(stack: Any, path: str) -> None:
    create_doc(
        stack,
        "HwStrict",
        {
            "sessionType": "NonInteractiveCommands",
            "parameters": {"unit": {"type": "String", "allowedPattern": "^[a-z-]+$"}},
            "properties": {"linux": {"commands": "systemctl status {{unit}}"}},
        },
    )
    run = start(stack, path, "--document-name", "HwStrict", "--parameters", '{"unit":["a;id"]}')
    assert run.code == 255
    assert b"InvalidParameters" in run.err and b"Starting session" not in run.out


# -- custom documents of every type, authorized per the seed's rules ----------------------


def test_a_user_creates_and_runs_documents_it_is_allowed(stack: Any, path: str) -> None:
    names = {"interactive": "HwMyTop", "noninteractive": "HwMyGrep", "stream": "HwMyShell"}
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ssm:CreateDocument",
                "Resource": doc_arn("HwMy*"),
            },
            {
                "Effect": "Allow",
                "Action": "ssm:StartSession",
                "Resource": [INSTANCE, *(doc_arn(n) for n in names.values())],
                "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": ["ssm:TerminateSession", "ssmmessages:OpenDataChannel"],
                "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*",
            },
        ],
    }
    key, secret = srv.user_with_policy(stack, "docmaker", policy)
    me = Creds(key, secret)
    create_doc(
        stack,
        names["interactive"],
        {
            "sessionType": "InteractiveCommands",
            "parameters": {"count": {"type": "String", "allowedValues": ["1", "2"]}},
            "properties": {"linux": {"commands": ["for i in $(seq {{count}}); do echo n$i; done"]}},
        },
        me,
    )
    create_doc(
        stack,
        names["noninteractive"],
        {
            "sessionType": "NonInteractiveCommands",
            "parameters": {
                "word": {"type": "String"},
                "file": {"type": "String", "default": "/etc/passwd"},
            },
            "properties": {"linux": {"commands": "grep -c {{word}} {{file}}"}},
        },
        me,
    )
    create_doc(
        stack,
        names["stream"],
        {
            "sessionType": "Standard_Stream",
            "inputs": {
                "idleSessionTimeout": "5",
                "shellProfile": {"linux": "export HW_GREETING=from-profile; cd /tmp"},
            },
        },
        me,
    )
    create_doc(
        stack,
        "HwMyUnlisted",
        {"sessionType": "NonInteractiveCommands", "properties": {"linux": {"commands": "id"}}},
        me,
    )

    run = start(
        stack,
        path,
        "--document-name",
        names["interactive"],
        "--parameters",
        '{"count":["2"]}',
        creds=me,
    )
    assert run.code == 0, run.err
    assert b"n1\r\nn2\r\n" in run.out

    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("two words\ntwo\nwords\nsay two words\n")
        f.flush()
        os.chmod(f.name, 0o644)
        run = start(
            stack,
            path,
            "--document-name",
            names["noninteractive"],
            "--parameters",
            json.dumps({"word": ["two words"], "file": [f.name]}),
            creds=me,
        )
    assert run.code == 0, run.err
    assert b"\n2\n" in run.out  # grep -c 'two words' <file>: the value stayed one argument

    run = start(
        stack,
        path,
        "--document-name",
        names["stream"],
        creds=me,
        keys=b"echo G=$HW_GREETING D=$(pwd)\rexit\r",
    )
    assert run.code == 0, run.err
    assert b"G=from-profile D=/tmp" in run.out
    rows = stack.client("ssm").describe_sessions(
        State="History", Filters=[{"key": "SessionId", "value": run.session_id}]
    )["Sessions"]
    assert rows[0]["DocumentName"] == names["stream"]

    for denied in ("HwMyUnlisted", "AWS-StartNonInteractiveCommand"):
        run = start(stack, path, "--document-name", denied, "--parameters", "{}", creds=me)
        assert run.code == 255
        assert b"AccessDeniedException" in run.err and denied.encode() in run.err
    # The condition makes the default document a named one too: omitting it is denied.
    run = start(stack, path, creds=me)
    assert run.code == 255 and b"AccessDeniedException" in run.err


# -- Run As --------------------------------------------------------------------------------


def run_as_documents(broker: Any, default_user: str) -> None:
    create_doc(
        broker,
        f"HwRunAs-{default_user}",
        {
            "sessionType": "Standard_Stream",
            "inputs": {"runAsEnabled": True, "runAsDefaultUser": default_user},
        },
    )


def whoami(broker: Any, path: str, document: str, creds: Creds) -> str:
    run = start(
        broker,
        path,
        "--document-name",
        document,
        creds=creds,
        keys=b"echo WHO=$(id -un)=$HOME=\rexit\r",
    )
    assert run.code == 0, run.err
    line = run.out.split(b"WHO=")[-1].split(b"\r")[0].decode()
    user, home, _ = line.split("=")
    assert home == pwd.getpwnam(user).pw_dir
    return user


def test_run_as_tag_wins_over_the_default_user(stack: Any, path: str, os_users: list[str]) -> None:
    default_user, tagged_user = os_users
    run_as_documents(stack, default_user)
    doc = f"HwRunAs-{default_user}"
    allow = SESSIONS_ANYWHERE
    plain = Creds(*srv.user_with_policy(stack, f"plain-{default_user}", allow))
    tagged = Creds(
        *srv.user_with_policy(
            stack, f"tagged-{default_user}", allow, tags={"SSMSessionRunAs": tagged_user}
        )
    )
    assert whoami(stack, path, doc, plain) == default_user
    assert whoami(stack, path, doc, tagged) == tagged_user


def test_run_as_session_tags_win_over_role_tags(stack: Any, path: str, os_users: list[str]) -> None:
    role_user, session_user = os_users
    run_as_documents(stack, "nobody-by-default")
    iam = stack.client("iam")
    role = f"RunAsRole-{role_user}"
    iam.create_role(
        RoleName=role,
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                        "Action": ["sts:AssumeRole", "sts:TagSession"],
                    }
                ],
            }
        ),
        Tags=[{"Key": "SSMSessionRunAs", "Value": role_user}],
    )
    iam.put_role_policy(
        RoleName=role,
        PolicyName="ssm",
        PolicyDocument=json.dumps(SESSIONS_ANYWHERE),
    )
    sts = stack.client("sts")

    def assume(tags: list[dict[str, str]]) -> Creds:
        c = sts.assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName="ops", Tags=tags
        )["Credentials"]
        return Creds(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])

    doc = "HwRunAs-nobody-by-default"
    assert whoami(stack, path, doc, assume([])) == role_user
    assert whoami(
        stack, path, doc, assume([{"Key": "SSMSessionRunAs", "Value": session_user}])
    ) == (session_user)


def test_run_as_user_missing_on_the_node_fails_the_session(stack: Any, path: str) -> None:
    missing = f"hwnone{uuid.uuid4().hex[:6]}"
    run_as_documents(stack, missing)
    run = start(stack, path, "--document-name", f"HwRunAs-{missing}", keys=b"id\r")
    reason = f"failed to start pty since RunAs user {missing} does not exist"
    assert f"SessionId: {run.session_id} : {reason}".encode() in run.out
    h = history(stack, run.session_id)
    assert h["Status"] == "Failed" and h["Details"] == reason
    with pytest.raises(KeyError):
        pwd.getpwnam(missing)  # never created


def test_run_as_enabled_without_any_user_fails_the_session(stack: Any, path: str) -> None:
    create_doc(
        stack,
        "HwRunAsNobody",
        {"sessionType": "Standard_Stream", "inputs": {"runAsEnabled": "true"}},
    )
    run = start(stack, path, "--document-name", "HwRunAsNobody", keys=b"id\r")
    h = history(stack, run.session_id)
    assert h["Status"] == "Failed" and h["Details"] == NO_RUN_AS_USER
    assert NO_RUN_AS_USER.encode() in run.out


def ensure_preferences(ssm: Any) -> dict[str, Any]:
    """AWS's first step: ``create-document SSM-SessionManagerRunShell`` (absent until then)."""
    try:
        return dict(json.loads(ssm.get_document(Name="SSM-SessionManagerRunShell")["Content"]))
    except ssm.exceptions.InvalidDocument:
        content = json.dumps(
            {
                "schemaVersion": "1.0",
                "description": "Document to hold regional settings for Session Manager",
                "sessionType": "Standard_Stream",
                "inputs": {"idleSessionTimeout": "20", "runAsEnabled": False},
            }
        )
        ssm.create_document(
            Name="SSM-SessionManagerRunShell", Content=content, DocumentType="Session"
        )
        return dict(json.loads(content))


def test_run_as_applies_to_command_documents_through_the_preferences(
    stack: Any, path: str, os_users: list[str]
) -> None:
    """AWS's command documents have no inputs: they run with SSM-SessionManagerRunShell's.

    issue 15 item 1: AWS's documented procedure is ``update-document --document-version
    '$LATEST'`` and nothing more; sessions use the latest version (this test used to call
    update-document-default-version too, which hid the difference: changed deliberately)."""
    ssm = stack.client("ssm")
    prefs = ensure_preferences(ssm)
    changed = dict(
        prefs, inputs={**prefs["inputs"], "runAsEnabled": True, "runAsDefaultUser": os_users[0]}
    )
    ssm.update_document(
        Name="SSM-SessionManagerRunShell", Content=json.dumps(changed), DocumentVersion="$LATEST"
    )
    try:
        run = start(
            stack,
            path,
            "--document-name",
            "AWS-StartNonInteractiveCommand",
            "--parameters",
            '{"command":["id -un"]}',
        )
        assert run.code == 0, run.err
        assert f"\n{os_users[0]}\n".encode() in run.out
    finally:
        back = dict(prefs, inputs={**prefs["inputs"], "runAsEnabled": False})
        back["description"] = "back to the defaults"
        ssm.update_document(
            Name="SSM-SessionManagerRunShell", Content=json.dumps(back), DocumentVersion="$LATEST"
        )
    # Back to the defaults: ssm-user again.
    run = start(
        stack,
        path,
        "--document-name",
        "AWS-StartNonInteractiveCommand",
        "--parameters",
        '{"command":["id -un"]}',
    )
    assert b"\nssm-user\n" in run.out


def test_a_named_session_document_runs_its_latest_version(stack: Any, path: str) -> None:
    """issue 15 item 1: ``--document-name`` runs the document's $LATEST version (as AWS's
    plugin issue 112 reports), not its default one."""
    ssm = stack.client("ssm")
    create_doc(
        stack,
        "HwLatest",
        {
            "sessionType": "NonInteractiveCommands",
            "properties": {"linux": {"commands": "echo version-one"}},
        },
    )
    v2 = {
        "schemaVersion": "1.0",
        "sessionType": "NonInteractiveCommands",
        "properties": {"linux": {"commands": "echo version-two"}},
    }
    ssm.update_document(Name="HwLatest", Content=json.dumps(v2), DocumentVersion="$LATEST")
    assert ssm.describe_document(Name="HwLatest")["Document"]["DefaultVersion"] == "1"
    run = start(stack, path, "--document-name", "HwLatest")
    assert run.code == 0, run.err
    assert b"\nversion-two\n" in run.out and b"version-one" not in run.out


def test_interactive_command_in_a_terminal(stack: Any, path: str) -> None:
    """As a person sees it: tmux runs the CLI, types the answer, reads the screen."""
    from test_client_tmux import Tmux

    name = f"hw-{uuid.uuid4().hex[:8]}"
    script = "printf 'name? '; read -r n; echo hi-$n cols=$(tput cols)"
    cmd = (
        f"{BIN / 'aws'} --endpoint-url {stack.url} ssm start-session --target {TARGET} "
        "--document-name AWS-StartInteractiveCommand "
        f"--parameters {shlex.quote(json.dumps({'command': [script]}))}; "
        "echo CLI-EXIT=$?; sleep 30"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "97", "-y", "30", cmd],
        env={**Creds().env(path), "TERM": "xterm-256color"},
        check=True,
        timeout=10,
    )
    t = Tmux(name)
    try:
        t.wait("name?")
        t.keys("ann", "Enter")
        t.wait("hi-ann cols=97")
        t.wait("CLI-EXIT=0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)


def test_the_node_runs_the_version_start_session_validated(stack: Any, path: str) -> None:
    ssm = stack.client("ssm")
    create_doc(
        stack,
        "HwVersioned",
        {
            "sessionType": "NonInteractiveCommands",
            "properties": {"linux": {"commands": "echo version-one"}},
        },
    )
    response = ssm.start_session(Target=TARGET, DocumentName="HwVersioned")
    # A new default version is published before the client connects.
    v2 = json.dumps(
        {
            "schemaVersion": "1.0",
            "sessionType": "Standard_Stream",
            "inputs": {"shellProfile": {"linux": "echo version-two"}},
        }
    )
    ssm.update_document(Name="HwVersioned", Content=v2, DocumentVersion="$LATEST")
    ssm.update_document_default_version(Name="HwVersioned", DocumentVersion="2")
    done = subprocess.run(
        [
            "session-manager-plugin",
            json.dumps(response),
            REGION,
            "StartSession",
            "",
            json.dumps({"Target": TARGET, "DocumentName": "HwVersioned"}),
            stack.url,
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=Creds().env(path),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert b"\nversion-one\n" in done.stdout and b"version-two" not in done.stdout


# -- issue 15 item 3: the session user the agent creates may sudo ------------------------------


def _run_on(
    broker: Any, path: str, target: str, command: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            str(BIN / "aws"),
            "ssm",
            "start-session",
            "--target",
            target,
            "--endpoint-url",
            broker.url,
            "--document-name",
            "AWS-StartNonInteractiveCommand",
            "--parameters",
            json.dumps({"command": [command]}),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=Creds().env(path),
        timeout=90,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="creates OS users")
@pytest.mark.parametrize("created_by_agent", [True, False])
def test_the_user_the_agent_creates_gets_passwordless_sudo(
    stack: Any, path: str, tmp_path: Path, created_by_agent: bool
) -> None:
    """AWS's agent grants the ``ssm-user`` it creates passwordless sudo in
    /etc/sudoers.d/ssm-agent-users; never a user it did not create. (This machine's ssm-user
    may already exist, so the agent runs with its own ``--session-user``, whose file is
    ssm-agent-users-<name>.)"""
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed (.ci/run installs it)")
    name = f"hws{uuid.uuid4().hex[:8]}"
    grant = Path("/etc/sudoers.d") / f"ssm-agent-users-{name}"
    if not created_by_agent:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    target = f"i-0{uuid.uuid4().hex[:16]}"
    agent = srv.start_agent(stack, tmp_path / "state", target, extra=("--session-user", name))
    try:
        done = _run_on(stack, path, target, "id -un; sudo -n true && echo SUDO-OK")
        assert f"\n{name}\n".encode() in done.stdout, done.stderr
        if created_by_agent:
            assert b"SUDO-OK" in done.stdout, done.stdout
            st = grant.lstat()
            assert stat.S_IMODE(st.st_mode) == 0o440 and st.st_uid == 0
            assert grant.read_text() == f"# User rules for {name}\n{name} ALL=(ALL) NOPASSWD:ALL\n"
            assert not [p for p in grant.parent.iterdir() if p.name.startswith(".ssm-agent")]
            # Operators opt out by removing the file: it is not written again.
            grant.unlink()
            done = _run_on(stack, path, target, "sudo -n true && echo SUDO-OK")
            assert b"SUDO-OK" not in done.stdout
            assert not grant.exists()
        else:
            assert b"SUDO-OK" not in done.stdout
            assert not grant.exists()
    finally:
        agent.stop()
        grant.unlink(missing_ok=True)
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


def test_aws_start_non_interactive_command_separate_output_stream(stack: Any, path: str) -> None:
    """issue 15 item 4: AWS's parameters separateOutputStream / stdoutSeparatorPrefix /
    stderrSeparatorPrefix, through the real ``aws ssm start-session``."""
    run = start(
        stack,
        path,
        "--document-name",
        "AWS-StartNonInteractiveCommand",
        "--parameters",
        json.dumps(
            {
                "command": ["echo to-out; echo to-err >&2; exit 5"],
                "separateOutputStream": ["true"],
                "stdoutSeparatorPrefix": ["OUT:"],
                "stderrSeparatorPrefix": ["ERR:"],
            }
        ),
    )
    assert b"OUT:to-out\n" in run.out and b"to-err" not in run.out
    assert b"ERR:to-err\n" in run.err
    assert b"EXIT_CODE" not in run.out  # our plugin takes it as its exit status
    assert run.code == 255 and b"returned non-zero exit status 5." in run.err
