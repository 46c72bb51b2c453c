"""The funding table on PostgreSQL: DDL, the write (rows and coverage in one transaction), the read.

Funding is three rows a day per instrument, so rows go by one ``INSERT … SELECT unnest(…) ON
CONFLICT DO NOTHING`` rather than COPY; the coverage takes the candle coverage's merge
(:meth:`PostgresCandleStore._write_coverage`) under the funding code.
"""

from __future__ import annotations

from data_collector.storage.funding import FundingRate, FundingTablesBase, PreparedFunding

FUNDING_DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.funding (
        instrument_id integer NOT NULL,
        ts bigint NOT NULL,
        rate double precision NOT NULL,
        mark_price double precision,
        PRIMARY KEY (instrument_id, ts))""",
    "CREATE OR REPLACE VIEW {s}.funding_view AS SELECT i.exchange, i.symbol, "
    "to_timestamp(f.ts / 1000.0) AS ts, f.rate, f.mark_price "
    "FROM {s}.funding f JOIN {s}.instruments i ON i.id = f.instrument_id",
)
_INSERT = (
    "INSERT INTO {s}.funding (instrument_id, ts, rate, mark_price) "
    "SELECT * FROM unnest($1::int[], $2::bigint[], $3::float8[], $4::float8[]) "
    "ON CONFLICT (instrument_id, ts) DO NOTHING"
)
_SELECT = (
    "SELECT ts, rate, mark_price FROM {s}.funding "
    "WHERE instrument_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts"
)


class PostgresFunding(FundingTablesBase):
    """The funding table of one :class:`PostgresCandleStore` (which owns the pool)."""

    async def _write(self, prepared: PreparedFunding) -> int:
        store = self._store
        written = 0
        async with store._write_transaction(()) as conn:
            if prepared.records:
                columns = [list(c) for c in zip(*prepared.records, strict=True)]
                status = await store._bounded(
                    conn.execute(store._sql(_INSERT), *columns, timeout=store._timeout_s)
                )
                written = int(str(status).rsplit(" ", 1)[-1])
            await store._write_coverage(conn, prepared.coverage)
        return written

    async def load(self, instrument_id: int, start_ms: int, end_ms: int) -> list[FundingRate]:
        rows = await self._store._fetch(_SELECT, instrument_id, start_ms, end_ms)
        return [(r[0], r[1], r[2]) for r in rows]
