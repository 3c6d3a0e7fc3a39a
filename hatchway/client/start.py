"""``hatchway start-session``: StartSession with boto3, then the plugin's session in-process.

Credentials, region and endpoint follow botocore's standard chain (``--profile``,
``--region``, ``--endpoint-url``, ``AWS_ENDPOINT_URL_SSM`` …), as ``aws ssm start-session``
does; the session then runs exactly as ``session-manager-plugin`` would run it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import boto3
import click
from botocore.exceptions import BotoCoreError, ClientError

from hatchway.client.session import SessionParams, run_session
from hatchway.client.websocket import ca_bundle

__all__ = ["build_request", "start_session", "start_session_cmd"]


def build_request(
    target: str,
    document_name: str | None = None,
    parameters: dict[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The StartSession request, only with the fields given."""
    request: dict[str, Any] = {"Target": target}
    if document_name:
        request["DocumentName"] = document_name
    if reason:
        request["Reason"] = reason
    if parameters:
        request["Parameters"] = parameters
    return request


def parse_parameters(text: str | None) -> dict[str, list[str]] | None:
    """``--parameters``: JSON ``{"name": ["value"]}`` (a bare string value is wrapped)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--parameters") from exc
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--parameters")
    out: dict[str, list[str]] = {}
    for key, item in value.items():
        items = item if isinstance(item, list) else [item]
        if not all(isinstance(v, str) for v in items):
            raise click.BadParameter(
                f"values of {key!r} must be strings", param_hint="--parameters"
            )
        out[str(key)] = items
    return out


def start_session(
    target: str,
    *,
    document_name: str | None = None,
    parameters: dict[str, Any] | None = None,
    reason: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
) -> int:
    """StartSession, then run the session; returns the exit code."""
    try:
        session = boto3.Session(profile_name=profile or None, region_name=region or None)
        # AWS_CA_BUNDLE (botocore's own), else SSL_CERT_FILE: what the session's websocket trusts.
        client = session.client("ssm", endpoint_url=endpoint_url or None, verify=ca_bundle())
        response = client.start_session(**build_request(target, document_name, parameters, reason))
    except ClientError as exc:
        sys.stderr.write(f"\n{exc}\n")
        return 255
    except BotoCoreError as exc:
        sys.stderr.write(f"\n{exc}\n")
        return 255
    params = SessionParams(
        session_id=response["SessionId"],
        token=response["TokenValue"],
        stream_url=response["StreamUrl"],
        region=client.meta.region_name or "",
        profile=profile or "",
        endpoint_url=client.meta.endpoint_url or "",
        target=target,
    )
    return run_session(params)


@click.command("start-session")
@click.option("--target", required=True, help="Managed node ID (mi-… / i-…).")
@click.option("--document-name", help="Session document (default: the shell).")
@click.option("--parameters", help='Document parameters as JSON, e.g. \'{"command":["ls"]}\'.')
@click.option("--reason", help="Reason recorded with the session.")
@click.option("--endpoint-url", help="SSM endpoint (the broker), e.g. http://127.0.0.1:8080.")
@click.option("--region", help="AWS region.")
@click.option("--profile", help="Profile from the AWS config/credentials files.")
def start_session_cmd(
    target: str,
    document_name: str | None,
    parameters: str | None,
    reason: str | None,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
) -> None:
    """Start a session on a managed node (like `aws ssm start-session`)."""
    code = start_session(
        target,
        document_name=document_name,
        parameters=parse_parameters(parameters),
        reason=reason,
        endpoint_url=endpoint_url,
        region=region,
        profile=profile,
    )
    sys.exit(code)
