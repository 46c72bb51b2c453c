"""The funding table on SQLite: see :mod:`data_collector.storage.postgres_funding`."""

from __future__ import annotations

from data_collector.storage.funding import FundingRate, FundingTablesBase, PreparedFunding

FUNDING_DDL = (
    """CREATE TABLE IF NOT EXISTS funding (
        instrument_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        rate REAL NOT NULL,
        mark_price REAL,
        PRIMARY KEY (instrument_id, ts)) WITHOUT ROWID""",
    "CREATE VIEW IF NOT EXISTS funding_view AS SELECT i.exchange, i.symbol, f.ts, f.rate, f.mark_price "
    "FROM funding f JOIN instruments i ON i.id = f.instrument_id",
)
_INSERT = "INSERT INTO funding VALUES (?, ?, ?, ?) ON CONFLICT (instrument_id, ts) DO NOTHING"
_SELECT = (
    "SELECT ts, rate, mark_price FROM funding WHERE instrument_id = ? AND ts >= ? AND ts < ? ORDER BY ts"
)


class SqliteFunding(FundingTablesBase):
    """The funding table of one :class:`SqliteCandleStore`."""

    async def _write(self, prepared: PreparedFunding) -> int:
        store = self._store
        async with store._transaction() as conn:
            before = conn.total_changes
            await store._bounded(conn.executemany(_INSERT, prepared.records))
            written: int = conn.total_changes - before
            await store._write_coverage(conn, prepared.coverage)
        return written

    async def load(self, instrument_id: int, start_ms: int, end_ms: int) -> list[FundingRate]:
        rows = await self._store._fetchall(_SELECT, (instrument_id, start_ms, end_ms))
        return [(int(r[0]), float(r[1]), None if r[2] is None else float(r[2])) for r in rows]
