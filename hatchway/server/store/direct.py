"""The store's simple statements, run on the SQLite driver itself.

SQLAlchemy Core spends tens of microseconds of Python per statement (execution context,
compiled-statement cache, result wrapping, events), several times what SQLite itself spends on
a keyed read or a one-row write. The broker's hot operations (StartSession, TerminateSession,
the audit rows) are made of exactly such statements, so on SQLite the store runs them here:

* the SQL text is produced once per shape by SQLAlchemy's own compiler for the engine's
  dialect, so quoting and placeholders are SQLAlchemy's;
* values go in and come out through each column type's own bind and result processors
  (``TypeEngine.bind_processor`` / ``result_processor``), so what is stored is byte for byte
  what SQLAlchemy would store, and either path reads what the other wrote;
* the statement runs on the driver's connection beneath the SQLAlchemy connection the caller
  holds, inside the same transaction.

PostgreSQL keeps the SQLAlchemy path (its driver does the type work itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Table, and_, bindparam, insert, select, update
from sqlalchemy.engine import Dialect

Convert = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Prepared:
    """One statement: its SQL and, per positional parameter, the name and the converter."""

    sql: str
    params: tuple[tuple[str, Convert], ...]

    def args(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(conv(values[name]) for name, conv in self.params)


@dataclass(frozen=True)
class Query(Prepared):
    """A read: also the result columns and how each value comes back."""

    columns: tuple[str, ...] = ()
    results: tuple[Convert, ...] = ()

    def record(self, row: Sequence[Any]) -> dict[str, Any]:
        pairs = zip(self.columns, self.results, row, strict=True)
        return {name: conv(value) for name, conv, value in pairs}


class Statements:
    """Prepared statements for one dialect, built on first use and kept."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._cache: dict[tuple[Any, ...], Any] = {}

    # -- values -------------------------------------------------------------------------

    def _bind(self, column: Column[Any]) -> Convert:
        proc = column.type.dialect_impl(self.dialect).bind_processor(self.dialect)
        if column.name == "data":
            return _json_then(proc)
        return proc or _identity

    def _result(self, column: Column[Any]) -> Convert:
        proc = column.type.dialect_impl(self.dialect).result_processor(self.dialect, None)
        base: Convert = proc or _identity
        if column.name == "data":
            return _decode_json_after(base)
        if _is_datetime(column):
            return _aware_after(base)
        return base

    def _prepare(self, stmt: Any, binds: Mapping[str, Column[Any]]) -> tuple[str, tuple[Any, ...]]:
        compiled = stmt.compile(dialect=self.dialect)
        order = compiled.positiontup or ()
        return str(compiled), tuple((name, self._bind(binds[name])) for name in order)

    # -- shapes -------------------------------------------------------------------------

    def insert(self, table: Table, names: tuple[str, ...]) -> Prepared:
        """``INSERT`` of the named columns (plus scalar defaults of the others)."""
        key = ("insert", table.name, names)
        hit = self._cache.get(key)
        if hit is None:
            cols = {name: table.c[name] for name in (*names, *_defaulted(table, names))}
            stmt = insert(table).values({name: bindparam(name) for name in cols})
            sql, params = self._prepare(stmt, cols)
            hit = self._cache[key] = Prepared(sql, params)
        return hit

    def get(self, table: Table, keys: tuple[str, ...]) -> Query:
        """``SELECT`` every column of the rows whose ``keys`` equal the given values."""
        cache_key = ("get", table.name, keys)
        hit = self._cache.get(cache_key)
        if hit is None:
            stmt = select(*table.c).where(and_(*(table.c[k] == bindparam(k) for k in keys)))
            sql, params = self._prepare(stmt, {k: table.c[k] for k in keys})
            hit = self._cache[cache_key] = Query(
                sql,
                params,
                columns=tuple(c.name for c in table.c),
                results=tuple(self._result(c) for c in table.c),
            )
        return hit

    def update(self, table: Table, keys: tuple[str, ...], names: tuple[str, ...]) -> Prepared:
        """``UPDATE`` the named columns of the rows whose ``keys`` equal the given values;
        parameters are ``k_<key>`` and ``v_<column>``."""
        cache_key = ("update", table.name, keys, names)
        hit = self._cache.get(cache_key)
        if hit is None:
            stmt = keyed_update(table, keys, names)
            binds = {f"k_{k}": table.c[k] for k in keys} | {f"v_{n}": table.c[n] for n in names}
            sql, params = self._prepare(stmt, binds)
            hit = self._cache[cache_key] = Prepared(sql, params)
        return hit


def keyed_update(table: Table, keys: Sequence[str], names: Sequence[str]) -> Any:
    """``UPDATE table SET <names> WHERE <keys>``, parameters ``k_<key>`` and ``v_<column>``."""
    return (
        update(table)
        .where(and_(*(table.c[k] == bindparam(f"k_{k}") for k in keys)))
        .values({n: bindparam(f"v_{n}") for n in names})
    )


def _defaulted(table: Table, names: tuple[str, ...]) -> list[str]:
    """Columns left out of an insert that SQLAlchemy would fill with their scalar default."""
    return [
        c.name
        for c in table.c
        if c.name not in names and c.default is not None and c.default.is_scalar
    ]


def defaults(table: Table, names: tuple[str, ...]) -> dict[str, Any]:
    """The scalar default values :meth:`Statements.insert` adds for ``names``."""
    return {name: table.c[name].default.arg for name in _defaulted(table, names)}  # type: ignore[union-attr]


def _is_datetime(column: Column[Any]) -> bool:
    try:
        return column.type.python_type is datetime
    except NotImplementedError:
        return False


def _json_then(proc: Convert | None) -> Convert:
    def bind(value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            value = json.dumps(value, default=str)
        return proc(value) if proc is not None else value

    return bind


def _decode_json_after(proc: Convert) -> Convert:
    def result(value: Any) -> Any:
        value = proc(value)
        return json.loads(value) if isinstance(value, str) else value

    return result


def _aware_after(proc: Convert) -> Convert:
    def result(value: Any) -> Any:
        value = proc(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    return result
