"""The trades tables on PostgreSQL: DDL, the COPY write path and the id-keyed coverage merge.

``trades`` is partitioned by month on ``ts``, like ``ohlcv``; a write makes the partitions of
the months its batches span first (:mod:`.postgres_partitions`, outside the transaction).

The write path is the ``ohlcv`` one (:mod:`data_collector.storage.postgres`), keyed by
``(instrument_id, id)``: one query (before the transaction) finds the ids already stored within the
spans of the write's batches, the rest goes by binary COPY, and a unique violation (a concurrent
writer) rolls the transaction back and redoes the write through a staging table with ``ON CONFLICT
DO NOTHING``. Trades and their coverage commit in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from data_collector.storage.base import WriteResult
from data_collector.storage.ranges import Span, merge_spans
from data_collector.storage.trades import (
    TRADE_COLUMNS,
    TRADE_KEY,
    TRADE_TABLE,
    PreparedTrades,
    Trade,
    TradeBatch,
    TradeCoverage,
    TradeRecord,
    merge_trade_coverage,
    prepare_trades,
    trade_tables_ddl,
)

if TYPE_CHECKING:
    from data_collector.storage.postgres import PostgresCandleStore

_PG_TYPES = {"int": "integer", "bigint": "bigint", "float": "double precision", "bool": "boolean"}
#: Monthly partitions on ts (trades_pYYYYMM, trades_default), made on demand by each write
#: (:mod:`.postgres_partitions`), so an archived month is retired by DETACH + DROP. A partitioned
#: table's unique key must hold its partition column: ``(instrument_id, id, ts)``. An aggregate
#: trade's id fixes its time, so the key still admits one row per id (the write path probes ids).
TRADES_TABLE_DDL = trade_tables_ddl("{s}.", _PG_TYPES, " PARTITION BY RANGE (ts)", key=(*TRADE_KEY, "ts"))[0]
# ``{s}`` is the quoted schema (see PostgresCandleStore._sql); values are always bound.
TRADE_DDL = (
    # No foreign key to instruments: its per-row trigger would slow COPY down a lot. A table made
    # before partitioning stays plain until migrate-partitions (:mod:`.postgres_migrate`).
    TRADES_TABLE_DDL,
    # BRIN: trades arrive roughly in time order, so a block-range index serves time-range reads
    # for a tiny fraction of what a second B-tree would cost every COPY.
    "CREATE INDEX IF NOT EXISTS trades_ts ON {s}.trades USING brin (ts)",
    trade_tables_ddl("{s}.", _PG_TYPES)[1],
    "CREATE INDEX IF NOT EXISTS trade_coverage_key ON {s}.trade_coverage (instrument_id, first_id)",
    """CREATE OR REPLACE VIEW {s}.trades_view AS
        SELECT i.exchange, i.symbol, t.id, to_timestamp(t.ts / 1000.0) AS ts, t.price, t.qty,
               t.first_trade_id, t.last_trade_id, t.buyer_maker
        FROM {s}.trades t
        JOIN {s}.instruments i ON i.id = t.instrument_id""",
)
CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS dc_trade_stage ("
    + ", ".join(f"{name} {_PG_TYPES[kind]}" for name, kind in TRADE_TABLE)
    + ") ON COMMIT DELETE ROWS"
)
_EXISTING_IDS = (
    "SELECT g.n - 1, (SELECT array_agg(t.id) FROM {s}.trades t "
    "WHERE t.instrument_id = g.i AND t.id BETWEEN g.lo AND g.hi) "
    "FROM unnest($1::int[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS g(i, lo, hi, n)"
)
_INSERT_STAGED = (
    # Columns named: tables made before the column order of TRADE_TABLE keep their own.
    "INSERT INTO {s}.trades (instrument_id, id, ts, price, qty, first_trade_id, last_trade_id, buyer_maker) "
    "SELECT instrument_id, id, ts, price, qty, first_trade_id, last_trade_id, buyer_maker "
    # No conflict target: the key is (instrument_id, id, ts) when partitioned, (instrument_id, id)
    # in a table made before; either one rejects a stored trade.
    "FROM pg_temp.dc_trade_stage ORDER BY instrument_id, id ON CONFLICT DO NOTHING"
)
_DELETE_TOUCHED = (
    "DELETE FROM {s}.trade_coverage c "
    "USING unnest($1::int[], $2::bigint[], $3::bigint[]) AS n(i, f, e) "
    "WHERE c.instrument_id = n.i AND c.first_id <= n.e AND c.end_id >= n.f "
    "RETURNING c.instrument_id, c.first_id, c.end_id, c.start_ms, c.end_ms"
)
_INSERT_COVERAGE = (
    "INSERT INTO {s}.trade_coverage (instrument_id, first_id, end_id, start_ms, end_ms) "
    "SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])"
)
_SELECT_COVERAGE = (
    "SELECT first_id, end_id, start_ms, end_ms FROM {s}.trade_coverage "
    "WHERE instrument_id = $1 ORDER BY first_id"
)
_SELECT_TRADES = (
    "SELECT id, ts, price, qty, first_trade_id, last_trade_id, buyer_maker FROM {s}.trades "
    "WHERE instrument_id = $1 AND ts >= $2 AND ts < $3 ORDER BY id"
)


def id_spans(batches: Sequence[TradeBatch]) -> dict[int, list[Span]]:
    """Per instrument, the inclusive ``[first, last]`` id spans of the batches, merged."""
    spans: dict[int, list[Span]] = {}
    for b in batches:
        if b.trades:
            spans.setdefault(b.instrument_id, []).append((b.trades[0][0], b.trades[-1][0]))
    # Batches are sorted by id (validated pages); a batch that is not is probed by its hull.
    return {
        iid: [(a, e - 1) for a, e in merge_spans((min(a, z), max(a, z) + 1) for a, z in v)]
        for iid, v in spans.items()
    }


def ts_spans(batches: Sequence[TradeBatch]) -> list[Span]:
    """The inclusive time spans of the batches, from their first and last trade: the months whose
    partitions a write needs. A trade outside them (a page not in time order) lands in the default
    partition, and moves into its month's partition when that is made."""
    out = []
    for b in batches:
        if b.trades:
            a, z = b.trades[0][1], b.trades[-1][1]
            out.append((min(a, z), max(a, z)))
    return out


