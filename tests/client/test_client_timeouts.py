"""Timeouts as the user sees them: the real ``aws ssm start-session`` with our plugin prints the
broker's reason when the idle timeout or the maximum duration ends a session, and
DescribeSessions shows it. The broker runs with ``--timeout-unit 1`` (minutes count as
seconds)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_client_broker import srv
from test_client_commands import TARGET, Run, history, start

from hatchway.client.command import NO_EXIT_CODE
from hatchway.server.relay.datachannel import IDLE_MESSAGE, MAX_MESSAGE
from hatchway.ssm import DEFAULT_SESSION_DOCUMENT


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(tmp_path_factory.mktemp("to-broker") / "data", "--timeout-unit", "1")
    a = srv.start_agent(b, tmp_path_factory.mktemp("to-node") / "state", TARGET)
    ssm = b.client("ssm")
    for name, session_type, inputs, props in (
        ("Idle3", "Standard_Stream", {"idleSessionTimeout": "3"}, None),
        ("Max4", "Standard_Stream", {"idleSessionTimeout": "60", "maxSessionDuration": "4"}, None),
        (
            "SlowIdle3",
            "NonInteractiveCommands",
            {"idleSessionTimeout": "3"},
            {"linux": {"commands": "echo started; sleep 600"}},
        ),
    ):
        body: dict[str, Any] = {
            "schemaVersion": "1.0",
            "sessionType": session_type,
            "inputs": inputs,
        }
        if props:
            body["properties"] = props
        ssm.create_document(Name=name, DocumentType="Session", Content=json.dumps(body))
    yield b
    a.stop()
    srv.stop_broker(b)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from harness.client import plugin_on_path

    return plugin_on_path(tmp_path_factory.mktemp("to-plugin"))


def _reason_shown(run: Run, reason: str) -> None:
    assert f"\n\nSessionId: {run.session_id} : {reason}\n\n".encode() in run.out, run.out


def test_idle_timeout_is_shown_to_the_user(stack: Any, path: str) -> None:
    run = start(stack, path, "--document-name", "Idle3")  # nobody types
    assert run.code == 0, run.err
    _reason_shown(run, IDLE_MESSAGE)
    h = history(stack, run.session_id)
    assert h["Status"] == "Terminated" and h["Details"] == IDLE_MESSAGE


def test_max_duration_is_shown_to_the_user_even_while_typing(stack: Any, path: str) -> None:
    # A loop that keeps printing; the plugin keeps the shell busy, but only the clock counts.
    run = start(
        stack,
        path,
        "--document-name",
        "Max4",
        keys=b"while :; do echo tick; sleep 0.5; done\r",
    )
    assert run.code == 0, run.err
    assert b"tick" in run.out
    _reason_shown(run, MAX_MESSAGE)
    h = history(stack, run.session_id)
    assert h["Status"] == "Terminated" and h["Details"] == MAX_MESSAGE


def test_idle_timeout_ends_a_quiet_command_without_an_exit_code(stack: Any, path: str) -> None:
    run = start(stack, path, "--document-name", "SlowIdle3")
    assert b"started\n" in run.out
    _reason_shown(run, IDLE_MESSAGE)
    # No exit code came: our plugin says so with its status, the AWS CLI with its own.
    assert run.code == 255
    assert f"returned non-zero exit status {NO_EXIT_CODE}.".encode() in run.err
    assert history(stack, run.session_id)["Details"] == IDLE_MESSAGE


def test_preferences_shell_profile_runs_in_the_shell(stack: Any, path: str) -> None:
    """AWS's procedure: create-document SSM-SessionManagerRunShell (it does not exist until
    then), later update-document '$LATEST', which takes effect with nothing more (issue 15;
    this test used to need update-document-default-version too)."""
    ssm = stack.client("ssm")
    prefs: dict[str, Any] = {"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": {}}
    ssm.create_document(
        Name=DEFAULT_SESSION_DOCUMENT, Content=json.dumps(prefs), DocumentType="Session"
    )
    profile = "export HW_FROM_PROFILE=$((40+2)); cd /usr/share; echo profile-ran"
    prefs["inputs"]["shellProfile"] = {"linux": profile, "windows": ""}
    ssm.update_document(
        Name=DEFAULT_SESSION_DOCUMENT, Content=json.dumps(prefs), DocumentVersion="$LATEST"
    )
    run = start(stack, path, keys=b"echo P=$HW_FROM_PROFILE D=$(pwd)\rexit\r")
    assert run.code == 0, run.err
    assert b"profile-ran" in run.out
    assert b"P=42 D=/usr/share" in run.out
