"""``hatchway agent``: register the node once, then hold the control channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import click

from hatchway.agent.control import ControlChannel
from hatchway.agent.registration import RegistrationError, register


@click.command("agent")
@click.option("--endpoint", required=True, help="The broker's URL, e.g. http://127.0.0.1:8080")
@click.option("--activation-id", help="Needed for the first registration only.")
@click.option("--activation-code", help="Needed for the first registration only.")
@click.option("--instance-id", help="Register as this EC2-style id (i-…) instead of mi-….")
@click.option("--region", help="Region (default: the broker's).")
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option("--log-level", default="INFO", show_default=True)
def agent_cmd(
    endpoint: str,
    activation_id: str | None,
    activation_code: str | None,
    instance_id: str | None,
    region: str | None,
    state_dir: Path,
    log_level: str,
) -> None:
    """Run the node agent."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        from hatchway.agent.registration import load

        reg = load(state_dir)
        if reg is None:
            if not activation_id or not activation_code:
                raise click.UsageError(
                    "not registered yet: --activation-id and --activation-code are required"
                )
            try:
                reg = await register(
                    endpoint, activation_id, activation_code, instance_id, state_dir
                )
            except RegistrationError as exc:
                click.echo(f"registration failed: {exc.code}: {exc.message}", err=True)
                sys.exit(1)
            click.echo(f"registered as {reg.instance_id}", err=True)
        if region:
            reg.region = region
        reg.endpoint = endpoint
        await ControlChannel(reg).run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
