"""``hatchway sessions``: the broker's session history and recordings, read from its store.

``list`` shows sessions with the size of their recordings; ``replay`` plays a recording in the
terminal with its original timing (or dumps it as an asciicast v2 file with ``--raw``);
``connections`` prints a port session's connection records. Like ``hatchway audit``, these
read the store directly (``--data-dir`` / ``--database-url``), for whoever runs the broker; with
``--endpoint-url`` they read through the broker's API instead (``hatchway:ListSessionRecordings``,
``hatchway:GetSessionRecording``, ``hatchway:ListPortConnections``), signed with the caller's
AWS credentials, so that IAM decides who may read what (docs/audit.md).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from hatchway.cli import apiclient
from hatchway.server.recordings import asciicast
from hatchway.server.recordings import keeper as recordings
from hatchway.server.runtime.state import ServerConfig
from hatchway.server.store import SessionRow, Store
from hatchway.server.store import schema as t

_STATES = {
    "active": ("Connecting", "Connected", "Disconnected", "Terminating"),
    "history": ("Terminated", "Failed"),
}


def _store(data_dir: Path, database_url: str | None) -> Store:
    return Store(ServerConfig(data_dir=data_dir, database_url=database_url).store_url)


def _store_options(fn: Any) -> Any:
    fn = apiclient.api_options(fn)
    fn = click.option("--database-url", help="postgresql://… (default: SQLite in the data dir)")(fn)
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=Path("hatchway-data"),
        show_default=True,
        help="The broker's data directory (its store, master.key, audit.jsonl).",
    )(fn)


@click.group("sessions")
def sessions() -> None:
    """Session history and recordings (asciicast v2) kept by the broker."""


def _session(store: Store, session_id: str) -> SessionRow:
    row = store.session(session_id)
    if row is None:
        raise click.ClickException(f"Session {session_id} does not exist.")
    return row


@sessions.command("list")
@_store_options
@click.option(
    "--state",
    type=click.Choice(["all", "active", "history"]),
    default="all",
    show_default=True,
    help="Only active sessions, only ended ones (history), or all.",
)
@click.option("--limit", default=50, show_default=True, help="The most recent N sessions.")
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Text for people or JSON for programs.",
)
def list_cmd(
    data_dir: Path,
    database_url: str | None,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    ca_bundle: str | None,
    state: str,
    limit: int,
    output: str,
) -> None:
    """Sessions, newest first, with the size of their recordings (through the API: the
    sessions that have a recording)."""
    if endpoint_url:
        api = apiclient.client("hatchway", endpoint_url, region, profile, ca_bundle)
        _list_api(api, state, limit, output)
        return
    store = _store(data_dir, database_url)
    conds = [t.sessions.c.status.in_(_STATES[state])] if state in _STATES else []
    rows = store.sessions(*conds, order_by=[t.sessions.c.start_date.desc()], limit=limit)
    sizes = recordings.sizes(store)
    store.close()
    for row in rows:
        batches, size = sizes.get(row["session_id"], (0, 0))
        if output == "json":
            click.echo(
                json.dumps(
                    {
                        "SessionId": row["session_id"],
                        "Status": row["status"],
                        "Target": row["target"],
                        "Owner": row["owner"],
                        "DocumentName": row["document_name"],
                        "StartDate": row["start_date"].isoformat(),
                        "EndDate": row["end_date"].isoformat() if row["end_date"] else None,
                        "Details": row["data"].get("details"),
                        "OutputUrl": row["data"].get("output_url") or {},
                        "RecordingBytes": size,
                        "RecordingBatches": batches,
                    }
                )
            )
        else:
            click.echo(
                f"{row['session_id']}  {row['status']:<12} {row['target']}  "
                f"{row['start_date']:%Y-%m-%d %H:%M:%S}  {row['owner']}  "
                f"recording {_human(size) if batches else '-'}"
            )


def _list_api(api: Any, state: str, limit: int, output: str) -> None:
    kwargs: dict[str, Any] = {"MaxResults": 50}
    shown = 0
    while shown < limit:
        page = apiclient.call(api.list_session_recordings, **kwargs)
        for item in page.get("Recordings", []):
            if state in _STATES and item["Status"] not in _STATES[state]:
                continue
            if shown >= limit:
                break
            shown += 1
            if output == "json":
                out = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in item.items()}
                out.setdefault("EndDate", None)
                click.echo(json.dumps(out))
            else:
                click.echo(
                    f"{item['SessionId']}  {item['Status']:<12} {item['Target']}  "
                    f"{item['StartDate']:%Y-%m-%d %H:%M:%S}  {item['Owner']}  "
                    f"recording {_human(item['RecordingBytes'])}"
                )
        if not page.get("NextToken"):
            return
        kwargs["NextToken"] = page["NextToken"]


def _api_cast_lines(api: Any, session_id: str) -> Iterator[str]:
    kwargs: dict[str, Any] = {"SessionId": session_id, "MaxLines": 5000}
    while True:
        page = apiclient.call(api.get_session_recording, **kwargs)
        yield from page.get("Lines", [])
        if not page.get("NextToken"):
            return
        kwargs["NextToken"] = page["NextToken"]


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@sessions.command("replay")
@click.argument("session_id", required=False)
@_store_options
@click.option("--cast", "cast_file", type=click.File("r"), help="Play this .cast file instead.")
@click.option("--speed", default=1.0, show_default=True, help="Playback speed factor.")
@click.option(
    "--max-idle",
    type=float,
    default=None,
    help="Cap pauses at this many seconds (of recording time).",
)
@click.option("--raw", is_flag=True, help="Print the asciicast v2 recording instead of playing.")
def replay_cmd(
    session_id: str | None,
    data_dir: Path,
    database_url: str | None,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    ca_bundle: str | None,
    cast_file: Any,
    speed: float,
    max_idle: float | None,
    raw: bool,
) -> None:
    """Play a session's recording with its original timing (Ctrl-C stops).

    Output goes to stdout as it was recorded; connection records and the exit code (markers)
    go to stderr. A live session plays up to what the broker has received so far.
    """
    if speed <= 0:
        raise click.BadParameter("must be positive", param_hint="--speed")
    if cast_file is None and session_id is None:
        raise click.UsageError("Name a session (or --cast FILE).")
    store: Store | None = None
    try:
        if cast_file is not None:
            lines: Iterable[str] = cast_file
        elif endpoint_url:
            assert session_id is not None
            api = apiclient.client("hatchway", endpoint_url, region, profile, ca_bundle)
            lines = list(_api_cast_lines(api, session_id))
        else:
            assert session_id is not None
            store = _store(data_dir, database_url)
            lines = recordings.cast_lines(store, _session(store, session_id))
        if raw:
            empty = True
            for line in lines:
                click.echo(line.rstrip("\n"))
                empty = False
            if empty:
                raise click.ClickException(f"Session {session_id} has no recording.")
            return
        try:
            cast = asciicast.read(lines)
        except asciicast.CastError as exc:
            raise click.ClickException(f"No recording to play: {exc}") from None
    finally:
        if store is not None:
            store.close()
    when = datetime.fromtimestamp(cast.header.get("timestamp", 0)).isoformat(sep=" ")
    click.echo(
        f"[{cast.header.get('title') or 'recording'}, {when}, "
        f"{cast.header.get('width')}x{cast.header.get('height')}]",
        err=True,
    )
    try:
        play(cast, speed=speed, max_idle=max_idle)
    except KeyboardInterrupt:
        click.echo("", err=True)


def play(
    cast: asciicast.Cast,
    *,
    speed: float = 1.0,
    max_idle: float | None = None,
    out: Any = None,
    err: Any = None,
) -> None:
    """Write the recording's output with its timing (pauses capped at ``max_idle``)."""
    out = out or sys.stdout.buffer
    err = err or sys.stderr
    last = 0.0
    for ev in cast.events:
        gap = max(0.0, ev.time - last)
        last = ev.time
        if max_idle is not None:
            gap = min(gap, max_idle)
        if gap > 0:
            time.sleep(gap / speed)
        if ev.code == "o":
            out.write(ev.data.encode())
            out.flush()
        elif ev.code == "m":
            err.write(f"\r\n# {ev.data}\r\n")
            err.flush()


