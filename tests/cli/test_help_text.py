"""Every option of every ``hatchway`` command says what it is for (``--help``)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from hatchway.cli.main import cli


def _commands(group: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    out = [(" ".join(("hatchway", *path)), group)]
    if isinstance(group, click.Group):
        for name, sub in sorted(group.commands.items()):
            out.extend(_commands(sub, (*path, name)))
    return out


def test_every_option_has_help_text() -> None:
    missing = [
        f"{where} {'/'.join(p.opts)}"
        for where, cmd in _commands(cli)
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
    ]
    assert missing == []


def test_help_of_every_command_renders() -> None:
    runner = CliRunner()
    for where, _ in _commands(cli):
        result = runner.invoke(cli, [*where.split()[1:], "--help"])
        assert result.exit_code == 0, (where, result.output)
        assert "Usage:" in result.output


def test_shell_completion_script() -> None:
    """``_HATCHWAY_COMPLETE=bash_source hatchway`` prints click's bash completion script."""
    runner = CliRunner()
    result = runner.invoke(cli, [], prog_name="hatchway", env={"_HATCHWAY_COMPLETE": "bash_source"})
    assert "_HATCHWAY_COMPLETE=bash_complete" in result.output
