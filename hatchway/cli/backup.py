"""``hatchway backup``, ``hatchway restore`` and ``hatchway key …`` (docs/backup.md).

A backup is one ``.tar.gz`` file, mode 0600: ``manifest.json`` (what, when, which schema
version, the SHA-256 of each file), ``master.key`` (and ``master.key.previous`` during a
rotation) and, on SQLite, ``hatchway.db`` copied with SQLite's online backup API while the
broker runs. A PostgreSQL store is backed up with ``pg_dump`` (docs/backup.md); its archive
holds the keys only, which the database's dump cannot be read without.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from hatchway import __version__
from hatchway.server.base.crypto import KEY_FILE, PREVIOUS_KEY_FILE, SecretBox
from hatchway.server.runtime.state import ServerConfig

FORMAT = "hatchway-backup"
FORMAT_VERSION = 1
DB_FILE = "hatchway.db"
MANIFEST = "manifest.json"
_MEMBERS = (DB_FILE, KEY_FILE, PREVIOUS_KEY_FILE)


def _data_dir_option(fn: Any) -> Any:
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=Path("hatchway-data"),
        show_default=True,
        help="The broker's data directory (its store, master.key, audit.jsonl).",
    )(fn)


def _database_option(fn: Any) -> Any:
    return click.option("--database-url", help="postgresql://… (default: SQLite in the data dir)")(
        fn
    )


def _schema_version(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM hw_meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error:
        row = None
    finally:
        conn.close()
    return int(row[0]) if row else 0


def _sqlite_copy(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy while the broker keeps writing."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        with dst:
            src.backup(dst, pages=1024, sleep=0.005)
    finally:
        dst.close()
        src.close()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


@click.command("backup")
@_data_dir_option
@_database_option
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The backup file to write (.tar.gz, mode 0600; it holds master.key: keep it safe).",
)
def backup_cmd(data_dir: Path, database_url: str | None, output: Path) -> None:
    """Back up the broker's store and master.key while it runs (SQLite's online backup;
    PostgreSQL: the keys here, the database with pg_dump)."""
    key = data_dir / KEY_FILE
    if not key.exists():
        raise click.ClickException(f"{key} does not exist: is {data_dir} a broker's data dir?")
    files: dict[str, bytes] = {KEY_FILE: key.read_bytes()}
    if (data_dir / PREVIOUS_KEY_FILE).exists():
        files[PREVIOUS_KEY_FILE] = (data_dir / PREVIOUS_KEY_FILE).read_bytes()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "formatVersion": FORMAT_VERSION,
        "hatchwayVersion": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if database_url:
        manifest["store"] = "postgresql"
        manifest["database"] = "not included: back it up with pg_dump (docs/backup.md)"
    else:
        db = Path(ServerConfig(data_dir=data_dir).store_url.removeprefix("sqlite:///"))
        if not db.exists():
            raise click.ClickException(f"{db} does not exist")
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / DB_FILE
            _sqlite_copy(db, copy)
            manifest["store"] = "sqlite"
            manifest["schemaVersion"] = _schema_version(copy)
            files[DB_FILE] = copy.read_bytes()
    manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
        for name, data in files.items():
            _add(tar, name, data)
    what = "store and master.key" if DB_FILE in files else "master.key (not the database)"
    click.echo(f"backed up the {what} to {output}", err=True)
    if database_url:
        click.echo(
            "the PostgreSQL database is not in this file: pg_dump --format=custom "
            "--file hatchway.pgdump DATABASE (docs/backup.md)",
            err=True,
        )


def _read_backup(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.name not in (*_MEMBERS, MANIFEST) or not member.isfile():
                    raise click.ClickException(f"{path}: unexpected entry {member.name!r}")
                f = tar.extractfile(member)
                assert f is not None
                files[member.name] = f.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise click.ClickException(f"{path}: not a Hatchway backup ({exc})") from None
    try:
        manifest = json.loads(files.pop(MANIFEST))
    except (KeyError, ValueError):
        raise click.ClickException(f"{path}: no manifest.json: not a Hatchway backup") from None
    if manifest.get("format") != FORMAT or manifest.get("formatVersion") != FORMAT_VERSION:
        raise click.ClickException(f"{path}: not a Hatchway backup of format {FORMAT_VERSION}")
    sums = manifest.get("files", {})
    if set(sums) != set(files):
        raise click.ClickException(f"{path}: its files do not match its manifest")
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != sums[name]:
            raise click.ClickException(f"{path}: {name} is damaged (checksum mismatch)")
    return manifest, files


@click.command("restore")
@click.argument("backup_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_data_dir_option
@click.option(
    "--force",
    is_flag=True,
    help="Replace the store and master.key already in the data dir (the broker must be stopped).",
)
def restore_cmd(backup_file: Path, data_dir: Path, force: bool) -> None:
    """Restore a backup into a data directory (the broker stopped); a broker started on it
    serves the same users, keys, documents and recordings."""
    from hatchway.server.store.migrations import MIGRATIONS

    manifest, files = _read_backup(backup_file)
    newest = max(number for number, _name, _step in MIGRATIONS)
    if int(manifest.get("schemaVersion", 0)) > newest:
        raise click.ClickException(
            f"{backup_file}: its store has schema version {manifest['schemaVersion']}, newer "
            f"than this Hatchway ({__version__}) knows ({newest}): restore it with the "
            f"version that made it ({manifest.get('hatchwayVersion')}) or later"
        )
    present = [name for name in _MEMBERS if (data_dir / name).exists()]
    if present and not force:
        raise click.ClickException(
            f"{data_dir} already has {', '.join(present)}: restore into an empty data dir, "
            "or pass --force (with the broker stopped) to replace them"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for name in _MEMBERS:
        target = data_dir / name
        if name not in files:
            if name != DB_FILE:  # keys: what is not in the backup must not stay
                target.unlink(missing_ok=True)
            continue
        tmp = target.with_name(target.name + ".restoring")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(files[name])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        if name == DB_FILE:  # a WAL of the replaced database must not be replayed onto it
            for suffix in ("-wal", "-shm"):
                data_dir.joinpath(name + suffix).unlink(missing_ok=True)
    click.echo(
        f"restored {', '.join(sorted(files))} ({manifest.get('created')}) into {data_dir}",
        err=True,
    )
    if DB_FILE not in files:
        click.echo(
            "the database was not in the backup: pg_restore its pg_dump (docs/backup.md)",
            err=True,
        )


@click.group("key")
def key_group() -> None:
    """master.key: rotate it, re-sealing every stored secret, without stopping the broker."""


def _open_store(data_dir: Path, database_url: str | None) -> tuple[Any, SecretBox]:
    from hatchway.server.store import Store

    store = Store(ServerConfig(data_dir=data_dir, database_url=database_url).store_url)
    return store, SecretBox.from_dir(data_dir)


def _reseal(data_dir: Path, database_url: str | None) -> None:
    from hatchway.server.runtime import keyrotation

    store, box = _open_store(data_dir, database_url)
    try:
        result = keyrotation.reseal(store, box)
    finally:
        store.close()
    done = ", ".join(f"{n} {what}" for what, n in sorted(result.counts.items())) or "nothing"
    click.echo(f"re-sealed {done} with the new key", err=True)
    if result.left:
        raise click.ClickException(
            f"{result.left} value(s) are still sealed with another key (written meanwhile): "
            "run `hatchway key reseal` again"
        )
    if keyrotation.retire(data_dir):
        click.echo(f"removed {data_dir / PREVIOUS_KEY_FILE}: the old key is retired", err=True)


@key_group.command("rotate")
@_data_dir_option
@_database_option
def key_rotate_cmd(data_dir: Path, database_url: str | None) -> None:
    """A new master.key, every stored secret re-sealed with it, the old key retired; the
    broker on this data dir keeps serving (it reloads the keys within a second)."""
    from hatchway.server.runtime import keyrotation

    try:
        keyrotation.new_key(data_dir)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{data_dir / KEY_FILE}: new key; the old one is {PREVIOUS_KEY_FILE}", err=True)
    # Running brokers re-read the key files at most SecretBox.RELOAD_INTERVAL seconds apart:
    # after that, nothing new is sealed with the old key.
    time.sleep(SecretBox.RELOAD_INTERVAL * 2)
    _reseal(data_dir, database_url)


@key_group.command("new")
@_data_dir_option
def key_new_cmd(data_dir: Path) -> None:
    """First step of a rotation across several broker hosts: a new master.key here, the old
    one kept as master.key.previous (copy both to every broker, then `hatchway key reseal`)."""
    from hatchway.server.runtime import keyrotation

    try:
        keyrotation.new_key(data_dir)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{data_dir / KEY_FILE}: new key; the old one is {PREVIOUS_KEY_FILE}", err=True)


@key_group.command("reseal")
@_data_dir_option
@_database_option
def key_reseal_cmd(data_dir: Path, database_url: str | None) -> None:
    """Re-seal every stored secret with the current master.key, then retire
    master.key.previous (once every broker has the new key)."""
    _reseal(data_dir, database_url)
