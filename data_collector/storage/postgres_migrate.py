"""Move a plain (unpartitioned) ``ohlcv`` into the monthly partitioned layout, resumably.

``data-collector migrate-partitions`` runs it (:mod:`data_collector.cli.migrate`). Tables made
before partitioning keep working without it (a prune then deletes rows instead of dropping a
partition), so it can wait for a quiet hour. Steps, each one transaction:

1. create ``ohlcv_next``, partitioned like a new ``ohlcv`` (its partitions already carry their
   final names, ``ohlcv_pYYYYMM`` and ``ohlcv_default``);
2. per (instrument, timeframe): make the partitions of the months its rows span, then
   ``DELETE … RETURNING`` its rows from ``ohlcv`` into ``ohlcv_next`` in one statement. A row is
   in one table or the other at every commit, never in both and never in neither;
3. lock ``ohlcv``, move whatever a writer added meanwhile, drop the empty ``ohlcv`` and its
   views, rename ``ohlcv_next`` to ``ohlcv`` and make the views again.

A kill at any point rolls back the step under way; running the command again carries on from the
rows still in ``ohlcv``. While ``ohlcv_next`` exists a store refuses to initialise (its reads
would miss the rows already moved), so collectors stay stopped until the migration finishes.
Disk: the moved rows take new space while the old table's space comes back only at step 3, so
up to the size of ``ohlcv`` again must be free.
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

#: The partitioned table being filled while a migration is under way.
NEXT = "ohlcv_next"
#: Moving a large series takes as long as it takes; not database.command_timeout_s.
_LONG_S = 24 * 3600.0
_LOCK = "SELECT pg_advisory_lock(hashtext($1))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext($1))"
_KEYS = "SELECT DISTINCT instrument_id, timeframe FROM {s}.ohlcv"
_KEY_SPAN = "SELECT min(ts), max(ts) FROM {s}.ohlcv WHERE instrument_id = $1 AND timeframe = $2"
_ALL_SPAN = "SELECT min(ts), max(ts) FROM {s}.ohlcv"
_MOVE_KEY = (
    "WITH moved AS (DELETE FROM {s}.ohlcv WHERE instrument_id = $1 AND timeframe = $2 RETURNING *) "
    "INSERT INTO {s}.ohlcv_next SELECT * FROM moved"
)
_MOVE_ALL = "WITH moved AS (DELETE FROM {s}.ohlcv RETURNING *) INSERT INTO {s}.ohlcv_next SELECT * FROM moved"
_SWAP = (
    "DROP VIEW IF EXISTS {s}.ohlcv_view",
    "DROP VIEW IF EXISTS {s}.price_ohlcv_view",
    "DROP TABLE {s}.ohlcv",
    "ALTER TABLE {s}.ohlcv_next RENAME TO ohlcv",
    "ALTER TABLE {s}.ohlcv RENAME CONSTRAINT ohlcv_next_pkey TO ohlcv_pkey",
)

#: Called after each step's statement, before its commit: ``("key", "iid:code")`` or ``("swap", "")``.
MigrateHook = Callable[[str, str], None]


@dataclass(slots=True)
class MigrationReport:
    """What one run did: series and rows moved, and whether the table is partitioned now."""

    series_moved: int = 0
    rows_moved: int = 0
    already: bool = False

    def summary(self) -> str:
        if self.already:
            return "migrate-partitions: ohlcv is already partitioned; nothing to do"
        return (
            f"migrate-partitions: {self.series_moved} series, {self.rows_moved:,} rows moved; "
            "ohlcv is partitioned by month now"
        )


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def migrate_ohlcv(store: PostgresCandleStore, hook: MigrateHook | None = None) -> MigrationReport:
    """Migrate ``store``'s plain ``ohlcv`` to monthly partitions (see the module's doc); resumable.

    The store need not be initialised (and cannot be while a migration is half done).

    Raises:
        UsageError: the schema has no ``ohlcv`` table.
    """
    from data_collector.storage.postgres import OHLCV_DDL, VIEW_DDL

    report = MigrationReport()
    schema, sql = store.schema, store._sql
    lock = f"data_collector.migrate-partitions:{schema}"
    async with store._connect() as (_, conn):
        await store._bounded(conn.execute(_LOCK, lock))  # one migration per schema at a time
        try:
            kind = await store._bounded(relkind(conn, schema, "ohlcv"))
            if kind is None:
                raise UsageError(f"{store.where}: schema {schema!r} has no ohlcv table; nothing to migrate")
            if kind == PARTITIONED and await store._bounded(relkind(conn, schema, NEXT)) is None:
                report.already = True
                return report
            if await store._bounded(relkind(conn, schema, NEXT)) is None:
                async with conn.transaction():
                    await store._bounded(
                        conn.execute(sql(OHLCV_DDL.replace("{s}.ohlcv (", "{s}.ohlcv_next (")))
                    )
            for key in await conn.fetch(sql(_KEYS), timeout=_LONG_S):
                async with conn.transaction():
                    moved = await _move(store, conn, _KEY_SPAN, _MOVE_KEY, key[0], key[1])
                    if hook is not None:
                        hook("key", f"{key[0]}:{key[1]}")
                report.series_moved += 1
                report.rows_moved += moved
            async with conn.transaction():
                await conn.execute(sql("LOCK TABLE {s}.ohlcv IN ACCESS EXCLUSIVE MODE"), timeout=_LONG_S)
                report.rows_moved += await _move(store, conn, _ALL_SPAN, _MOVE_ALL)
                for statement in (*_SWAP, *VIEW_DDL):
                    await store._bounded(conn.execute(sql(statement)))
                if hook is not None:
                    hook("swap", "")
        finally:
            await store._bounded(conn.execute(_UNLOCK, lock))
    store._partitions.forget()
    return report


async def _move(store: PostgresCandleStore, conn: asyncpg.Connection, span: str, move: str, *key: int) -> int:
    """Make the partitions the rows need, then move them (in the caller's transaction)."""
    row = await conn.fetchrow(store._sql(span), *key, timeout=_LONG_S)
    if row is None or row[0] is None:
        return 0
    months = months_of_spans([(int(row[0]), int(row[1]))])
    await store._bounded(create_partitions(conn, store.schema, NEXT, months, prefix="ohlcv"))
    return _count(await conn.execute(store._sql(move), *key, timeout=_LONG_S))
