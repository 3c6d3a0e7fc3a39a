"""``session-manager-plugin``: what ``aws ssm start-session`` runs after StartSession.

The argv/env contract is AWS's (docs/reference/data-channel.md#plugin-invocation, the plugin's
``ValidateInputAndStartSession``):

=========  ================================================================================
argv[1]    the StartSession response JSON, or the name of the environment variable holding
           it (``AWS_SSM_START_SESSION_RESPONSE``; read, then unset)
argv[2]    region
argv[3]    ``StartSession`` (the only operation)
argv[4]    profile (``""`` for none)
argv[5]    the StartSession request JSON (``Target`` required)
argv[6]    the SSM endpoint URL (for ResumeSession / TerminateSession)
=========  ================================================================================

No arguments prints the "installed successfully" message; ``--version`` prints the version
(above 1.2.497.0, so the CLI passes the response through the environment). AWS's plugin
exits 0 even on errors; ours prints the same texts but exits 1 on bad input.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any, TextIO

from hatchway.client.session import SessionParams, run_session

__all__ = [
    "ENV_VAR",
    "INSTALLED_MESSAGE",
    "VERSION",
    "UsageError",
    "main",
    "parse_args",
    "run",
]

VERSION = "1.2.764.0"
"""Reported by ``--version``: four parts, above every gate in the CLI and the agent."""
ENV_VAR = "AWS_SSM_START_SESSION_RESPONSE"
INSTALLED_MESSAGE = "\n{} Use the AWS CLI to start a session.\n\n".format(
    "The Session Manager plugin was installed successfully."
)
LEGACY_ARGS = 4
START_SESSION = "StartSession"
LOG_ENV = "HATCHWAY_CLIENT_LOG"
"""If set, debug logs go to this file (the terminal is in raw mode: nothing goes to stderr)."""


class UsageError(Exception):
    """Bad input from the AWS CLI; the message is what gets printed."""


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"Cannot perform start session: {what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"Cannot perform start session: {what} is not a JSON object")
    return value


def parse_args(args: Sequence[str], environ: MutableMapping[str, str]) -> SessionParams:
    """argv (with argv[0]) → :class:`SessionParams`; raises :class:`UsageError`."""
    if len(args) < LEGACY_ARGS:
        raise UsageError(
            f"\nUnknown operation {args[1]}. \n"
            "Use session-manager-plugin --version to check the version.\n"
        )
    first = args[1]
    if first.startswith(ENV_VAR):
        raw = environ.pop(first, None)
        if raw is None:
            raise UsageError(
                f"Cannot perform start session: environment variable {first} is not set"
            )
    else:
        raw = first
    region = args[2]
    operation = args[3]
    profile = args[4] if len(args) > 4 else ""
    target = ""
    if len(args) > 5:
        request = _json_object(args[5], "the StartSession request (argv[5])")
        value = request.get("Target")
        if not isinstance(value, str) or not value:
            raise UsageError("Cannot perform start session: the StartSession request has no Target")
        target = value
    endpoint = args[6] if len(args) > 6 else ""
    if operation != START_SESSION:
        raise UsageError("Invalid Operation")
    response = _json_object(raw, "the StartSession response")
    missing = [
        key
        for key in ("SessionId", "TokenValue", "StreamUrl")
        if not isinstance(response.get(key), str) or not response[key]
    ]
    if missing:
        raise UsageError(
            "Cannot perform start session: the StartSession response has no " + ", ".join(missing)
        )
    return SessionParams(
        session_id=response["SessionId"],
        token=response["TokenValue"],
        stream_url=response["StreamUrl"],
        region=region,
        profile=profile,
        endpoint_url=endpoint,
        target=target,
    )


def _configure_logging(environ: MutableMapping[str, str]) -> None:
    logger = logging.getLogger("hatchway.client")
    path = environ.get(LOG_ENV)
    if path:
        handler: logging.Handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.setLevel(logging.DEBUG)
    else:
        handler = logging.NullHandler()
    logger.addHandler(handler)
    logger.propagate = False


def run(
    args: Sequence[str],
    environ: MutableMapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """The plugin without ``sys.exit``: returns the exit code."""
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    if len(args) <= 1:
        out.write(INSTALLED_MESSAGE)
        out.flush()
        return 0
    if len(args) == 2 and args[1] == "--version":
        out.write(f"{VERSION}\n")
        out.flush()
        return 0
    try:
        params = parse_args(args, environ)
    except UsageError as exc:
        out.write(f"{exc}\n")
        out.flush()
        return 1
    _configure_logging(environ)
    return run_session(params)


def main() -> None:
    """Console script entry point."""
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
