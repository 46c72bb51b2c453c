"""The Parquet tier for the perpetual venue: futures and mark/index/premium candles, funding rates
and open interest move with archive + prune, read back equal across both tiers, and a re-run
asks the exchange for nothing there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from data_collector.markets import DAY_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.limits import SimClock
from tests.support.backfill import config_for

PERP = "BTC/USDT:USDT"
NOW_MS = 1_710_028_800_000  # 2024-03-10: open interest reaches back 30 days, into February
CUTOFF = "2024-03-01"
START_MS, END_MS = NOW_MS - 19 * DAY_MS, NOW_MS - 5 * DAY_MS  # 2024-02-20 .. 2024-03-05
TYPES = ["ohlcv", "mark_ohlcv", "index_ohlcv", "premium_ohlcv", "funding_rates", "open_interest"]
PRICES = ("last", "mark", "index", "premium")


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    clock = SimClock()
    clock.freeze(NOW_MS)
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=[PERP], seed=5, clock=clock) as exchange:
        yield exchange


def fapi_requests(sim: SimulatedExchange) -> int:
    return sum(int(n) for path, n in sim.stats()["endpoints"].items() if "fapi" in path or "futures" in path)


async def _frames(collector: OptimizedDataCollector) -> dict[str, pd.DataFrame]:
    frames = {p: await collector.load_ohlcv(PERP, "1h", START_MS, END_MS, price=p) for p in PRICES}
    frames["funding"] = await collector.load_funding(PERP, START_MS, END_MS)
    frames["oi"] = await collector.load_open_interest(PERP, "1h", START_MS, END_MS)
    return frames


async def test_perpetual_series_archive_prune_read_back_equal_and_a_rerun_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange, tmp_path: Path
) -> None:
    futures = {**sim.futures_exchange_config(), "timeout_s": 2.0, "ohlcv_page_limit": 499}
    config = config_for(
        base_config,
        sim,
        symbols=[PERP],
        timeframes=["1h"],
        data_types=TYPES,
        futures_exchange=futures,
        archive={"path": str(tmp_path)},
    )
    async with OptimizedDataCollector(config) as collector:
        report = await collector.collect(start=START_MS, end=END_MS)
        assert report.ok, report.summary()
        before = await _frames(collector)
        assert all(len(f) > 0 for f in before.values()), {k: len(f) for k, f in before.items()}
        moved = await collector.archive(older_than=CUTOFF, prune=True)
        # February of six series: four candle series, funding, open interest.
        assert (moved.months_pruned, moved.failed) == (6, []), moved.summary()
        instrument = await collector.instrument(PERP)
        store, feb = collector.store, (START_MS, 1_709_251_200_000)
        for key in ("1h", "mark:1h", "index:1h", "premium:1h"):
            assert await store.load(instrument.id, key, *feb) == [], key
        assert await store.load_funding(instrument.id, *feb) == []
        assert await store.load_open_interest(instrument.id, "1h", *feb) == []
        for key in ("1h", "mark:1h", "funding", "oi:1h"):
            kinds = {r.kind for r in await store.coverage(instrument.id, key) if r.end_ms <= feb[1]}
            assert kinds == {"archived"}, key
        after = await _frames(collector)
        for name, frame in before.items():
            pd.testing.assert_frame_equal(after[name], frame, obj=name)
        asked = fapi_requests(sim)
        again = await collector.collect(start=START_MS, end=END_MS)
        assert again.ok and again.requests == 0 and fapi_requests(sim) == asked, again.summary()
        # repair_gaps(restore=True) copies every price type back from Parquet, not from the
        # exchange: the database alone then holds the data before, coverage 'data' again.
        repaired = await collector.repair_gaps(PERP, "1h", START_MS, END_MS, restore=True)
        assert repaired.rows_written == sum(len(before[p].loc[:"2024-02-29 23:00"]) for p in PRICES)
        assert fapi_requests(sim) == asked
        for price in PRICES:
            key = "1h" if price == "last" else f"{price}:1h"
            kinds = {r.kind for r in await store.coverage(instrument.id, key) if r.start_ms < feb[1]}
            assert kinds == {"data"}, key
            frame = await store.load_frame(instrument.id, key, START_MS, END_MS)
            pd.testing.assert_frame_equal(frame, before[price], obj=price)
