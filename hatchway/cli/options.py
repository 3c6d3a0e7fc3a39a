"""Options several commands share, written once."""

from __future__ import annotations

import click

log_level_option = click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    help="Least severe log level written: DEBUG, INFO, WARNING, ERROR.",
)

log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or as one JSON object a line (with request id, principal, "
    "operation and session id where known).",
)
