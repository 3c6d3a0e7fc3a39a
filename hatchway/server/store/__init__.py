"""The broker's store: one interface, two engines (SQLite embedded, PostgreSQL)."""

from hatchway.server.store.store import Conflict, DriverMissing, Record, Store

__all__ = ["Conflict", "DriverMissing", "Record", "Store"]
