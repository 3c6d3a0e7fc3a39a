"""``hatchway audit``: print the broker's audit trail (CloudTrail-like JSON events)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hatchway.server.runtime.state import ServerConfig
from hatchway.server.store import Store
from hatchway.server.store import schema as t


@click.command("audit")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("hatchway-data"),
    show_default=True,
    help="The broker's data directory (its store, master.key, audit.jsonl).",
)
@click.option("--database-url", help="postgresql://… (default: SQLite in the data dir)")
@click.option("--principal", help="Only events of this principal ARN.")
@click.option("--event", "event_name", help="Only this operation, e.g. StartSession.")
@click.option(
    "--decision",
    type=click.Choice(["allowed", "denied", "error"]),
    help="Only events with this outcome.",
)
@click.option("--limit", default=100, show_default=True, help="The most recent N events.")
@click.option(
    "--output",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="JSON lines (the audit records) or one line per event.",
)
def audit_cmd(
    data_dir: Path,
    database_url: str | None,
    principal: str | None,
    event_name: str | None,
    decision: str | None,
    limit: int,
    output: str,
) -> None:
    """Who did what, the IAM decision, and the statement that decided it."""
    store = Store(ServerConfig(data_dir=data_dir, database_url=database_url).store_url)
    wanted = {"principal": principal, "event_name": event_name, "decision": decision}
    conds = [t.audit.c[col] == value for col, value in wanted.items() if value]
    rows = store.select(t.audit, *conds, order_by=[t.audit.c.seq.desc()], limit=limit)
    for row in reversed(rows):
        ev = row["data"]
        if output == "json":
            click.echo(json.dumps(ev))
        else:
            why = ev.get("denialMessage") or ev.get("errorMessage") or ""
            click.echo(
                f"{ev['eventTime']} {ev['userIdentity']['arn']} {ev['eventName']} "
                f"{ev['decision']}" + (f": {why}" if why else "")
            )
    store.close()
