"""The funding and open interest tables on PostgreSQL (see :mod:`data_collector.storage.funding`,
:mod:`data_collector.storage.open_interest`)."""

from __future__ import annotations

from data_collector.storage.funding import FundingTables
from data_collector.storage.open_interest import OpenInterestTables
from data_collector.storage.points import PostgresPoints

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
    """CREATE TABLE IF NOT EXISTS {s}.open_interest (
        instrument_id integer NOT NULL,
        period smallint NOT NULL,
        ts bigint NOT NULL,
        amount double precision NOT NULL,
        value double precision NOT NULL,
        PRIMARY KEY (instrument_id, period, ts))""",
    "CREATE OR REPLACE VIEW {s}.open_interest_view AS SELECT i.exchange, i.symbol, t.name AS period, "
    "to_timestamp(o.ts / 1000.0) AS ts, o.amount, o.value FROM {s}.open_interest o "
    "JOIN {s}.instruments i ON i.id = o.instrument_id JOIN {s}.timeframes t ON t.code = o.period",
)


class PostgresFunding(PostgresPoints, FundingTables):
    """The funding table of one :class:`PostgresCandleStore` (which owns the pool)."""

    INSERT = (
        "INSERT INTO {s}.funding (instrument_id, ts, rate, mark_price) "
        "SELECT * FROM unnest($1::int[], $2::bigint[], $3::float8[], $4::float8[]) "
        "ON CONFLICT (instrument_id, ts) DO NOTHING"
    )
    SELECT = (
        "SELECT ts, rate, mark_price FROM {s}.funding "
        "WHERE instrument_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts"
    )


class PostgresOpenInterest(PostgresPoints, OpenInterestTables):
    """The open interest table of one :class:`PostgresCandleStore` (which owns the pool)."""

    INSERT = (
        "INSERT INTO {s}.open_interest (instrument_id, period, ts, amount, value) "
        "SELECT * FROM unnest($1::int[], $2::smallint[], $3::bigint[], $4::float8[], $5::float8[]) "
        "ON CONFLICT (instrument_id, period, ts) DO NOTHING"
    )
    SELECT = (
        "SELECT ts, amount, value FROM {s}.open_interest "
        "WHERE instrument_id = $1 AND period = $2 AND ts >= $3 AND ts < $4 ORDER BY ts"
    )
