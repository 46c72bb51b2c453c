"""The funding table on SQLite (see :mod:`data_collector.storage.funding`)."""

from __future__ import annotations

from data_collector.storage.funding import FundingTables
from data_collector.storage.points import SqlitePoints

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


class SqliteFunding(SqlitePoints, FundingTables):
    """The funding table of one :class:`SqliteCandleStore`."""

    INSERT = "INSERT INTO funding VALUES (?, ?, ?, ?) ON CONFLICT (instrument_id, ts) DO NOTHING"
    SELECT = (
        "SELECT ts, rate, mark_price FROM funding WHERE instrument_id = ? AND ts >= ? AND ts < ? ORDER BY ts"
    )
