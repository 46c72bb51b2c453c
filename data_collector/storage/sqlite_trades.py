"""The trades tables on SQLite: the same shape as PostgreSQL's (ts an integer in ms, booleans 0/1).

A write is one ``BEGIN IMMEDIATE`` transaction of ``executemany`` ``INSERT … ON CONFLICT DO
NOTHING`` plus the coverage merge, as for candles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from data_collector.storage.base import WriteResult
from data_collector.storage.trades import (
    Trade,
    TradeBatch,
    TradeCoverage,
    merge_trade_coverage,
    prepare_trades,
    trade_tables_ddl,
)

if TYPE_CHECKING:
    import aiosqlite

    from data_collector.storage.sqlite import SqliteCandleStore

_SQLITE_TYPES = {"int": "INTEGER", "bigint": "INTEGER", "float": "REAL", "bool": "INTEGER"}
TRADE_DDL = (
    trade_tables_ddl("", _SQLITE_TYPES, " WITHOUT ROWID")[0],
    "CREATE INDEX IF NOT EXISTS trades_ts ON trades (instrument_id, ts)",
    trade_tables_ddl("", _SQLITE_TYPES)[1],
    "CREATE INDEX IF NOT EXISTS trade_coverage_key ON trade_coverage (instrument_id, first_id)",
    """CREATE VIEW IF NOT EXISTS trades_view AS
        SELECT i.exchange, i.symbol, t.id, t.ts, t.price, t.qty, t.first_trade_id, t.last_trade_id,
               t.buyer_maker
        FROM trades t
        JOIN instruments i ON i.id = t.instrument_id""",
)
_INSERT = (
    # Columns named: tables made before the column order of TRADE_TABLE keep their own.
    "INSERT INTO trades (instrument_id, id, ts, price, qty, first_trade_id, last_trade_id, buyer_maker) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (instrument_id, id) DO NOTHING"
)
_DELETE_TOUCHED = (
    "DELETE FROM trade_coverage WHERE instrument_id = ? AND first_id <= ? AND end_id >= ? "
    "RETURNING first_id, end_id, start_ms, end_ms"
)
_INSERT_COVERAGE = (
    "INSERT INTO trade_coverage (instrument_id, first_id, end_id, start_ms, end_ms) VALUES (?, ?, ?, ?, ?)"
)


class SqliteTrades:
    """The trades tables of one :class:`SqliteCandleStore` (which owns the connection)."""

    def __init__(self, store: SqliteCandleStore) -> None:
        self._store = store

    async def write(self, batches: Sequence[TradeBatch]) -> WriteResult:
        """See :meth:`data_collector.storage.store.CandleStore.write_trades`."""
        store = self._store
        prepared = prepare_trades(batches)
        if not prepared.records and not prepared.coverage:
            return WriteResult(0, prepared.total)
        async with store._transaction() as conn:
            before = conn.total_changes
            for records in prepared.records.values():
                await store._bounded(conn.executemany(_INSERT, records))
            written = conn.total_changes - before
            for iid, rows in prepared.coverage.items():
                await self._merge_coverage(conn, iid, rows)
        return WriteResult(written, prepared.total - written)

    async def _merge_coverage(self, conn: aiosqlite.Connection, iid: int, new: list[TradeCoverage]) -> None:
        store = self._store
        rows = list(new)
        for c in new:
            touched = await store._bounded(
                conn.execute_fetchall(_DELETE_TOUCHED, (iid, c.end_id, c.first_id))
            )
            rows += [TradeCoverage(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in touched]
        await store._bounded(
            conn.executemany(
                _INSERT_COVERAGE,
                [(iid, c.first_id, c.end_id, c.start_ms, c.end_ms) for c in merge_trade_coverage(rows)],
            )
        )

    async def coverage_rows(self, instrument_id: int) -> list[TradeCoverage]:
        rows = await self._store._fetchall(
            "SELECT first_id, end_id, start_ms, end_ms FROM trade_coverage WHERE instrument_id = ? "
            "ORDER BY first_id",
            (instrument_id,),
        )
        return [TradeCoverage(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def load(self, instrument_id: int, start_ms: int, end_ms: int) -> list[Trade]:
        rows = await self._store._fetchall(
            "SELECT id, ts, price, qty, first_trade_id, last_trade_id, buyer_maker FROM trades "
            "WHERE instrument_id = ? AND ts >= ? AND ts < ? ORDER BY id",
            (instrument_id, start_ms, end_ms),
        )
        return [
            (int(r[0]), int(r[1]), float(r[2]), float(r[3]), int(r[4]), int(r[5]), bool(r[6])) for r in rows
        ]
