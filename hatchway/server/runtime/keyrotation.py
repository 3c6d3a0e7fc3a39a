"""Rotation of ``master.key``: a new key, every stored secret re-sealed with it, the old key
retired — while brokers keep serving (docs/backup.md, "Rotating master.key").

1. :func:`new_key` — the current key becomes ``master.key.previous``, a fresh one
   ``master.key`` (each written to a temporary file and renamed). Running brokers reload both
   within a second (``SecretBox``): they open values sealed with either and seal new ones
   with the new key.
2. :func:`reseal` — every sealed value in the store (access-key secrets, session tokens, KMS
   key material, MFA seeds) is opened and sealed again with the new key, row by row, each
   update conditional on the row being unchanged since it was read (a concurrent write wins
   and is looked at again in the next pass).
3. :func:`retire` — once nothing sealed with the old key is left, ``master.key.previous`` is
   deleted.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, select

from hatchway.server.base.crypto import KEY_FILE, PREVIOUS_KEY_FILE, SecretBox
from hatchway.server.store import Store
from hatchway.server.store import schema as t

log = logging.getLogger("hatchway.server.runtime.keyrotation")


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_key(data_dir: Path) -> None:
    """Make a fresh ``master.key`` current, keeping the old one as ``master.key.previous``."""
    current = (data_dir / KEY_FILE).read_bytes()
    if (data_dir / PREVIOUS_KEY_FILE).exists():
        raise RuntimeError(
            f"{data_dir / PREVIOUS_KEY_FILE} exists: a rotation is not finished "
            "(run `hatchway key reseal` to finish it)"
        )
    _write_private(data_dir / PREVIOUS_KEY_FILE, current)
    _write_private(data_dir / KEY_FILE, secrets.token_bytes(32))


@dataclass
class Resealed:
    """Values re-sealed, and values still sealed with another key after the last pass."""

    counts: dict[str, int] = field(default_factory=dict)
    left: int = 0


# (what, table, key columns, how to find the sealed values in a row and put new ones back)
Getter = Callable[[dict[str, Any]], Iterator[tuple[str, str, str]]]


def _access_keys(row: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    akid = row["access_key_id"]
    yield "secret", row["secret"], akid
    token = json.loads(row["data"]).get("session_token")
    if token:
        yield "data.session_token", token, akid


def _kms(row: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    yield "material", row["material"], row["key_id"]


def _mfa(row: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    seed = json.loads(row["data"]).get("seed")
    if seed:
        yield "data.seed", seed, row["arn"]


_SEALED: tuple[tuple[str, Table, tuple[str, ...], Getter, Any], ...] = (
    ("access keys", t.access_keys, ("access_key_id",), _access_keys, None),
    ("kms keys", t.kms_keys, ("key_id",), _kms, None),
    ("mfa devices", t.iam_entities, ("kind", "name"), _mfa, t.iam_entities.c.kind == "mfa"),
)


def _pass(store: Store, box: SecretBox, result: Resealed) -> int:
    """One pass over every sealed value; returns how many are still not current."""
    left = 0
    for what, table, keys, getter, where in _SEALED:
        q = select(table)
        if where is not None:
            q = q.where(where)
        with store.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for row in rows:
            changes: dict[str, Any] = {}
            data: dict[str, Any] | None = None
            for column, sealed, context in getter(row):
                if box.is_current(sealed, context):
                    continue
                fresh = box.seal(box.open(sealed, context), context)
                if column.startswith("data."):
                    if data is None:
                        data = json.loads(row["data"])
                    data[column.removeprefix("data.")] = fresh
                else:
                    changes[column] = fresh
            if data is not None:
                changes["data"] = json.dumps(data)
            if not changes:
                continue
            unchanged = and_(
                *(table.c[k] == row[k] for k in keys),
                *(table.c[c] == row[c] for c in changes),
            )
            with store.transaction() as conn:
                done = conn.execute(table.update().where(unchanged).values(**changes)).rowcount
            if done:
                result.counts[what] = result.counts.get(what, 0) + 1
            else:
                left += 1  # changed or deleted meanwhile: the next pass looks again
    return left


def reseal(store: Store, box: SecretBox, passes: int = 5) -> Resealed:
    """Re-seal every stored secret with ``box``'s current key (several passes if writes
    raced with it); ``left`` is what still is not (0 when done)."""
    result = Resealed()
    for _ in range(passes):
        result.left = _pass(store, box, result)
        if not result.left:
            break
    if not result.left:
        result.left = _count_old(store, box)
    return result


def _count_old(store: Store, box: SecretBox) -> int:
    left = 0
    for _what, table, _keys, getter, where in _SEALED:
        q = select(table)
        if where is not None:
            q = q.where(where)
        with store.engine.connect() as conn:
            for r in conn.execute(q):
                for _column, sealed, context in getter(dict(r._mapping)):
                    if not box.is_current(sealed, context):
                        left += 1
    return left


def retire(data_dir: Path) -> bool:
    """Delete ``master.key.previous``; whether there was one."""
    try:
        (data_dir / PREVIOUS_KEY_FILE).unlink()
    except FileNotFoundError:
        return False
    return True
