"""Parameters in shell text (``commands``, ``shellProfile.linux``) reach the shell as data (an
expansion of an environment variable the node sets) unless they are the whole command;
``is_true`` reads document booleans as the agent does."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hatchway.ssm.documents import (
    interpolate_inputs,
    interpolate_properties,
    interpolate_shell,
    is_true,
    parameter_environment,
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


def run(text: str, params: dict[str, list[str]]) -> str:
    """``text`` with ``params`` interpolated, run by ``sh -c`` with the node's environment."""
    cmd = interpolate_shell(text, params)
    env = {"PATH": "/usr/bin:/bin", **parameter_environment(params)}
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, env=env, check=True)
    return out.stdout.decode()  # bytes: no newline translation


# However the document quotes the reference, the value arrives as one piece of data.
TEMPLATES = [
    ("printf '[%s]' {{ v }}", "[{}]"),
    ("printf '[%s]' '{{ v }}'", "[{}]"),
    ("printf '[%s]' \"{{ v }}\"", "[{}]"),
    ("printf '[%s]' x'{{v}}'y", "[x{}y]"),
    ("printf '[%s]' \"it's {{v}}\"", "[it's {}]"),
    ("printf '[%s]' \\'{{v}}", "['{}]"),
]


def test_embedded_reference_is_data_in_every_quoting() -> None:
    for template, expected in TEMPLATES:
        for value in NASTY:
            assert run(template, {"v": [value]}) == expected.format(value), (template, value)


def test_injection_attempts_do_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for template in ("echo {{v}}", "echo '{{v}}'", 'echo "{{v}}"', "echo x{{v}}y"):
        for value in (
            f"x; touch {marker}",
            f"$(touch {marker})",
            f"`touch {marker}`",
            f"'; touch {marker}; '",
            f'"; touch {marker}; "',
        ):
            run(template, {"v": [value]})
    assert not marker.exists()


def test_the_value_never_enters_the_script() -> None:
    cmd = interpolate_shell("echo {{name}}", {"name": ["x; echo INJECTED"]})
    assert "INJECTED" not in cmd
    assert cmd == 'echo "${HATCHWAY_PARAM_name}"'


@given(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")),
    st.sampled_from(TEMPLATES),
)
def test_any_value_comes_back_unchanged(value: str, template: tuple[str, str]) -> None:
    assert run(template[0], {"v": [value]}) == template[1].format(value)


def test_whole_reference_is_the_command_itself() -> None:
    assert interpolate_shell("{{command}}", {"command": ["ls -l; id"]}) == "ls -l; id"
    assert interpolate_shell("  {{ command }} ", {"command": ["top"]}) == "top"
    # A list: each element is a command line; a whole reference there is a command too.
    assert interpolate_shell(
        ["cd /tmp", "{{cmd}}", "tail {{f}}"], {"cmd": ["ls"], "f": ["a b"]}
    ) == [
        "cd /tmp",
        "ls",
        'tail "${HATCHWAY_PARAM_f}"',
    ]


def test_string_lists_become_several_words_or_lines() -> None:
    # Inside a longer line, a StringList is one word: its values joined with spaces.
    assert run("printf '[%s]' {{files}}", {"files": ["a b", "c"]}) == "[a b c]"
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
    assert out["linux"]["commands"] == 'grep "${HATCHWAY_PARAM_pattern}" /var/log/syslog'
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
    assert out["shellProfile"] == {
        "linux": 'cd "${HATCHWAY_PARAM_dir}"',
        "windows": "cd /srv/my app",
    }


def test_is_true() -> None:
    for yes in (True, "true", "TRUE", " True "):
        assert is_true(yes)
    for no in (False, "false", "", None, 1, "yes", "1"):
        assert not is_true(no)
