"""Candles written as columns (binary COPY from numpy) store exactly what rows would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from data_collector.markets import MINUTE_MS
from data_collector.storage import CandleBatch, CoverageRange, StoreSettings
from data_collector.storage.candle_columns import CandleColumns
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.postgres_partitions import create_partitions
from tests.storage.test_storage_postgres import _blocked_pid
from tests.support.candles import batch
from tests.support.services import PG_ADMIN_DSN, PG_URL


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[PostgresCandleStore]:
    async with PostgresCandleStore(StoreSettings(url=PG_URL, db_schema=pg_schema)) as s:
        yield s


def columnar(b: CandleBatch) -> CandleBatch:
    return CandleBatch(
        b.instrument_id, b.timeframe, CandleColumns.from_candles(b.candles), b.coverage, b.final
    )


async def _two(store: PostgresCandleStore) -> tuple[int, int]:
    a = await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")
    b = await store.ensure_instrument("binance", "ETH/USDT", base="ETH", quote="USDT")
    return a.id, b.id


async def test_columns_store_the_same_rows_and_coverage_as_tuples(store: PostgresCandleStore) -> None:
    rows_id, cols_id = await _two(store)
    # Values that need all of float64 and a wide timestamp, and two batches in one write.
    odd = [(60_000 * (28_928_160 + i), 1 / 3 + i, 1e300, 5e-324, 93650.01, 0.1 + 0.2) for i in range(3)]
    cover = [CoverageRange(odd[0][0], odd[-1][0] + MINUTE_MS, "data")]
    plain = [batch(rows_id, 0, 500), CandleBatch(rows_id, "1m", odd, cover)]
    assert (await store.write(plain)).written == 503
    written = await store.write(
        [columnar(CandleBatch(cols_id, b.timeframe, b.candles, b.coverage)) for b in plain]
    )
    assert (written.written, written.skipped) == (503, 0)
    for iid in (rows_id, cols_id):
        assert len(await store.load(iid, "1m", 0, 2**62)) == 503
    assert await store.load(cols_id, "1m", 0, 2**62) == await store.load(rows_id, "1m", 0, 2**62)
    assert await store.coverage(cols_id, "1m") == await store.coverage(rows_id, "1m")


async def test_rows_already_stored_are_skipped(store: PostgresCandleStore) -> None:
    iid, _ = await _two(store)
    await store.write([batch(iid, 3, 4, price=500.0)])
    result = await store.write([columnar(batch(iid, 0, 10))])
    assert (result.written, result.skipped) == (6, 4)
    stored = await store.load(iid, "1m", 0, 10 * MINUTE_MS)
    assert [c[1] for c in stored] == [100.0, 101.0, 102.0, 500.0, 501.0, 502.0, 503.0, 107.0, 108.0, 109.0]


@pytest.mark.parametrize("columns_last", [False, True])
async def test_overlapping_batches_in_one_write_keep_the_last_candle(
    store: PostgresCandleStore, columns_last: bool
) -> None:
    iid, _ = await _two(store)
    cols, rows = columnar(batch(iid, 0, 10, price=100.0)), batch(iid, 5, 10, price=200.0)
    result = await store.write([rows, cols] if columns_last else [cols, rows])
    assert (result.written, result.skipped) == (15, 5)
    opens = [c[1] for c in await store.load(iid, "1m", 0, 15 * MINUTE_MS)]
    if columns_last:
        assert opens == [100.0 + i for i in range(10)] + [205.0 + i for i in range(5)]
    else:
        assert opens == [100.0 + i for i in range(5)] + [200.0 + i for i in range(10)]


async def test_a_concurrent_writer_sends_columns_through_the_staging_path(
    store: PostgresCandleStore, pg_schema: str
) -> None:
    iid, _ = await _two(store)
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        # The month's partition as a write makes it, so that the rows below go there, not to the
        # default (uncommitted rows in the default would block the store's creating it).
        await create_partitions(admin, pg_schema, "ohlcv", [(1970, 1)])
        other = admin.transaction()
        await other.start()
        await admin.copy_records_to_table(
            "ohlcv",
            schema_name=pg_schema,
            records=[(iid, 1, *c) for c in batch(iid, 0, 5, price=300.0).candles],
        )
        task = asyncio.create_task(store.write([columnar(batch(iid, 0, 10))]))
        await _blocked_pid(pg_schema, "COPY")
        await other.commit()
        result = await task
    finally:
        await admin.close()
    assert (result.written, result.skipped) == (5, 5)
    opens = [c[1] for c in await store.load(iid, "1m", 0, 10 * MINUTE_MS)]
    assert opens == [300.0 + i for i in range(5)] + [105.0 + i for i in range(5)]
    assert await store.coverage(iid, "1m") == [CoverageRange(0, 10 * MINUTE_MS, "data")]


async def test_sqlite_takes_columns_as_rows(tmp_path: Path) -> None:
    from data_collector.storage.sqlite import SqliteCandleStore

    async with SqliteCandleStore(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")) as store:
        await store.initialize()
        iid = (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id
        await store.write([batch(iid, 3, 4, price=500.0)])
        result = await store.write([columnar(batch(iid, 0, 10))])
        assert (result.written, result.skipped) == (6, 4)
        want = list(batch(iid, 0, 10).candles)
        want[3:7] = batch(iid, 3, 4, price=500.0).candles
        assert await store.load(iid, "1m", 0, 10 * MINUTE_MS) == want


async def test_columns_into_a_new_month_make_its_partition_first(
    store: PostgresCandleStore, pg_schema: str
) -> None:
    """A columns-only write (the archive path) makes its month's ``ohlcv`` partition before its
    COPY, as a row write does: nothing lands in ``ohlcv_default``, so a later write making that
    month's partition cannot find rows in the default partition that belong to it."""
    sol, _ = await _two(store)
    march_min = 1_709_251_200_000 // MINUTE_MS  # 2024-03-01
    await store.write([columnar(batch(sol, march_min, 60))])
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        default = await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv_default')
        in_month = await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv_p202403')
    finally:
        await conn.close()
    assert (default, in_month) == (0, 60)
