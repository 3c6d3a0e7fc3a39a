"""Parameters in shell text (``commands``, ``shellProfile.linux``) are quoted unless they are
the whole command; ``is_true`` reads document booleans as the agent does."""

from __future__ import annotations

import shlex
import subprocess

from hypothesis import given
from hypothesis import strategies as st

from hatchway.ssm.documents import (
    interpolate_inputs,
    interpolate_properties,
    interpolate_shell,
    is_true,
)

NASTY = [
    "x; touch /tmp/pwned",
    "$(id)",
    "`id`",
    "a'b\"c",
    "--help",
    "",
    " leading and trailing ",
    "new\nline",
    "*",
    "$HOME",
    "\\",
]


def test_embedded_reference_is_one_shell_word() -> None:
    for value in NASTY:
        cmd = interpolate_shell("printf '[%s]' {{ v }}", {"v": [value]})
        out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True)
        assert out.stdout == f"[{value}]", (value, cmd)


def test_injection_attempt_does_not_run() -> None:
    cmd = interpolate_shell("echo {{name}}", {"name": ["x; echo INJECTED"]})
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True)
    assert out.stdout == "x; echo INJECTED\n"


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")))
def test_quoted_value_splits_back_to_itself(value: str) -> None:
    cmd = interpolate_shell("run --name={{p}} end", {"p": [value]})
    assert shlex.split(cmd) == ["run", f"--name={value}", "end"]


def test_whole_reference_is_the_command_itself() -> None:
    assert interpolate_shell("{{command}}", {"command": ["ls -l; id"]}) == "ls -l; id"
    assert interpolate_shell("  {{ command }} ", {"command": ["top"]}) == "top"
    # A list: each element is a command line; a whole reference there is a command too.
    assert interpolate_shell(
        ["cd /tmp", "{{cmd}}", "tail {{f}}"], {"cmd": ["ls"], "f": ["a b"]}
    ) == [
        "cd /tmp",
        "ls",
        "tail 'a b'",
    ]


def test_string_lists_become_several_words_or_lines() -> None:
    assert interpolate_shell("ls {{files}}", {"files": ["a b", "c"]}) == "ls 'a b' c"
    assert interpolate_shell("{{cmds}}", {"cmds": ["one", "two"]}) == ["one", "two"]
    assert interpolate_shell(["{{cmds}}", "three"], {"cmds": ["one", "two"]}) == [
        "one",
        "two",
        "three",
    ]


def test_unknown_and_parameter_store_references_are_left_alone() -> None:
    assert interpolate_shell("echo {{nope}} {{ssm:/x}}", {}) == "echo {{nope}} {{ssm:/x}}"


def test_properties_quote_commands_only_for_command_sessions() -> None:
    props = {
        "linux": {
            "commands": "grep {{pattern}} /var/log/syslog",
            "runAsElevated": False,
            "stdOutSeparatorPrefix": "{{prefix}}",
        }
    }
    params = {"pattern": ["a;b"], "prefix": ["OUT:"]}
    out = interpolate_properties("NonInteractiveCommands", props, params)
    assert out["linux"]["commands"] == "grep 'a;b' /var/log/syslog"
    assert out["linux"]["stdOutSeparatorPrefix"] == "OUT:"
    port = interpolate_properties("Port", {"portNumber": "{{p}}", "host": "h{{p}}"}, {"p": ["80"]})
    assert port == {"portNumber": "80", "host": "h80"}


def test_inputs_quote_the_shell_profile_only() -> None:
    inputs = {
        "runAsDefaultUser": "{{user}}",
        "idleSessionTimeout": "{{idle}}",
        "shellProfile": {"linux": "cd {{dir}}", "windows": "cd {{dir}}"},
    }
    params = {"user": ["alice"], "idle": ["5"], "dir": ["/srv/my app"]}
    out = interpolate_inputs(inputs, params)
    assert out["runAsDefaultUser"] == "alice"
    assert out["idleSessionTimeout"] == "5"
    assert out["shellProfile"] == {"linux": "cd '/srv/my app'", "windows": "cd /srv/my app"}


def test_is_true() -> None:
    for yes in (True, "true", "TRUE", " True "):
        assert is_true(yes)
    for no in (False, "false", "", None, 1, "yes", "1"):
        assert not is_true(no)
