"""Move plain (unpartitioned) ``ohlcv`` and ``trades`` tables into the monthly partitioned layout,
resumably.

``data-collector migrate-partitions`` runs it (:mod:`data_collector.cli.migrate`). Tables made
before partitioning keep working without it (a prune then deletes rows instead of dropping a
partition), so it can wait for a quiet hour. ``ohlcv`` is migrated first, then ``trades``; for
each (``T``), steps, each one transaction:

1. create ``T_next``, partitioned like a new ``T`` (its partitions already carry their final
   names, ``T_pYYYYMM`` and ``T_default``);
2. per series (``(instrument, timeframe)`` of ``ohlcv``, instrument of ``trades``): make the
   partitions of the months its rows span, then ``DELETE … RETURNING`` its rows from ``T`` into
   ``T_next`` in one statement. A row is in one table or the other at every commit, never in both
   and never in neither;
3. lock ``T``, move whatever a writer added meanwhile, drop the empty ``T`` and its views, rename
   ``T_next`` (its key and indexes) to ``T``'s names and make the views again.

A kill at any point rolls back the step under way; running the command again carries on from the
rows still in ``T``. While a ``T_next`` exists a store refuses to initialise (its reads would miss
the rows already moved), so collectors stay stopped until the migration finishes. Disk: the moved
rows take new space while the old table's space comes back only at step 3, so up to the size of
``T`` again must be free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from data_collector.errors import UsageError
from data_collector.storage.postgres_partitions import (
    PARTITIONED,
    create_partitions,
    months_of_spans,
    relkind,
)

if TYPE_CHECKING:
    from data_collector.storage.postgres import PostgresCandleStore

#: Moving a large series takes as long as it takes; not database.command_timeout_s.
_LONG_S = 24 * 3600.0
_LOCK = "SELECT pg_advisory_lock(hashtext($1))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext($1))"


def next_table(table: str) -> str:
    """The partitioned table being filled while a migration of ``table`` is under way."""
    return f"{table}_next"


@dataclass(frozen=True, slots=True)
class _Table:
    """What a migration of one table needs: its series key, columns, DDL, views and indexes."""

    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    #: ``CREATE TABLE … PARTITION BY`` of the new layout, with ``{t}`` for the table's name.
    ddl: str
    views: tuple[str, ...]
    #: ``(index on T_next, its final name)``: made on ``T_next``, renamed at the swap.
    indexes: tuple[tuple[str, str], ...]

    def sql(self, statement: str) -> str:
        cols = ", ".join(self.columns)
        where = " AND ".join(f"{k} = ${i}" for i, k in enumerate(self.key, 1))
        return (
            statement.replace("{t}", self.name)
            .replace("{n}", next_table(self.name))
            .replace("{k}", ", ".join(self.key))
            .replace("{where}", where)
            .replace("{c}", cols)
        )


_KEYS = "SELECT DISTINCT {k} FROM {s}.{t}"
_KEY_SPAN = "SELECT min(ts), max(ts) FROM {s}.{t} WHERE {where}"
_ALL_SPAN = "SELECT min(ts), max(ts) FROM {s}.{t}"
# Columns named: a table made before may keep another column order (trades did).
_MOVE_KEY = "WITH moved AS (DELETE FROM {s}.{t} WHERE {where} RETURNING *) INSERT INTO {s}.{n} ({c}) SELECT {c} FROM moved"
_MOVE_ALL = "WITH moved AS (DELETE FROM {s}.{t} RETURNING *) INSERT INTO {s}.{n} ({c}) SELECT {c} FROM moved"


def _tables() -> tuple[_Table, ...]:
    from data_collector.storage.postgres import OHLCV_COLUMNS, OHLCV_DDL, VIEW_DDL
    from data_collector.storage.postgres_trades import TRADE_DDL, TRADES_TABLE_DDL
    from data_collector.storage.trades import TRADE_COLUMNS

    trades_view = next(s for s in TRADE_DDL if "trades_view" in s)
    return (
        _Table(
            "ohlcv",
            ("instrument_id", "timeframe"),
            OHLCV_COLUMNS,
            OHLCV_DDL.replace("{s}.ohlcv (", "{s}.{t} ("),
            VIEW_DDL,
            (),
        ),
        _Table(
            "trades",
            ("instrument_id",),
            TRADE_COLUMNS,
            TRADES_TABLE_DDL.replace("{s}.trades (", "{s}.{t} ("),
            (trades_view,),
            (("trades_next_ts", "trades_ts"),),
        ),
    )


#: Called after each step's statement, before its commit: ``("key", "table:key")`` or
#: ``("swap", "table")``.
MigrateHook = Callable[[str, str], None]


@dataclass(slots=True)
class MigrationReport:
    """What one run did: series and rows moved, and the tables that were partitioned already."""

    series_moved: int = 0
    rows_moved: int = 0
    #: The tables that needed nothing (partitioned before this run, or absent).
    already: tuple[str, ...] = ()
    #: The tables this run moved into partitions.
    migrated: tuple[str, ...] = ()

    def summary(self) -> str:
        if not self.migrated:
            return "migrate-partitions: ohlcv and trades are already partitioned; nothing to do"
        return (
            f"migrate-partitions: {self.series_moved} series, {self.rows_moved:,} rows moved; "
            f"{' and '.join(self.migrated)} partitioned by month now"
        )


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def migrate_ohlcv(store: PostgresCandleStore, hook: MigrateHook | None = None) -> MigrationReport:
    """Migrate ``store``'s plain ``ohlcv`` and ``trades`` to monthly partitions (see the module's
    doc); resumable. The store need not be initialised (and cannot be while a migration is half
    done).

    Raises:
        UsageError: the schema has no ``ohlcv`` table.
    """
    report = MigrationReport()
    schema = store.schema
    lock = f"data_collector.migrate-partitions:{schema}"
    async with store._connect() as (_, conn):
        await store._bounded(conn.execute(_LOCK, lock))  # one migration per schema at a time
        try:
            if await store._bounded(relkind(conn, schema, "ohlcv")) is None:
                raise UsageError(f"{store.where}: schema {schema!r} has no ohlcv table; nothing to migrate")
            for table in _tables():
                await _migrate(store, conn, table, report, hook)
        finally:
            await store._bounded(conn.execute(_UNLOCK, lock))
    store._partitions.forget()
    store._trade_partitions.forget()
    return report


async def _migrate(
    store: PostgresCandleStore,
    conn: asyncpg.Connection,
    table: _Table,
    report: MigrationReport,
    hook: MigrateHook | None,
) -> None:
    schema, nxt = store.schema, next_table(table.name)

    def sql(statement: str) -> str:
        return store._sql(table.sql(statement))

    kind = await store._bounded(relkind(conn, schema, table.name))
    has_next = await store._bounded(relkind(conn, schema, nxt)) is not None
    if kind is None or (kind == PARTITIONED and not has_next):
        report.already += (table.name,)
        return
    if not has_next:
        async with conn.transaction():
            await store._bounded(conn.execute(sql(table.ddl.replace("{t}", nxt))))
            for index, _ in table.indexes:
                await store._bounded(
                    conn.execute(sql(f"CREATE INDEX {index} ON {{s}}.{{n}} USING brin (ts)"))
                )
    for key in await conn.fetch(sql(_KEYS), timeout=_LONG_S):
        async with conn.transaction():
            moved = await _move(store, conn, table, _KEY_SPAN, _MOVE_KEY, *key)
            if hook is not None:
                hook("key", f"{table.name}:{':'.join(map(str, key))}")
        report.series_moved += 1
        report.rows_moved += moved
    async with conn.transaction():
        await conn.execute(sql("LOCK TABLE {s}.{t} IN ACCESS EXCLUSIVE MODE"), timeout=_LONG_S)
        report.rows_moved += await _move(store, conn, table, _ALL_SPAN, _MOVE_ALL)
        swap = [
            *(f"DROP VIEW IF EXISTS {{s}}.{view_name(v)}" for v in table.views),
            "DROP TABLE {s}.{t}",
            "ALTER TABLE {s}.{n} RENAME TO {t}",
            "ALTER TABLE {s}.{t} RENAME CONSTRAINT {n}_pkey TO {t}_pkey",
            *(f"ALTER INDEX {{s}}.{index} RENAME TO {final}" for index, final in table.indexes),
            *table.views,
        ]
        for statement in swap:
            await store._bounded(conn.execute(sql(statement)))
        if hook is not None:
            hook("swap", table.name)
    report.migrated += (table.name,)


def view_name(ddl: str) -> str:
    """The view a ``CREATE OR REPLACE VIEW {s}.name AS …`` makes."""
    return ddl.split("{s}.", 1)[1].split(" ", 1)[0]


async def _move(
    store: PostgresCandleStore, conn: asyncpg.Connection, table: _Table, span: str, move: str, *key: int
) -> int:
    """Make the partitions the rows need, then move them (in the caller's transaction)."""
    row = await conn.fetchrow(store._sql(table.sql(span)), *key, timeout=_LONG_S)
    if row is None or row[0] is None:
        return 0
    months = months_of_spans([(int(row[0]), int(row[1]))])
    nxt = next_table(table.name)
    await store._bounded(create_partitions(conn, store.schema, nxt, months, prefix=table.name))
    return _count(await conn.execute(store._sql(table.sql(move)), *key, timeout=_LONG_S))
