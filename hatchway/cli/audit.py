"""``hatchway audit``: print the broker's audit trail (CloudTrail-like JSON events).

With ``--endpoint-url`` the events come through CloudTrail's ``LookupEvents`` on the broker,
signed with the caller's AWS credentials (``cloudtrail:LookupEvents`` must be allowed);
without it, from the store in ``--data-dir``/``--database-url`` (the operator on the broker's
host).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from hatchway.cli import apiclient
from hatchway.server.runtime.state import ServerConfig
from hatchway.server.store import Store
from hatchway.server.store import schema as t


def _from_api(
    endpoint_url: str,
    region: str | None,
    profile: str | None,
    ca_bundle: str | None,
    event_name: str | None,
) -> Iterator[dict[str, Any]]:
    """Events newest first through LookupEvents (EventName as its lookup attribute)."""
    trail = apiclient.client("cloudtrail", endpoint_url, region, profile, ca_bundle)
    kwargs: dict[str, Any] = {"MaxResults": 50}
    if event_name:
        kwargs["LookupAttributes"] = [{"AttributeKey": "EventName", "AttributeValue": event_name}]
    while True:
        page = apiclient.call(trail.lookup_events, **kwargs)
        for item in page.get("Events", []):
            yield json.loads(item["CloudTrailEvent"])
        if not page.get("NextToken"):
            return
        kwargs["NextToken"] = page["NextToken"]


@click.command("audit")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("hatchway-data"),
    show_default=True,
    help="The broker's data directory (its store, master.key, audit.jsonl).",
)
@click.option("--database-url", help="postgresql://… (default: SQLite in the data dir)")
@apiclient.api_options
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
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    ca_bundle: str | None,
    principal: str | None,
    event_name: str | None,
    decision: str | None,
    limit: int,
    output: str,
) -> None:
    """Who did what, the IAM decision, and the statement that decided it."""
    events: list[dict[str, Any]] = []
    if endpoint_url:
        for ev in _from_api(endpoint_url, region, profile, ca_bundle, event_name):
            if principal and ev.get("userIdentity", {}).get("arn") != principal:
                continue
            if decision and ev.get("decision") != decision:
                continue
            events.append(ev)
            if len(events) >= limit:
                break
        events.reverse()
    else:
        store = Store(ServerConfig(data_dir=data_dir, database_url=database_url).store_url)
        wanted = {"principal": principal, "event_name": event_name, "decision": decision}
        conds = [t.audit.c[col] == value for col, value in wanted.items() if value]
        rows = store.select(t.audit, *conds, order_by=[t.audit.c.seq.desc()], limit=limit)
        store.close()
        events = [row["data"] for row in reversed(rows)]
    for ev in events:
        if output == "json":
            click.echo(json.dumps(ev))
        else:
            why = ev.get("denialMessage") or ev.get("errorMessage") or ""
            click.echo(
                f"{ev['eventTime']} {ev['userIdentity']['arn']} {ev['eventName']} "
                f"{ev['decision']}" + (f": {why}" if why else "")
            )