@sessions.command("connections")
@click.argument("session_id")
@_store_options
def connections_cmd(
    session_id: str,
    data_dir: Path,
    database_url: str | None,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    ca_bundle: str | None,
) -> None:
    """A port session's connections (JSON lines): who, from where, to which host and port,
    bytes each way, when."""
    if endpoint_url:
        api = apiclient.client("hatchway", endpoint_url, region, profile, ca_bundle)
        kwargs: dict[str, Any] = {"SessionId": session_id}
        while True:
            page = apiclient.call(api.list_port_connections, **kwargs)
            for c in page.get("Connections", []):
                record = {
                    "time": c["Time"].astimezone().isoformat(),
                    "event": c.get("Event"),
                    "stream": c.get("Stream"),
                    "host": c.get("Host"),
                    "port": c.get("Port"),
                    "bytes_in": c.get("BytesIn"),
                    "bytes_out": c.get("BytesOut"),
                    "error": c.get("Error"),
                    "who": c.get("Who"),
                    "from": c.get("From"),
                }
                click.echo(json.dumps(record))
            if not page.get("NextToken"):
                return
            kwargs["NextToken"] = page["NextToken"]
    store = _store(data_dir, database_url)
    try:
        row = _session(store, session_id)
        start = recordings.started(store, session_id) or 0.0
        for ev in recordings.iter_events(store, session_id, row["owner"]):
            if ev.kind == "conn" and isinstance(ev.data, dict):
                stamp = datetime.fromtimestamp(start + ev.time).astimezone().isoformat()
                click.echo(json.dumps({"time": stamp, **ev.data}))
    finally:
        store.close()
