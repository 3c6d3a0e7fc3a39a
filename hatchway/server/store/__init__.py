"""The broker's store: one interface, two engines (SQLite embedded, PostgreSQL).

See :mod:`.store` for how the package's modules divide the work."""

from hatchway.server.store.engine import DriverMissing
from hatchway.server.store.records import (
    NodeData,
    NodeRow,
    SessionData,
    SessionRow,
    SessionStatus,
)
from hatchway.server.store.store import Conflict, Record, Store

__all__ = [
    "Conflict",
    "DriverMissing",
    "NodeData",
    "NodeRow",
    "Record",
    "SessionData",
    "SessionRow",
    "SessionStatus",
    "Store",
]
