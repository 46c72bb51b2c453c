"""The trades tables' shape: a table made in the earlier column order keeps working, on both paths.

The shared shape (``data_collector.storage.trades.TRADE_TABLE``) stores the 8-byte columns first;
databases made before keep ``instrument_id`` first (``CREATE TABLE IF NOT EXISTS`` leaves them be),
so every write and read must name its columns rather than rely on their order.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from data_collector.storage import StoreSettings, TradeCoverage
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.sqlite import SqliteCandleStore
from data_collector.storage.trades import TRADE_COLUMNS
from tests.storage.test_storage_postgres import _blocked_pid, _settings
from tests.storage.test_trades_storage import T0, page, trades
from tests.support.services import PG_ADMIN_DSN

#: The trades table as the project made it before the column order changed.
EARLIER = """CREATE TABLE {t}trades (
    instrument_id integer NOT NULL, id bigint NOT NULL, ts bigint NOT NULL,
    price double precision NOT NULL, qty double precision NOT NULL, first_trade_id bigint NOT NULL,
    last_trade_id bigint NOT NULL, buyer_maker boolean NOT NULL, PRIMARY KEY (instrument_id, id))"""


@pytest.mark.parametrize("layout", ["earlier", "partitioned"])
async def test_postgres_table_in_the_earlier_order_takes_copies_and_the_staging_path(
    pg_schema: str, layout: str
) -> None:
    """Both layouts: the plain table made before (key ``(instrument_id, id)``) and the monthly
    partitioned one (key ``(instrument_id, id, ts)``) take the COPY and the ON CONFLICT path."""
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        if layout == "earlier":
            await admin.execute(EARLIER.replace("{t}", f'"{pg_schema}".'))
        async with PostgresCandleStore(_settings(pg_schema)) as store:
            iid = (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id
            # The COPY path.
            assert (await store.write_trades([page(iid, 0, 100)])).written == 100
            # The staging path: rows another writer has not committed yet are invisible to the
            # probe, so the COPY waits on them, fails on their commit and falls back to staging.
            other = admin.transaction()
            await other.start()
            await admin.copy_records_to_table(
                "trades",
                schema_name=pg_schema,
                records=[(iid, *t) for t in trades(100, 105)],
                columns=TRADE_COLUMNS,
            )
            task = asyncio.create_task(store.write_trades([page(iid, 100, 200)]))
            await _blocked_pid(pg_schema, "COPY")
            await other.commit()
            result = await task
            assert (result.written, result.skipped) == (95, 5)
            assert await store.load_trades(iid, 0, 2**62) == trades(0, 200)
            assert await store.trade_coverage(iid) == [TradeCoverage(0, 200, T0, T0 + 7 * 199)]
            # Idempotent: the same pages again write nothing, on either path.
            again = await store.write_trades([page(iid, 0, 200)])
            assert (again.written, again.skipped) == (0, 200)
        kind = await admin.fetchval(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'trades'",
            pg_schema,
        )
        assert kind == (b"r" if layout == "earlier" else b"p")
    finally:
        await admin.close()


async def test_sqlite_table_in_the_earlier_order_takes_writes(tmp_path: Path) -> None:
    path = tmp_path / "earlier.db"
    with sqlite3.connect(path) as conn:
        conn.execute(EARLIER.replace("{t}", "") + " WITHOUT ROWID")
    async with SqliteCandleStore(StoreSettings(url=f"sqlite+aiosqlite:///{path}")) as store:
        iid = (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id
        first = await store.write_trades([page(iid, 0, 100)])
        again = await store.write_trades([page(iid, 50, 150)])
        assert (first.written, again.written, again.skipped) == (100, 50, 50)
        assert await store.load_trades(iid, 0, 2**62) == trades(0, 150)
