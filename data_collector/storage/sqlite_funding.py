"""The funding and open interest tables on SQLite (see :mod:`data_collector.storage.funding`,
:mod:`data_collector.storage.open_interest`)."""

from __future__ import annotations

from data_collector.storage.funding import FundingTables
from data_collector.storage.open_interest import OpenInterestTables
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
    """CREATE TABLE IF NOT EXISTS open_interest (
        instrument_id INTEGER NOT NULL,
        period INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        amount REAL NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (instrument_id, period, ts)) WITHOUT ROWID""",
    "CREATE VIEW IF NOT EXISTS open_interest_view AS SELECT i.exchange, i.symbol, t.name AS period, "
    "o.ts, o.amount, o.value FROM open_interest o "
    "JOIN instruments i ON i.id = o.instrument_id JOIN timeframes t ON t.code = o.period",
)


class SqliteFunding(SqlitePoints, FundingTables):
    """The funding table of one :class:`SqliteCandleStore`."""

    INSERT = "INSERT INTO funding VALUES (?, ?, ?, ?) ON CONFLICT (instrument_id, ts) DO NOTHING"
    SELECT = (
        "SELECT ts, rate, mark_price FROM funding WHERE instrument_id = ? AND ts >= ? AND ts < ? ORDER BY ts"
    )


class SqliteOpenInterest(SqlitePoints, OpenInterestTables):
    """The open interest table of one :class:`SqliteCandleStore`."""

    INSERT = (
        "INSERT INTO open_interest VALUES (?, ?, ?, ?, ?) ON CONFLICT (instrument_id, period, ts) DO NOTHING"
    )
    SELECT = (
        "SELECT ts, amount, value FROM open_interest "
        "WHERE instrument_id = ? AND period = ? AND ts >= ? AND ts < ? ORDER BY ts"
    )
