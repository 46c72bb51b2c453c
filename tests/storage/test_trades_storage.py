"""The trades tables, run against every backend: idempotent writes and an exact id coverage."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pandas as pd
import pytest

from data_collector.config import load_config
from data_collector.errors import UsageError
from data_collector.storage import CandleStore, StoreSettings, Trade, TradeBatch, TradeCoverage, open_store
from data_collector.storage.trades import merge_trade_coverage
from tests.support.services import PG_ADMIN_DSN, PG_URL, unique

T0 = 1_700_000_000_000


def trades(first: int, end: int) -> list[Trade]:
    """Trades with ids ``[first, end)``, 7 ms apart."""
    return [
        (i, T0 + 7 * i, 100.0 + i / 8, 0.25 + i % 5, 10 * i, 10 * i + i % 3, i % 2 == 0)
        for i in range(first, end)
    ]


def page(iid: int, first: int, end: int) -> TradeBatch:
    """A batch covering ids ``[first, end)`` and the times between its first and last trade."""
    return TradeBatch(
        iid, trades(first, end), [TradeCoverage(first, end, T0 + 7 * first, T0 + 7 * (end - 1))]
    )


@pytest.fixture(params=["postgres", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CandleStore]:
    schema = unique("t")
    if request.param == "postgres":
        opened = open_store(
            load_config({"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}})
        )
    else:
        opened = open_store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'trades.db'}"))
    try:
        await opened.initialize()
        yield opened
    finally:
        await opened.close()
        if request.param == "postgres":
            conn = await asyncpg.connect(PG_ADMIN_DSN)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


async def sol(store: CandleStore) -> int:
    return (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id


async def test_write_load_and_rewrite_is_idempotent(store: CandleStore) -> None:
    iid = await sol(store)
    first = await store.write_trades([page(iid, 0, 500), page(iid, 500, 1200)])
    assert (first.written, first.skipped) == (1200, 0)
    again = await store.write_trades([page(iid, 0, 500), page(iid, 250, 1300)])
    assert (again.written, again.skipped) == (100, 1450)
    got = await store.load_trades(iid, T0, T0 + 7 * 1300)
    assert got == trades(0, 1300)
    assert await store.trade_coverage(iid) == [TradeCoverage(0, 1300, T0, T0 + 7 * 1299)]


async def test_coverage_is_exact_after_random_overlapping_writes(store: CandleStore) -> None:
    """Pages written in any order, repeated and overlapping: one row per id, coverage with no overlap."""
    iid = await sol(store)
    rng = random.Random(12)
    cuts = sorted(rng.sample(range(1, 3000), 40))
    spans = list(zip([0, *cuts], [*cuts, 3000], strict=True))
    spans += rng.sample(spans, 10)
    rng.shuffle(spans)
    for i in range(0, len(spans), 4):
        await store.write_trades([page(iid, a, b) for a, b in spans[i : i + 4]])
    assert [t[0] for t in await store.load_trades(iid, 0, 2**62)] == list(range(3000))
    assert await store.trade_coverage(iid) == [TradeCoverage(0, 3000, T0, T0 + 7 * 2999)]


async def test_gap_between_pages_stays_open_and_empty_spans_join(store: CandleStore) -> None:
    iid = await sol(store)
    await store.write_trades([page(iid, 0, 100), page(iid, 200, 300)])
    assert [(c.first_id, c.end_id) for c in await store.trade_coverage(iid)] == [(0, 100), (200, 300)]
    # A span without trades that ends where ids resume joins the range after it.
    await store.write_trades([TradeBatch(iid, [], [TradeCoverage(300, 300, T0 + 7 * 299, T0 + 10**6)])])
    assert [(c.first_id, c.end_id, c.end_ms) for c in await store.trade_coverage(iid)] == [
        (0, 100, T0 + 7 * 99),
        (200, 300, T0 + 10**6),
    ]


async def test_trades_outside_their_coverage_are_refused_and_nothing_is_written(store: CandleStore) -> None:
    iid = await sol(store)
    bad = TradeBatch(iid, trades(0, 10), [TradeCoverage(0, 5, T0, T0 + 35)])
    with pytest.raises(UsageError):
        await store.write_trades([page(iid, 100, 110), bad])
    assert await store.load_trades(iid, 0, 2**62) == []
    assert await store.trade_coverage(iid) == []


async def test_load_frame_and_sql_view(store: CandleStore, tmp_path: Path) -> None:
    iid = await sol(store)
    await store.write_trades([page(iid, 0, 50)])
    frame = await store.load_trades_frame(iid, T0, T0 + 7 * 10)
    assert list(frame.columns) == ["id", "price", "qty", "first_trade_id", "last_trade_id", "buyer_maker"]
    assert frame.index.name == "time" and str(frame.index.tz) == "UTC"
    assert frame.index[0] == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert frame["id"].tolist() == list(range(10))
    assert frame["buyer_maker"].dtype == bool and frame["id"].dtype == "int64"
    sql = "SELECT count(*), min(symbol) FROM {t}trades_view"
    if hasattr(store, "schema"):
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        row = tuple(await conn.fetchrow(sql.replace("{t}", f'"{store.schema}".')))
        await conn.close()
    else:
        with sqlite3.connect(tmp_path / "trades.db") as conn:
            row = conn.execute(sql.replace("{t}", "")).fetchone()
    assert row == (50, "SOL/USDT")


def test_merge_joins_touching_ids_only() -> None:
    rows = [TradeCoverage(5, 9, 50, 90), TradeCoverage(0, 5, 0, 49), TradeCoverage(10, 12, 100, 120)]
    assert merge_trade_coverage(rows) == [TradeCoverage(0, 9, 0, 90), TradeCoverage(10, 12, 100, 120)]
    assert merge_trade_coverage([TradeCoverage(3, 3, 10, 20), TradeCoverage(0, 3, 0, 9)]) == [
        TradeCoverage(0, 3, 0, 20)
    ]
