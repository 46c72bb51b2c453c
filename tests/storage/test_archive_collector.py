"""The Parquet tier through the collector: collect, archive with prune, collect again, read back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from data_collector.markets import DAY_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import RANGE_START_MS, config_for, floats, klines_requests


async def test_a_rerun_after_prune_fetches_nothing_and_load_ohlcv_spans_both_tiers(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    # RANGE_START_MS is 40 days back, so these 3 days lie before the current month: closed.
    start, end = RANGE_START_MS, RANGE_START_MS + 3 * DAY_MS
    this_month = datetime.now(UTC).strftime("%Y-%m-01")
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=3, gaps={}) as sim:
        config = config_for(
            base_config, sim, symbols=["SOL/USDT"], timeframes=["1h"], archive={"path": str(tmp_path)}
        )
        async with OptimizedDataCollector(config) as collector:
            assert (await collector.collect(start=start, end=end)).ok
            report = await collector.archive(older_than=this_month, prune=True)
            assert report.months_pruned >= 1 and report.failed == [], report.summary()
            instrument = await collector.instrument("SOL/USDT")
            assert await collector.store.load(instrument.id, "1h", start, end) == []
            before = klines_requests(sim)
            again = await collector.collect(start=start, end=end)
            assert again.ok and again.requests == 0 and klines_requests(sim) == before
            gaps = await collector.find_gaps("SOL/USDT", "1h", start, end)
            assert [(g.start_ms, g.end_ms, g.kind) for g in gaps] == [(start, end, "archived")]
            frame = await collector.load_ohlcv("SOL/USDT", "1h", start, end)
    want = [floats(k) for k in sim.klines("SOL/USDT", "1h", start, end)]
    got = [
        (int(t.timestamp() * 1000), *map(float, row))
        for t, row in zip(frame.index, frame.values, strict=True)
    ]
    assert got == want
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.is_unique


async def test_repair_gaps_with_restore_brings_archived_ranges_back_into_the_database(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    start, end = RANGE_START_MS, RANGE_START_MS + 3 * DAY_MS
    this_month = datetime.now(UTC).strftime("%Y-%m-01")
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=3, gaps={}) as sim:
        config = config_for(
            base_config, sim, symbols=["SOL/USDT"], timeframes=["1h"], archive={"path": str(tmp_path)}
        )
        async with OptimizedDataCollector(config) as collector:
            assert (await collector.collect(start=start, end=end)).ok
            instrument = await collector.instrument("SOL/USDT")
            before = await collector.store.load(instrument.id, "1h", start, end)
            report = await collector.archive(older_than=this_month, prune=True)
            assert report.months_pruned >= 1 and report.failed == [], report.summary()
            assert await collector.store.load(instrument.id, "1h", start, end) == []
            requests = klines_requests(sim)
            repaired = await collector.repair_gaps("SOL/USDT", "1h", start, end, restore=True)
            # The rows come back from the Parquet tier, equal, and nothing is fetched for them.
            assert repaired.ok and repaired.rows_written == len(before) and klines_requests(sim) == requests
            assert await collector.store.load(instrument.id, "1h", start, end) == before
            gaps = await collector.find_gaps("SOL/USDT", "1h", start, end)
            assert gaps == []
            coverage = await collector.store.coverage(instrument.id, "1h")
            assert {r.kind for r in coverage if r.start_ms < end and r.end_ms > start} == {"data"}
