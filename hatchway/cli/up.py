"""``hatchway up``: a broker on the embedded store plus a local agent, for trying Hatchway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from aiohttp import web

from hatchway.agent.registration import load, register
from hatchway.agent.session import SessionSettings, run_node
from hatchway.server import crypto
from hatchway.server.app import create_app
from hatchway.server.main import build_state, wait_for_stop
from hatchway.server.nodes import allow_instance_ids
from hatchway.server.state import ServerConfig, ServerState
from hatchway.server.store import schema as t

LOCAL_NODE = "i-02573cafcfEXAMPLE"


@click.command("up")
@click.option("--listen", default="127.0.0.1:8080", show_default=True)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=Path(".hatchway"), show_default=True
)
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--account-id", default="123456789012", show_default=True)
@click.option(
    "--instance-id",
    default=LOCAL_NODE,
    show_default=True,
    help="Id the local agent registers as (an i-… id is allowed for its activation; "
    "'' lets the broker choose an mi-… id).",
)
def up_cmd(listen: str, data_dir: Path, region: str, account_id: str, instance_id: str) -> None:
    """Start the broker (SQLite in DATA_DIR) and a local agent registered as a node."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        listen=listen, data_dir=data_dir / "broker", region=region, account_id=account_id
    )
    asyncio.run(_up(config, data_dir / "node", instance_id))


def _local_activation(state: ServerState, instance_id: str) -> tuple[str, str]:
    """A one-use activation for the local node (same registration flow as remote nodes)."""
    code = crypto.token(15)
    act_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    state.store.insert(
        t.activations,
        {
            "activation_id": act_id,
            "code_hash": crypto.digest(code),
            "created": now,
            "expires": now + timedelta(hours=1),
            "registrations": 0,
            "data": {
                "iam_role": "SSMServiceRole",
                "registration_limit": 1,
                "default_instance_name": "local",
                "tags": [],
            },
        },
    )
    if instance_id.startswith("i-"):  # an EC2-style id: allowed the operator's way
        allow_instance_ids(state.store, act_id, [instance_id])
    return act_id, code


async def _up(config: ServerConfig, node_dir: Path, instance_id: str) -> None:
    state, generated = build_state(config)
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    host, _, port = config.listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    url = f"http://{host}:{port}"
    reg = load(node_dir)
    if reg is None:
        reg = await register(url, *_local_activation(state, instance_id), instance_id, node_dir)
    reg.endpoint = url
    connected = asyncio.Event()
    agent = asyncio.create_task(run_node(reg, SessionSettings(), connected))
    await asyncio.wait_for(connected.wait(), 10)
    creds = (config.data_dir / "admin-credentials").resolve()
    env = f"AWS_SHARED_CREDENTIALS_FILE={creds} AWS_DEFAULT_REGION={config.region}"
    print(
        f"""
Hatchway is up.
  broker  {url}  (store: {state.store.dialect}, data in {config.data_dir})
  node    {reg.instance_id}  (local agent, online)
  admin   credentials in {creds}{" (new)" if generated else ""}

Try, in another terminal:
  export {env} PATH={Path(sys.executable).parent}:$PATH
  aws --endpoint-url {url} ssm start-session --target {reg.instance_id}
  hatchway start-session --endpoint-url {url} --target {reg.instance_id}
  aws --endpoint-url {url} ssm start-session --target {reg.instance_id} \\
      --document-name AWS-StartNonInteractiveCommand --parameters command="uname -a"
  aws --endpoint-url {url} ssm start-session --target {reg.instance_id} \\
      --document-name AWS-StartPortForwardingSession \\
      --parameters portNumber=22,localPortNumber=0
  hatchway sessions list --data-dir {config.data_dir}
  hatchway sessions replay --data-dir {config.data_dir} SESSION_ID
  aws --endpoint-url {url} ssm describe-instance-information
  aws --endpoint-url {url} iam create-user --user-name alice
  hatchway policy demo

Ctrl-C stops both.""",
        flush=True,
    )
    await wait_for_stop()
    agent.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await agent
    await runner.cleanup()
    state.store.close()
