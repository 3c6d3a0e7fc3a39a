"""Shell completion (docs/cli.md): the installed ``hatchway`` prints click's scripts, and
bash, with the script sourced as docs/cli.md says, completes commands, sub-commands, options
and choices (each completion runs ``hatchway``: a handful only, it starts in ~1 s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hatchway.cli.main import cli

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("zsh", "compdef _hatchway_completion hatchway"),
        ("fish", "complete --no-files --command hatchway"),
    ],
)
def test_the_zsh_and_fish_scripts_are_produced(shell: str, marker: str) -> None:
    env = {"_HATCHWAY_COMPLETE": f"{shell}_source"}
    result = CliRunner().invoke(cli, [], prog_name="hatchway", env=env)
    assert marker in result.output


def test_bash_sources_the_script_and_completes(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash
    cases = {
        "se": ["hatchway", "se"],
        "replay": ["hatchway", "sessions", "re"],
        "facility": ["hatchway", "server", "--audit-syslog-facility", "local"],
        "key": ["hatchway", "key", "''"],
    }
    program = ['eval "$(_HATCHWAY_COMPLETE=bash_source hatchway)"']
    for name, words in cases.items():
        program += [
            f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; COMPREPLY=()",
            "_hatchway_completion hatchway",
            f'echo "{name}: ${{COMPREPLY[*]}}"',
        ]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HATCHWAY_CONFIG": os.devnull}
    out = subprocess.run(
        [bash, "--norc", "-c", "\n".join(program)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    got = {
        name: set(rest.split())
        for name, _, rest in (x.partition(": ") for x in out.stdout.splitlines())
    }
    assert {"server", "sessions"} <= got["se"]
    assert got["replay"] == {"replay"}
    assert got["facility"] == {f"local{i}" for i in range(8)}
    assert got["key"] == {"new", "reseal", "rotate"}
