"""``hatchway agent``: register the node once, then hold the control channel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
from pathlib import Path

import aiohttp
import click

from hatchway.agent.control import backoff_delays
from hatchway.agent.datakey import CREDENTIAL_SOURCES, KmsSettings
from hatchway.agent.registration import Registration, RegistrationError, load, register
from hatchway.agent.session import SessionSettings, run_node
from hatchway.cli.notify import notify
from hatchway.cli.options import log_format_option, log_level_option
from hatchway.server.base import logs

CODE_ENV = "HATCHWAY_ACTIVATION_CODE"
_CODE_FLAG = "--activation-code"


def _without_code(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--activation-code X`` / ``--activation-code=X``, and X."""
    out: list[str] = []
    code: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == _CODE_FLAG:
            code = next(it, None)
        elif arg.startswith(_CODE_FLAG + "="):
            code = arg[len(_CODE_FLAG) + 1 :]
        else:
            out.append(arg)
    return out, code


def scrub_argv() -> None:
    """Re-execute this process without the activation code on its command line.

    ``/proc/PID/cmdline`` (``ps``) is readable by every local user, a session's user
    included: a code left there registers a node of the reader's own. The code moves to the
    environment of the new image (``/proc/PID/environ`` is readable by the same user and root
    only), which the agent then takes out of ``os.environ`` so that sessions never inherit it.
    """
    argv = list(sys.orig_argv)
    if not any(a == _CODE_FLAG or a.startswith(_CODE_FLAG + "=") for a in argv[1:]):
        return
    cleaned, code = _without_code(argv)
    if code is None:
        return  # click reports the missing value
    os.environ[CODE_ENV] = code
    os.execv(sys.executable, [sys.executable, *cleaned[1:]])


def read_code_file(path: Path) -> str:
    """The activation code from a file, or standard input for ``-`` (first line, stripped)."""
    try:
        text = sys.stdin.readline() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise click.UsageError(f"cannot read the activation code: {exc}") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise click.UsageError(f"no activation code in {path}")
    return lines[0].strip()


async def register_retrying(
    endpoint: str,
    activation_id: str,
    code: str,
    instance_id: str | None,
    state_dir: Path,
    ca_file: str | None,
) -> Registration:
    """Register; a broker that cannot be reached (or answers a server error) is tried again
    with the control channel's capped back-off. A refusal (the activation) or a certificate
    that does not verify ends the agent with status 1: trying again would not help."""
    delays = backoff_delays()
    while True:
        try:
            return await register(endpoint, activation_id, code, instance_id, state_dir, ca_file)
        except RegistrationError as exc:
            if not exc.retryable:
                click.echo(f"registration failed: {exc.code}: {exc.message}", err=True)
                sys.exit(1)
            problem = f"{exc.code}: {exc.message}"
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:  # its TLS certificate
            click.echo(f"registration failed: cannot reach {endpoint}: {exc}", err=True)
            sys.exit(1)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # unreachable
            problem = f"cannot reach {endpoint}: {exc}"
        delay = next(delays)
        click.echo(f"registration failed: {problem}; retrying in {delay:.1f}s", err=True)
        await asyncio.sleep(delay)


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
@click.option(
    "--activation-code-file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="File holding the activation code ('-': standard input). First registration only.",
)
@click.option(
    "--activation-code",
    envvar=CODE_ENV,
    show_envvar=True,
    help=f"The activation code. Prefer ${CODE_ENV} or --activation-code-file: a command "
    "line is visible to every local user (the agent re-executes itself without it).",
)
@click.option(
    "--instance-id",
    help="Register as this EC2-style id (i-…) instead of the mi-… id the broker chooses; "
    "the broker's operator must allow it for the activation "
    "(hatchway activation allow-instance-id).",
)
@click.option("--region", help="Region (default: the broker's).")
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Where the node keeps its registration and credentials (mode 0700).",
)
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
    "--run-command-user",
    default="",
    help="OS user Run Command (aws ssm send-command) runs commands as (default: the agent's "
    "own user, root for an agent run as root, as AWS's agent does).",
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
@log_level_option
@log_format_option
def agent_cmd(
    endpoint: str,
    ca_file: str | None,
    activation_id: str | None,
    activation_code_file: Path | None,
    activation_code: str | None,
    instance_id: str | None,
    region: str | None,
    state_dir: Path,
    session_user: str,
    allow_root_sessions: bool,
    run_command_user: str,
    kms_endpoint_url: str | None,
    kms_credentials: str,
    kms_region: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the node agent."""
    scrub_argv()
    os.environ.pop(CODE_ENV, None)  # never inherited by anything the agent starts
    logs.configure(log_level, log_format)

    async def main() -> None:
        reg = load(state_dir)
        if reg is None:
            code = activation_code
            if activation_code_file is not None:
                code = read_code_file(activation_code_file)
            if not activation_id or not code:
                raise click.UsageError(
                    "not registered yet: --activation-id and an activation code "
                    f"(${CODE_ENV}, --activation-code-file or --activation-code) are required"
                )
            reg = await register_retrying(
                endpoint, activation_id, code, instance_id, state_dir, ca_file
            )
            click.echo(f"registered as {reg.instance_id}", err=True)
        if region:
            reg.region = region
        reg.endpoint = endpoint
        reg.ca_file = ca_file
        kms = KmsSettings(kms_endpoint_url or None, kms_credentials, kms_region or None)
        # systemd (Type=notify): started once the node has its identity; from here it
        # (re)connects to the broker by itself, with back-off.
        notify(f"READY=1\nSTATUS=node {reg.instance_id}, broker {endpoint}")
        settings = SessionSettings(session_user, allow_root_sessions, kms=kms)
        await run_node(reg, settings, command_user=run_command_user or None)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
