"""``session-manager-plugin``'s argv/env contract
(docs/reference/data-channel.md#plugin-invocation), in-process and as a process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hatchway.client.session_manager_plugin import (
    ENV_VAR,
    INSTALLED_MESSAGE,
    VERSION,
    UsageError,
    parse_args,
    run,
)

BIN = Path(sys.executable).parent
RESPONSE = {"SessionId": "alice-0123456789abcdef0", "TokenValue": "tok", "StreamUrl": "ws://h/x"}
REQUEST = json.dumps({"Target": "mi-0123456789abcdef0", "DocumentName": "AWS-StartSSHSession"})


def argv(first: str, op: str = "StartSession", request: str = REQUEST) -> list[str]:
    return ["session-manager-plugin", first, "eu-west-1", op, "prof", request, "http://ssm:1"]


def test_version() -> None:
    out = io.StringIO()
    assert run(["session-manager-plugin", "--version"], {}, out) == 0
    assert out.getvalue() == f"{VERSION}\n"
    assert tuple(int(p) for p in VERSION.split(".")) > (1, 2, 497, 0)  # the CLI's env-var gate


def test_no_arguments_says_installed() -> None:
    out = io.StringIO()
    assert run(["session-manager-plugin"], {}, out) == 0
    assert out.getvalue() == (
        "\nThe Session Manager plugin was installed successfully. "
        "Use the AWS CLI to start a session.\n\n"
    )
    assert out.getvalue() == INSTALLED_MESSAGE


def test_response_from_the_environment_variable_which_is_then_unset() -> None:
    env = {ENV_VAR: json.dumps(RESPONSE), "OTHER": "1"}
    params = parse_args(argv(ENV_VAR), env)
    assert ENV_VAR not in env and env == {"OTHER": "1"}
    assert params.session_id == RESPONSE["SessionId"]
    assert params.token == "tok"
    assert params.stream_url == "ws://h/x"
    assert params.region == "eu-west-1"
    assert params.profile == "prof"
    assert params.target == "mi-0123456789abcdef0"
    assert params.endpoint_url == "http://ssm:1"


def test_response_inline_json() -> None:
    params = parse_args(argv(json.dumps(RESPONSE)), {})
    assert params.session_id == RESPONSE["SessionId"]


def test_legacy_four_arguments() -> None:
    params = parse_args(["p", json.dumps(RESPONSE), "us-east-1", "StartSession"], {})
    assert (params.profile, params.target, params.endpoint_url) == ("", "", "")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (argv("{not json"), {}, "Cannot perform start session: the StartSession response is not"),
        (argv(ENV_VAR), {}, f"environment variable {ENV_VAR} is not set"),
        (argv("[1]"), {}, "the StartSession response is not a JSON object"),
        (argv('{"SessionId":"s"}'), {}, "has no TokenValue, StreamUrl"),
        (argv(json.dumps(RESPONSE), request="{}"), {}, "the StartSession request has no Target"),
        (argv(json.dumps(RESPONSE), request="nope"), {}, "request (argv[5]) is not valid JSON"),
        (argv(json.dumps(RESPONSE), op="ResumeSession"), {}, "Invalid Operation"),
        (["p", "x", "y"], {}, "Unknown operation x."),
    ],
)
def test_bad_input_is_a_clear_error_and_exit_1(
    args: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=None) as caught:
        parse_args(args, dict(env))
    assert message in str(caught.value)
    out = io.StringIO()
    assert run(args, dict(env), out) == 1
    assert message in out.getvalue()


def test_console_script() -> None:
    exe = BIN / "session-manager-plugin"
    if not exe.exists():
        pytest.skip("console script not installed (pip install -e . after the pyproject change)")
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, f"{VERSION}\n")
    bad = subprocess.run(
        [str(exe), "{", "us-east-1", "StartSession", "", REQUEST, "http://x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert bad.stdout.startswith("Cannot perform start session:")
