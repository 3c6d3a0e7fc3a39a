"""Clients of a broker's API for the operator commands (``hatchway audit``, ``hatchway
sessions``) when they are given ``--endpoint-url``: botocore clients with the usual AWS
credential chain (environment, ``--profile``/``AWS_PROFILE``, shared files, …), so that what
they may read is what IAM allows the caller (docs/audit.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--endpoint-url``, ``--region``, ``--profile`` and ``--ca-bundle``."""
    fn = click.option(
        "--ca-bundle",
        type=click.Path(dir_okay=False),
        help="CA bundle that verifies a broker on HTTPS (default: AWS_CA_BUNDLE or the system's).",
    )(fn)
    fn = click.option(
        "--profile", help="AWS profile whose credentials sign the calls (with --endpoint-url)."
    )(fn)
    fn = click.option(
        "--region",
        help="Region to sign for (with --endpoint-url; default: the profile's or us-east-1).",
    )(fn)
    return click.option(
        "--endpoint-url",
        help="Read through this broker's API with your AWS credentials instead of the data "
        "directory (IAM decides what you may read).",
    )(fn)


def client(
    service: str,
    endpoint_url: str,
    region: str | None = None,
    profile: str | None = None,
    ca_bundle: str | None = None,
) -> Any:
    """A botocore client of ``service`` (``cloudtrail``, ``hatchway``, ``ssm`` …)."""
    import botocore.session
    from botocore.config import Config

    from hatchway.server.awswire.models import MODELS_DIR

    session = botocore.session.get_session()
    if profile:
        session.set_config_variable("profile", profile)
    loader = session.get_component("data_loader")
    if str(MODELS_DIR) not in loader.search_paths:
        loader.search_paths.append(str(MODELS_DIR))
    return session.create_client(
        service,
        endpoint_url=endpoint_url,
        region_name=region or session.get_config_variable("region") or "us-east-1",
        verify=ca_bundle,
        config=Config(retries={"max_attempts": 2}),
    )


def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """One API call; an AWS error or an unreachable broker becomes ``Error: …`` (exit 1)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise click.ClickException(f"{err.get('Code')}: {err.get('Message')}") from None
    except BotoCoreError as exc:
        raise click.ClickException(str(exc)) from None
