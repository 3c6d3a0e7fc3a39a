"""Command sessions and Run As on the node: a real AgentSession, driven over its data channel
by a loopback peer that plays broker and client (tests/agent/agentpeer.py). Runs as root, as
the agent does (sessions switch users)."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentpeer import REG, Peer, run_session, task
from hypothesis import given
from hypothesis import strategies as st

from hatchway.agent.command import prefix_lines
from hatchway.agent.session import AgentSession, SessionSettings
from hatchway.agent.shell import ELEVATED_NOT_ALLOWED, NO_RUN_AS_USER
from hatchway.protocol import PayloadType, build_size


def non_interactive(commands: Any, **linux: Any) -> dict[str, Any]:
    return {
        "schemaVersion": "1.0",
        "sessionType": "NonInteractiveCommands",
        "properties": {"linux": {"commands": commands, **linux}},
    }


def interactive(commands: Any, **linux: Any) -> dict[str, Any]:
    return {
        "schemaVersion": "1.0",
        "sessionType": "InteractiveCommands",
        "properties": {"linux": {"commands": commands, **linux}},
    }


def run(
    document: dict[str, Any],
    parameters: dict[str, list[str]] | None = None,
    **kw: Any,
) -> tuple[Peer, AgentSession]:
    async def go() -> tuple[Peer, AgentSession]:
        async with Peer() as peer:
            session = await run_session(peer, document, parameters, **kw)
            await asyncio.wait_for(peer.ended.wait(), 10)
            return peer, session

    return asyncio.run(go())


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone (ESRCH: between open and read)
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def os_user() -> Iterator[str]:
    """A real OS user with a supplementary group, removed afterwards."""
    name = f"hwt{uuid.uuid4().hex[:8]}"
    group = f"{name}g"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "-G", group, name], check=True
    )
    yield name
    subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
    subprocess.run(["groupdel", group], check=False, capture_output=True)


# -- NonInteractiveCommands ----------------------------------------------------------------


def test_separate_streams_prefix_every_line_then_the_exit_code() -> None:
    doc = non_interactive(
        "echo out1; echo err1 >&2; printf 'a\\nb'; printf 'c\\n' >&2; id -un; exit 3",
        separateOutputStream=True,
        stdOutSeparatorPrefix="OUT:",
        stdErrSeparatorPrefix="ERR:",
    )
    peer, session = run(doc)
    t = peer.transcript
    # "b" has no newline, so id's output continues that line, whichever read brings it.
    assert t.data(PayloadType.OUTPUT) == b"OUT:out1\nOUT:a\nOUT:bssm-user\n"
    assert t.data(PayloadType.STDERR) == b"ERR:err1\nERR:c\n"
    assert t.payloads[-1] == (PayloadType.EXIT_CODE, b"EXIT_CODE: 3")
    assert t.failure is None and t.states[-1][0] == "Terminating"
    assert session.exit_code == 3


def test_separate_streams_accept_the_string_true_and_no_prefixes() -> None:
    peer, _ = run(non_interactive(["echo one", "echo two >&2"], separateOutputStream="true"))
    assert peer.transcript.data(PayloadType.OUTPUT) == b"one\n"
    assert peer.transcript.data(PayloadType.STDERR) == b"two\n"
    assert peer.transcript.payloads[-1] == (PayloadType.EXIT_CODE, b"EXIT_CODE: 0")


def test_merged_output_and_no_exit_code_payload() -> None:
    """Without separateOutputStream AWS's agent sends no ExitCode payload (issue 15 item 4;
    this test asserted Hatchway's old EXIT_CODE payload here: changed deliberately). The
    session still knows the code (it goes to the broker with Terminating)."""
    peer, session = run(non_interactive("echo a; echo b >&2; echo c; exit 42"))
    t = peer.transcript
    assert t.data(PayloadType.OUTPUT) == b"a\nb\nc\n"
    assert t.data(PayloadType.STDERR) == b""
    assert all(kind != PayloadType.EXIT_CODE for kind, _ in t.payloads)
    assert session.exit_code == 42


def test_stdin_is_dev_null_and_the_environment_is_a_clean_login() -> None:
    os.environ["HATCHWAY_AGENT_ONLY"] = "leak"
    try:
        peer, _ = run(
            non_interactive(
                "readlink /proc/$$/fd/0; cat; echo cat=$?; pwd; env | sort",
                separateOutputStream=True,
            )
        )
    finally:
        del os.environ["HATCHWAY_AGENT_ONLY"]
    out = peer.transcript.data().decode()
    home = pwd.getpwnam("ssm-user").pw_dir
    assert out.startswith(f"/dev/null\ncat=0\n{home}\n")
    env = dict(line.split("=", 1) for line in out.splitlines()[3:] if "=" in line)
    assert env["HOME"] == home and env["USER"] == env["LOGNAME"] == "ssm-user"
    assert "HATCHWAY_AGENT_ONLY" not in env


def test_control_bytes_signal_the_command_and_size_is_ignored() -> None:
    doc = non_interactive(
        "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.1; done",
        separateOutputStream=True,  # so that the exit code comes as a payload
    )

    async def go() -> Peer:
        async with Peer() as peer:
            session = AgentSession(REG, task(peer, doc), SessionSettings())
            runner = asyncio.create_task(session.run())
            await peer.wait_for(b"ready\n")
            await peer.send(build_size(100, 30), PayloadType.SIZE)
            await peer.send(b"plain text, no signal")
            await asyncio.sleep(0.3)
            assert b"got-int" not in peer.transcript.data()
            await peer.send(b"x\x03y")
            await asyncio.wait_for(runner, 20)
            return peer

    peer = asyncio.run(go())
    assert b"got-int\n" in peer.transcript.data()
    assert peer.transcript.payloads[-1] == (PayloadType.EXIT_CODE, b"EXIT_CODE: 9")


def test_ending_the_session_kills_the_process_group() -> None:
    doc = non_interactive("sleep 1000 >/dev/null 2>&1 & echo bg=$!; echo fg=$$; sleep 1000")

    async def go() -> tuple[int, int]:
        async with Peer() as peer:
            session = AgentSession(REG, task(peer, doc), SessionSettings())
            runner = asyncio.create_task(session.run())
            await peer.wait_for(b"fg=")
            await peer.wait_for(b"\n")
            lines = dict(
                line.split("=") for line in peer.transcript.data().decode().split() if "=" in line
            )
            bg, fg = int(lines["bg"]), int(lines["fg"])
            assert alive(bg) and alive(fg)
            await session.terminate()
            await asyncio.wait_for(runner, 20)
            return bg, fg

    bg, fg = asyncio.run(go())
    for pid in (bg, fg):
        for _ in range(100):
            if not alive(pid):
                break
            asyncio.run(asyncio.sleep(0.05))
        assert not alive(pid), pid


def test_bad_separator_prefix_fails_the_session() -> None:
    peer, _ = run(
        non_interactive("true", separateOutputStream=True, stdOutSeparatorPrefix="{{p}}"),
    )
    assert peer.transcript.failure == "invalid stdoutSeparatorPrefix {{p}}"


def test_empty_commands_fail_instead_of_starting_a_shell() -> None:
    doc = non_interactive("{{command}}")
    doc["parameters"] = {"command": {"type": "String"}}
    peer, _ = run(doc, {"command": ["  "]})
    assert peer.transcript.failure == (
        "The session document's commands are empty: there is nothing to run."
    )


# -- InteractiveCommands -------------------------------------------------------------------


def test_interactive_command_runs_on_a_pty_and_takes_input() -> None:
    doc = interactive(["echo I=$((6*7)) T=$(tty) U=$(id -un)", "read x", "echo got-$x", "exit 5"])

    async def go() -> tuple[Peer, AgentSession]:
        async with Peer() as peer:
            session = AgentSession(REG, task(peer, doc), SessionSettings())
            runner = asyncio.create_task(session.run())
            await peer.wait_for(b"U=ssm-user")
            await peer.send(b"hello\r")
            await asyncio.wait_for(runner, 20)
            return peer, session

    peer, session = asyncio.run(go())
    out = peer.transcript.data()
    assert b"I=42 T=/dev/pts/" in out
    assert b"got-hello" in out
    assert session.exit_code == 5
    assert peer.transcript.states[-1][0] == "Terminating"


def test_run_as_elevated_needs_a_node_that_allows_root() -> None:
    peer, _ = run(interactive("id -u", runAsElevated=True))
    assert peer.transcript.failure == ELEVATED_NOT_ALLOWED
    peer, _ = run(
        non_interactive("id -u", runAsElevated=True),
        settings=SessionSettings(allow_root=True),
    )
    assert peer.transcript.data() == b"0\n"


# -- parameters on the node ----------------------------------------------------------------


def test_the_agent_refuses_a_value_that_breaks_the_pattern(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    doc = non_interactive("echo {{name}}")
    doc["parameters"] = {"name": {"type": "String", "allowedPattern": "^[a-z]+$"}}
    peer, session = run(doc, {"name": [f"x; touch {marker}"]})
    assert peer.transcript.failure is not None
    assert "failed to satisfy constraint" in peer.transcript.failure
    assert "^[a-z]+$" in peer.transcript.failure
    assert session.exit_code is None and not marker.exists()


def test_embedded_values_are_quoted_whole_commands_are_not(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    os.chmod(tmp_path, 0o777)
    doc = non_interactive(["echo [{{name}}]", "{{extra}}"])
    doc["parameters"] = {"name": {"type": "String"}, "extra": {"type": "String"}}
    peer, _ = run(doc, {"name": [f"x; touch {marker}"], "extra": ["echo $((1+2))"]})
    assert peer.transcript.data() == f"[x; touch {marker}]\n3\n".encode()
    assert not marker.exists()


# -- Run As --------------------------------------------------------------------------------


def run_as_doc(**inputs: Any) -> dict[str, Any]:
    doc = non_interactive("id -un; id -Gn; echo $HOME; pwd")
    doc["inputs"] = {"runAsEnabled": True, **inputs}
    return doc


def test_run_as_user_gets_its_uid_groups_and_home(os_user: str) -> None:
    peer, _ = run(run_as_doc(runAsDefaultUser="nobody-else"), run_as_user=os_user)
    lines = peer.transcript.data().decode().splitlines()
    home = pwd.getpwnam(os_user).pw_dir
    assert lines[0] == os_user
    assert f"{os_user}g" in lines[1].split()
    assert lines[2:] == [home, home]


def test_run_as_default_user_when_the_broker_names_none(os_user: str) -> None:
    peer, _ = run(run_as_doc(runAsDefaultUser=os_user))
    assert peer.transcript.data().decode().splitlines()[0] == os_user
    # A document's "true" string enables Run As as well.
    peer, _ = run(run_as_doc(runAsEnabled="true", runAsDefaultUser=os_user))
    assert peer.transcript.data().decode().splitlines()[0] == os_user


def test_missing_run_as_user_fails_and_is_not_created() -> None:
    name = f"hwmissing{uuid.uuid4().hex[:6]}"
    peer, _ = run(run_as_doc(), run_as_user=name)
    assert peer.transcript.failure == f"failed to start pty since RunAs user {name} does not exist"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


def test_run_as_root_and_run_as_nobody_fail() -> None:
    peer, _ = run(run_as_doc(), run_as_user="root", settings=SessionSettings(allow_root=True))
    assert peer.transcript.failure is not None
    assert "does not support using an operating system's root user account" in (
        peer.transcript.failure
    )
    peer, _ = run(run_as_doc(runAsDefaultUser=""))
    assert peer.transcript.failure == NO_RUN_AS_USER


def test_run_as_user_is_ignored_when_run_as_is_off() -> None:
    doc = non_interactive("id -un")
    doc["inputs"] = {"runAsEnabled": False, "runAsDefaultUser": "root"}
    peer, _ = run(doc, run_as_user="root")
    assert peer.transcript.data() == b"ssm-user\n"


def test_shell_sessions_run_as_the_run_as_user_too(os_user: str) -> None:
    doc = {
        "schemaVersion": "1.0",
        "sessionType": "Standard_Stream",
        "inputs": {"runAsEnabled": True, "runAsDefaultUser": os_user},
    }

    async def go() -> bytes:
        async with Peer() as peer:
            session = AgentSession(REG, task(peer, doc), SessionSettings())
            runner = asyncio.create_task(session.run())
            await peer.send(b"echo U=$(id -un) G=$(id -Gn | tr ' ' ,)\r")
            await peer.wait_for(b"G=")
            await peer.send(b"exit\r")
            await asyncio.wait_for(runner, 20)
            return peer.transcript.data()

    out = asyncio.run(go()).decode()
    assert f"U={os_user} G={os_user},{os_user}g" in out
    assert grp.getgrnam(f"{os_user}g").gr_mem == [os_user]


@given(
    st.lists(st.sampled_from([b"a", b"b", b"\n", b"xy"]), max_size=30).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=60), max_size=5),
)
def test_prefixes_do_not_depend_on_how_output_is_chunked(data: bytes, cuts: list[int]) -> None:
    whole, _ = prefix_lines(data, b"P:", True)
    expected = b"".join(b"P:" + line + b"\n" for line in data.split(b"\n")[:-1]) + (
        b"P:" + data.split(b"\n")[-1] if data.split(b"\n")[-1] else b""
    )
    assert whole == expected
    pieces, start, at = [], 0, True
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        out, at = prefix_lines(data[start:cut], b"P:", at)
        pieces.append(out)
        start = cut
    assert b"".join(pieces) == whole
