"""``hatchway``: the command line face of Hatchway."""

from __future__ import annotations

import click

from hatchway import __version__
from hatchway.cli import config
from hatchway.cli.agent import agent_cmd
from hatchway.cli.audit import audit_cmd
from hatchway.cli.backup import backup_cmd, key_group, restore_cmd
from hatchway.cli.nodes import activation, nodes
from hatchway.cli.policy import policy
from hatchway.cli.server import server_cmd
from hatchway.cli.sessions import sessions
from hatchway.cli.up import up_cmd
from hatchway.client.start import start_session_cmd
from hatchway.server.store import DriverMissing


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hatchway")
def cli() -> None:
    """Hatchway: a self-hosted, AWS-compatible Session Manager."""


cli.add_command(policy)
cli.add_command(server_cmd)
cli.add_command(agent_cmd)
cli.add_command(audit_cmd)
cli.add_command(up_cmd)
cli.add_command(sessions)
cli.add_command(start_session_cmd)
cli.add_command(activation)
cli.add_command(nodes)
cli.add_command(config.config_group)
cli.add_command(backup_cmd)
cli.add_command(restore_cmd)
cli.add_command(key_group)
config.install(cli)  # --config and HATCHWAY_<COMMAND>_<FLAG> for every command's options


def main() -> None:
    try:
        cli()
    except DriverMissing as exc:  # e.g. postgresql:// without hatchway[postgresql]
        config.main_error(exc)
