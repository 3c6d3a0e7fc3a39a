"""``hatchway`` settings from a TOML file and the environment (issue 14, item 3), through the
real command: bad values, unknown keys, ``config show`` with sources and masked secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from hatchway.cli import config
from hatchway.cli.main import cli

HATCHWAY = Path(sys.executable).parent / "hatchway"


def run(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HATCHWAY_")}
    environ.update(env or {})
    return subprocess.run(
        [str(HATCHWAY), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refused configuration (exit status 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_value_names_file_key_and_type(tmp_path: Path) -> None:
    (tmp_path / "hatchway.toml").write_text('[server]\nworkers = "two"\n')
    # found on the search path (the working directory), the broker never starts
    line = refused(run("server", "--listen", "127.0.0.1:0", cwd=tmp_path))
    assert line == (
        'Error: hatchway.toml: [server] workers: expected an integer in 0<=x<=64, got "two"'
    )
    assert not (tmp_path / "hatchway-data").exists()  # nothing done


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nwrokers = 2\n", "[server] unknown key 'wrokers' (did you mean 'workers'?)"),
        (
            "[server]\ndata_dir = 'x'\n",
            "[server] unknown key 'data_dir' (did you mean 'data-dir'?)",
        ),
        ("[servre]\nlisten = '1'\n", "unknown table [servre]: no such command"),
        ("listen = '127.0.0.1:1'\n", "unknown key 'listen' (settings go in a command's table"),
        ("[agent]\nallow-root-sessions = 'yes'\n", "expected a boolean (true or false), got"),
        ("[server]\nregion = 1\n", "[server] region: expected a string, got 1"),
        ("[server]\nscp-file = 'a.json'\n", "expected an array of a path (a string)"),
        ("[agent]\nkms-credentials = 'ec2'\n", 'expected one of "node", "default", got "ec2"'),
        ("[server]\nrecording-session-limit = 'lots'\n", "'lots' is not a size"),
        ("[server\n", "not valid TOML: Expected ']'"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    """In-process (the same ``hatchway`` command object, click's runner): the table of cases
    would take a process start each. ``test_bad_value_names_file_key_and_type`` is the same
    through the real executable."""
    cfg = tmp_path / "conf.toml"
    cfg.write_text(text)
    # a mistake anywhere in the file stops every command, from --config
    result = CliRunner().invoke(
        cli, ["up", "--config", str(cfg), "--data-dir", str(tmp_path / "d")]
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"Error: {cfg}: ") and message in line, line
    assert "\n" not in line
    assert not (tmp_path / "d").exists()


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    line = refused(
        run(
            "server",
            "--listen",
            "127.0.0.1:0",
            env={"HATCHWAY_SERVER_WORKERS": "two"},
            cwd=tmp_path,
        )
    )
    assert line == (
        "Error: environment variable HATCHWAY_SERVER_WORKERS: "
        'expected an integer in 0<=x<=64, got "two"'
    )
    result = CliRunner(env={"HATCHWAY_SERVER_RECORD_INPUT": "maybe"}).invoke(
        cli, ["server", "--listen", "nowhere", "--data-dir", str(tmp_path / "d")]
    )
    assert result.exit_code == 2
    assert "HATCHWAY_SERVER_RECORD_INPUT: expected a boolean" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner(env={"HATCHWAY_CONFIG": str(tmp_path / "nope.toml")}).invoke(
        cli, ["server", "--listen", "nowhere", "--data-dir", str(tmp_path / "d")]
    )
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"Error: {tmp_path / 'nope.toml'}: no such config file (from $HATCHWAY_CONFIG)"
    )


def test_config_show_sources_precedence_and_masking(tmp_path: Path) -> None:
    cfg = tmp_path / "hatchway.toml"
    cfg.write_text(
        """
[server]
database-url = "postgresql://hatchway:s3cret-pw@db.internal/hatchway"
region = "eu-west-1"
account-id = "111111111111"
workers = 2
scp-file = ["/etc/hatchway/scp1.json", "/etc/hatchway/scp2.json"]

[agent]
endpoint = "https://broker.internal:8443"
activation-code = "file-code-1234"
"""
    )
    cfg.chmod(0o600)
    env = {
        "HATCHWAY_CONFIG": str(cfg),
        "HATCHWAY_SERVER_REGION": "eu-central-1",
        "HATCHWAY_SERVER_RECORD_INPUT": "yes",
        "HATCHWAY_ADMIN_SECRET_ACCESS_KEY": "admin-secret-value",
    }
    proc = run("config", "show", "--output", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["config_file"] == {"path": str(cfg), "origin": "$HATCHWAY_CONFIG"}
    server = shown["commands"]["server"]
    agent = shown["commands"]["agent"]

    def at(table: dict[str, Any], key: str) -> tuple[Any, str]:
        return table[key]["value"], table[key]["source"]

    assert at(server, "region") == ("eu-central-1", "environment HATCHWAY_SERVER_REGION")
    assert at(server, "account-id") == ("111111111111", f"file {cfg}")
    assert at(server, "workers") == (2, f"file {cfg}")
    assert at(server, "record-input") == (True, "environment HATCHWAY_SERVER_RECORD_INPUT")
    assert at(server, "listen") == ("127.0.0.1:8080", "default")
    assert at(server, "scp-file")[0] == ["/etc/hatchway/scp1.json", "/etc/hatchway/scp2.json"]
    assert at(server, "database-url")[0] == "postgresql://hatchway:********@db.internal/hatchway"
    assert at(server, "admin-secret-access-key")[0] == "********"
    assert at(agent, "activation-code") == ("********", f"file {cfg}")
    assert at(agent, "state-dir") == (None, "unset (required)")
    assert server["tls-key"]["env"] == ["HATCHWAY_SERVER_TLS_KEY"]
    assert agent["activation-code"]["env"] == ["HATCHWAY_ACTIVATION_CODE"]  # kept
    for secret in ("s3cret-pw", "file-code-1234", "admin-secret-value"):
        assert secret not in proc.stdout

    text = run("config", "show", "--command", "server", env=env)
    assert text.returncode == 0, text.stderr
    assert f"# config file: {cfg} (from $HATCHWAY_CONFIG)" in text.stdout
    assert 'region = "eu-central-1"' in text.stdout and "[agent]" not in text.stdout
    assert "s3cret-pw" not in text.stdout


def test_secrets_in_a_readable_file_are_warned_about(tmp_path: Path) -> None:
    cfg = tmp_path / "hatchway.toml"
    cfg.write_text('[agent]\nactivation-code = "code-1234"\n')
    cfg.chmod(0o644)
    proc = run("agent", "--config", cfg)  # then refused: --endpoint and --state-dir missing
    assert proc.returncode == 2
    assert f"warning: {cfg} holds activation-code but is readable by others" in proc.stderr
    assert "code-1234" not in proc.stderr
    cfg.chmod(0o600)
    proc = run("agent", "--config", cfg, "--help")
    assert proc.returncode == 0 and "warning" not in proc.stderr
    assert "HATCHWAY_AGENT_STATE_DIR" in proc.stdout  # --help shows each option's variable


def _leaves(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(cmd, click.Group):
        return [leaf for n, c in cmd.commands.items() for leaf in _leaves(c, (*path, n))]
    return [path]


def test_every_option_of_every_command_has_a_file_key_and_a_variable() -> None:
    """Generic: a flag added tomorrow to any command gets both with no code of its own."""
    for path in _leaves(cli):
        if path[0] == "config":
            continue
        cmd, _ = config.find_command(cli, " ".join(path))
        opts = config.options(cmd)
        if not opts:
            continue
        assert any("--config" in p.opts for p in cmd.params), path
        for key, opt in opts.items():
            assert opt.envvar, (path, key)
            if opt.envvar != "HATCHWAY_ACTIVATION_CODE" and not str(opt.envvar).startswith("AWS_"):
                assert opt.envvar == config.env_name(path, key), (path, key, opt.envvar)
