"""``hatchway agent``: register the node once, then hold the control channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import aiohttp
import click

from hatchway.agent.kms import CREDENTIAL_SOURCES, KmsSettings
from hatchway.agent.registration import RegistrationError, load, register
from hatchway.agent.session import SessionSettings, run_node


@click.command("agent")
@click.option(
    "--endpoint", required=True, help="The broker's URL, e.g. https://broker.example:8080"
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle (PEM) to check the broker's certificate against (default: the system "
    "trust store, or SSL_CERT_FILE).",
)
@click.option("--activation-id", help="Needed for the first registration only.")
@click.option("--activation-code", help="Needed for the first registration only.")
@click.option("--instance-id", help="Register as this EC2-style id (i-…) instead of mi-….")
@click.option("--region", help="Region (default: the broker's).")
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option(
    "--session-user",
    default="ssm-user",
    show_default=True,
    help="OS user sessions run as (created on first use when the agent is root).",
)
@click.option(
    "--allow-root-sessions", is_flag=True, help="Allow sessions to run as root (never the default)."
)
@click.option(
    "--kms-endpoint-url",
    help="Where kms:Decrypt of session data keys goes (default: the broker, --endpoint).",
)
@click.option(
    "--kms-credentials",
    type=click.Choice(CREDENTIAL_SOURCES),
    default="node",
    show_default=True,
    help="Sign KMS calls with the node's credentials, or botocore's default chain (for AWS KMS).",
)
@click.option("--kms-region", help="Region of the KMS calls (default: the node's).")
@click.option("--log-level", default="INFO", show_default=True)
def agent_cmd(
    endpoint: str,
    ca_file: str | None,
    activation_id: str | None,
    activation_code: str | None,
    instance_id: str | None,
    region: str | None,
    state_dir: Path,
    session_user: str,
    allow_root_sessions: bool,
    kms_endpoint_url: str | None,
    kms_credentials: str,
    kms_region: str | None,
    log_level: str,
) -> None:
    """Run the node agent."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        reg = load(state_dir)
        if reg is None:
            if not activation_id or not activation_code:
                raise click.UsageError(
                    "not registered yet: --activation-id and --activation-code are required"
                )
            try:
                reg = await register(
                    endpoint, activation_id, activation_code, instance_id, state_dir, ca_file
                )
            except RegistrationError as exc:
                click.echo(f"registration failed: {exc.code}: {exc.message}", err=True)
                sys.exit(1)
            except (aiohttp.ClientError, OSError) as exc:  # unreachable, or its TLS certificate
                click.echo(f"registration failed: cannot reach {endpoint}: {exc}", err=True)
                sys.exit(1)
            click.echo(f"registered as {reg.instance_id}", err=True)
        if region:
            reg.region = region
        reg.endpoint = endpoint
        reg.ca_file = ca_file
        kms = KmsSettings(kms_endpoint_url or None, kms_credentials, kms_region or None)
        await run_node(reg, SessionSettings(session_user, allow_root_sessions, kms=kms))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