class PostgresTrades:
    """The trades tables of one :class:`PostgresCandleStore` (which owns the pool)."""

    def __init__(self, store: PostgresCandleStore) -> None:
        self._store = store

    async def write(self, batches: Sequence[TradeBatch]) -> WriteResult:
        """See :meth:`data_collector.storage.store.CandleStore.write_trades`."""
        prepared = prepare_trades(batches)
        if not prepared.records and not prepared.coverage:
            return WriteResult(0, prepared.total)
        store = self._store
        async with store._write_connection((CREATE_STAGE,)) as conn:
            await store._trade_partitions.ensure(conn, ts_spans(batches))
            # The probe runs before the transaction, and the COPY without a savepoint: each
            # statement inside a transaction leaves its backend idle until this (one-threaded,
            # shared) client sends the next, and these two saved three of them (measured by
            # ``python -m benchmarks.trades_floor``, PERFORMANCE.md *Trades*). Rows that another
            # writer stores after the probe fail the COPY with a unique violation, which rolls the
            # whole write back; it is then done again through the staging table.
            fresh = await self._fresh(conn, prepared, id_spans(batches))
            try:
                async with store._transaction(conn):
                    written = _count(await self._copy(conn, "trades", store.schema, fresh)) if fresh else 0
                    await self._write_coverage(conn, prepared)
            except asyncpg.UniqueViolationError:
                async with store._transaction(conn):
                    await self._copy(conn, "dc_trade_stage", "pg_temp", fresh)
                    written = _count(
                        await store._bounded(
                            conn.execute(store._sql(_INSERT_STAGED), timeout=store._timeout_s)
                        )
                    )
                    await self._write_coverage(conn, prepared)
        return WriteResult(written, prepared.total - written)

    async def _fresh(
        self, conn: asyncpg.Connection, prepared: PreparedTrades, spans: dict[int, list[Span]]
    ) -> list[TradeRecord]:
        """The records whose ids are not stored yet (as far as the probe can see)."""
        store = self._store
        probes = [(iid, lo, hi) for iid, v in spans.items() for lo, hi in v]
        rows = await store._bounded(
            conn.fetch(
                store._sql(_EXISTING_IDS),
                [p[0] for p in probes],
                [p[1] for p in probes],
                [p[2] for p in probes],
                timeout=store._timeout_s,
            )
        )
        stored: dict[int, set[int]] = {}
        for row in rows:
            if row[1]:
                stored.setdefault(probes[row[0]][0], set()).update(row[1])
        fresh: list[TradeRecord] = []
        for iid in sorted(prepared.records):
            records = prepared.records[iid]
            have = stored.get(iid)
            fresh.extend(records if not have else [r for r in records if r[1] not in have])
        return fresh

    async def _copy(
        self, conn: asyncpg.Connection, table: str, schema: str, records: list[TradeRecord]
    ) -> str:
        store = self._store
        status: str = await store._bounded(
            conn.copy_records_to_table(
                table, schema_name=schema, records=records, columns=TRADE_COLUMNS, timeout=store._timeout_s
            )
        )
        return status

    async def _write_coverage(self, conn: asyncpg.Connection, prepared: PreparedTrades) -> None:
        """Merge the new rows with the stored ones their ids touch, and store the result."""
        store = self._store
        flat = [(iid, c) for iid, rows in prepared.coverage.items() for c in rows]
        if not flat:
            return
        touched = await store._bounded(
            conn.fetch(
                store._sql(_DELETE_TOUCHED),
                [iid for iid, _ in flat],
                [c.first_id for _, c in flat],
                [c.end_id for _, c in flat],
                timeout=store._timeout_s,
            )
        )
        merged: dict[int, list[TradeCoverage]] = {iid: list(v) for iid, v in prepared.coverage.items()}
        for r in touched:
            merged.setdefault(r[0], []).append(TradeCoverage(r[1], r[2], r[3], r[4]))
        out = [(iid, c) for iid, v in merged.items() for c in merge_trade_coverage(v)]
        await store._bounded(
            conn.execute(
                store._sql(_INSERT_COVERAGE),
                [iid for iid, _ in out],
                [c.first_id for _, c in out],
                [c.end_id for _, c in out],
                [c.start_ms for _, c in out],
                [c.end_ms for _, c in out],
                timeout=store._timeout_s,
            )
        )

    async def coverage_rows(self, instrument_id: int) -> list[TradeCoverage]:
        rows = await self._store._fetch(_SELECT_COVERAGE, instrument_id)
        return [TradeCoverage(r[0], r[1], r[2], r[3]) for r in rows]

    async def load(self, instrument_id: int, start_ms: int, end_ms: int) -> list[Trade]:
        rows = await self._store._fetch(_SELECT_TRADES, instrument_id, start_ms, end_ms)
        return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]


def _count(status: str) -> int:
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
