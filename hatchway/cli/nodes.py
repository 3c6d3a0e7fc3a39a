"""``hatchway activation`` and ``hatchway nodes``: what only the broker's operator may do to
node identities, and revoking a node whatever its id.

* ``hatchway activation allow-instance-id ACTIVATION_ID i-… [i-…]`` lets nodes registering
  with that activation take EC2-style ids. Without it the broker chooses every node's id
  (``mi-`` and 17 hex digits, as AWS does), so that whoever holds an activation code cannot
  take an ``i-`` id that policies already name. It writes the store directly (``--data-dir``
  / ``--database-url``, like ``hatchway audit``): no API and no IAM policy grants it.
* ``hatchway nodes deregister INSTANCE_ID`` revokes a node through the API
  (``ssm:DeregisterManagedInstance`` on the node's ARN, signed with the usual AWS credential
  chain): ``aws ssm deregister-managed-instance`` does the same for ``mi-`` ids, but botocore
  refuses ``i-`` ids before sending them.
"""

from __future__ import annotations

from pathlib import Path

import click

from hatchway.server.control.nodes import allow_instance_ids
from hatchway.server.runtime.state import ServerConfig
from hatchway.server.store import Store


@click.group("activation")
def activation() -> None:
    """Activations, as the broker's operator (the store itself, not the API)."""


@activation.command("allow-instance-id")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("hatchway-data"),
    show_default=True,
    help="The broker's data directory (its store, master.key, audit.jsonl).",
)
@click.option("--database-url", help="postgresql://… (default: SQLite in the data dir)")
@click.argument("activation_id")
@click.argument("instance_ids", nargs=-1, required=True)
def allow_instance_id_cmd(
    data_dir: Path, database_url: str | None, activation_id: str, instance_ids: tuple[str, ...]
) -> None:
    """Let nodes registering with ACTIVATION_ID take these EC2-style ids (i-…)."""
    if database_url is None and not (data_dir / "hatchway.db").exists():
        raise click.ClickException(f"no broker store in {data_dir} (see --data-dir)")
    store = Store(ServerConfig(data_dir=data_dir, database_url=database_url).store_url)
    try:
        allowed = allow_instance_ids(store, activation_id, list(instance_ids))
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"activation {activation_id} allows: {' '.join(allowed)}")


@click.group("nodes")
def nodes() -> None:
    """Managed nodes, through the broker's API."""


@nodes.command("deregister")
@click.argument("instance_id")
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", required=True, help="The broker.")
@click.option("--region", help="Region (default: the AWS configuration's).")
@click.option("--profile", help="AWS profile whose credentials sign the call.")
def deregister_cmd(
    instance_id: str, endpoint_url: str, region: str | None, profile: str | None
) -> None:
    """Revoke a node (mi-… or i-…): credentials, sessions and control channel end at once."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.Session(profile_name=profile or None, region_name=region or None)
    ssm = session.client(
        "ssm",
        endpoint_url=endpoint_url,
        # botocore's model takes mi- ids only; the broker checks the id itself.
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    try:
        ssm.deregister_managed_instance(InstanceId=instance_id)
    except (BotoCoreError, ClientError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"deregistered {instance_id}")
