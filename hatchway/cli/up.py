"""``hatchway up``: a broker on the embedded store plus a local agent, for trying Hatchway."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from aiohttp import web

from hatchway.agent.registration import load, register
from hatchway.agent.session import SessionSettings, run_node
from hatchway.cli.options import log_format_option
from hatchway.cli.server import OperatorError
from hatchway.server.app import create_app
from hatchway.server.base import crypto, logs
from hatchway.server.base.tls import LocalCA, local_ca
from hatchway.server.control.nodes import allow_instance_ids
from hatchway.server.process.main import (
    StartError,
    build_state,
    check_tls,
    reload_on_sighup,
    url_host,
    wait_for_stop,
)
from hatchway.server.runtime.state import ServerConfig, ServerState
from hatchway.server.store import schema as t

LOCAL_NODE = "i-02573cafcfEXAMPLE"


@click.command("up")
@click.option(
    "--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT the broker listens on."
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".hatchway"),
    show_default=True,
    help="Where the broker (DATA_DIR/broker) and the local agent keep their state.",
)
@click.option(
    "--region", default="us-east-1", show_default=True, help="The region the broker serves."
)
@click.option(
    "--account-id",
    default="123456789012",
    show_default=True,
    help="The AWS account id of every ARN the broker makes.",
)
@click.option(
    "--instance-id",
    default=LOCAL_NODE,
    show_default=True,
    help="Id the local agent registers as (an i-… id is allowed for its activation; "
    "'' lets the broker choose an mi-… id).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve HTTPS/wss:// with a certificate from a local CA made in DATA_DIR/tls.",
)
@log_format_option
def up_cmd(
    listen: str,
    data_dir: Path,
    region: str,
    account_id: str,
    instance_id: str,
    tls: bool,
    log_format: str,
) -> None:
    """Start the broker (SQLite in DATA_DIR) and a local agent registered as a node."""
    logs.configure("WARNING", log_format, "%(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        listen=listen,
        data_dir=data_dir / "broker",
        region=region,
        account_id=account_id,
        log_format=log_format,
    )
    ca: LocalCA | None = None
    if tls:
        host = listen.rpartition(":")[0].strip("[]")
        extra = (host,) if host and host not in ("0.0.0.0", "::") else ()
        ca = local_ca(data_dir / "tls", extra)
        config.tls_cert, config.tls_key = ca.cert, ca.key
    try:
        asyncio.run(_up(config, data_dir / "node", instance_id, ca))
    except StartError as exc:  # one line, exit status 2 (as hatchway server)
        raise OperatorError(str(exc)) from None


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


def _trust_lines(ca: LocalCA | None) -> str:
    if ca is None:
        return ""
    path = ca.ca_cert.resolve()
    return f"""
  TLS     certificate from the local CA {path}
          (the AWS CLI and boto3: AWS_CA_BUNDLE or aws --ca-bundle {path};
           AWS's session-manager-plugin (Go), whose websocket ignores the CLI's bundle:
           SSL_CERT_FILE={path}, or add the CA to the system trust store)
"""


async def _up(
    config: ServerConfig, node_dir: Path, instance_id: str, ca: LocalCA | None = None
) -> None:
    certs = check_tls(config)
    state, generated = build_state(config)
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    host, _, port = config.listen.rpartition(":")
    await web.TCPSite(
        runner, host, int(port), ssl_context=certs.context if certs is not None else None
    ).start()
    bound = runner.addresses[0] if runner.addresses else (host, port)
    url = f"{'https' if certs is not None else 'http'}://{url_host(bound[0])}:{bound[1]}"
    config.public_url = url  # StreamUrls name the port actually bound
    reload_on_sighup(certs)
    ca_file = str(ca.ca_cert) if ca is not None else None
    reg = load(node_dir)
    if reg is None:
        reg = await register(
            url, *_local_activation(state, instance_id), instance_id, node_dir, ca_file
        )
    reg.endpoint = url
    reg.ca_file = ca_file
    connected = asyncio.Event()
    agent = asyncio.create_task(run_node(reg, SessionSettings(), connected))
    await asyncio.wait_for(connected.wait(), 10)
    creds = (config.data_dir / "admin-credentials").resolve()
    env = f"AWS_SHARED_CREDENTIALS_FILE={creds} AWS_DEFAULT_REGION={config.region}"
    if ca is not None:
        trust = ca.ca_cert.resolve()
        env += f" AWS_CA_BUNDLE={trust} SSL_CERT_FILE={trust}"
    print(
        f"""
Hatchway is up.
  broker  {url}  (store: {state.store.dialect}, data in {config.data_dir})
  node    {reg.instance_id}  (local agent, online)
  admin   credentials in {creds}{" (new)" if generated else ""}{_trust_lines(ca)}

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
