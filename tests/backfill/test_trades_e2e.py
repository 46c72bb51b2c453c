"""Trades end to end: real ccxt ``fetch_trades(fromId)`` against the simulator, real PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.storage import Trade
from tests.support.backfill import assert_again_asks_nothing, assert_trades_exactly_covered, config_for

SYMBOLS = ["SOL/USDT", "ETH/USDT"]


def truth(sim: SimulatedExchange, symbol: str, start_ms: int, end_ms: int) -> list[Trade]:
    return [
        (t["a"], t["T"], float(t["p"]), float(t["q"]), t["f"], t["l"], t["m"])
        for t in sim.agg_trades(symbol, start_ms, end_ms)
    ]


def agg_requests(sim: SimulatedExchange) -> int:
    return int(sim.stats()["endpoints"].get("aggTrades", 0))


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    now = SimulatedExchange(symbols=SYMBOLS, seed=3).clock.now_ms()
    # A maintenance window of three hours, ten days ago: hour windows without any trade.
    gap_start = (now - 10 * DAY_MS) // HOUR_MS * HOUR_MS + 17 * MINUTE_MS
    async with SimulatedExchange(
        symbols=SYMBOLS, seed=3, gaps={"SOL/USDT": [(gap_start, gap_start + 3 * HOUR_MS)]}
    ) as exchange:
        yield exchange


def trades_config(base_config: dict[str, Any], sim: SimulatedExchange) -> dict[str, Any]:
    return config_for(base_config, sim, symbols=SYMBOLS, data_types=["trades"])


async def stored(collector: OptimizedDataCollector, symbol: str, start_ms: int, end_ms: int) -> list[Trade]:
    inst = await collector.instrument(symbol)
    return await collector.store.load_trades(inst.id, start_ms, end_ms)


async def test_random_ranges_equal_the_truth_and_a_second_run_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    rng = random.Random(5)
    now = sim.clock.now_ms()
    gap = sim.gaps("SOL/USDT")[0]
    ranges = [(gap[0] - 2 * HOUR_MS + 12_345, gap[1] + HOUR_MS + 777)]  # across the maintenance window
    for _ in range(3):
        start = now - rng.randrange(2 * DAY_MS, 20 * DAY_MS)
        ranges.append((start, start + rng.randrange(HOUR_MS // 2, 3 * HOUR_MS)))
    async with OptimizedDataCollector(trades_config(base_config, sim)) as collector:
        for start, end in ranges:
            report = await collector.collect(start=start, end=end)
            assert report.ok, report.summary()
            assert set(report.rows_by_type) == {"trades"}
            for symbol in SYMBOLS:
                want = truth(sim, symbol, start, end)
                assert len(want) > 500
                assert await stored(collector, symbol, start, end) == want, (symbol, start, end)
        # All of it again, and the union: nothing more to fetch.
        await assert_again_asks_nothing(collector, ranges, lambda: agg_requests(sim))
        await assert_trades_exactly_covered(collector, SYMBOLS)


async def test_extending_a_range_fetches_only_the_new_ids(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    now = sim.clock.now_ms()
    start, mid, end = now - 3 * DAY_MS, now - 3 * DAY_MS + 2 * HOUR_MS, now - 3 * DAY_MS + 3 * HOUR_MS
    async with OptimizedDataCollector(trades_config(base_config, sim)) as collector:
        first = await collector.collect(symbols=["SOL/USDT"], start=mid, end=end)
        assert first.ok, first.summary()
        second = await collector.collect(symbols=["SOL/USDT"], start=start, end=end)
        assert second.ok, second.summary()
        assert second.rows_skipped == 0 and second.rows_written == len(truth(sim, "SOL/USDT", start, mid))
        assert await stored(collector, "SOL/USDT", start, end) == truth(sim, "SOL/USDT", start, end)


async def test_malformed_pages_are_retried_never_written(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    sim.set_faults(malformed_rate=0.3, error_rate=0.1, endpoint="aggTrades")
    start = sim.clock.now_ms() - 4 * DAY_MS
    end = start + 2 * HOUR_MS
    async with OptimizedDataCollector(trades_config(base_config, sim)) as collector:
        report = await collector.collect(symbols=["ETH/USDT"], start=start, end=end)
        assert report.ok, report.summary()
        assert report.malformed_pages > 0 and report.retries > 0
        assert await stored(collector, "ETH/USDT", start, end) == truth(sim, "ETH/USDT", start, end)


async def test_all_data_types_of_one_symbol_concurrently_with_rows_per_type(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    config = config_for(
        base_config,
        sim,
        symbols=SYMBOLS,
        timeframes=["1m", "1h"],
        data_types=["ohlcv", "trades", "funding_rates"],
    )
    start = sim.clock.now_ms() - 5 * DAY_MS // HOUR_MS * HOUR_MS
    start -= start % HOUR_MS
    end = start + 2 * HOUR_MS
    async with OptimizedDataCollector(config) as collector:
        report = await collector.collect_all_data_concurrent(
            symbol="SOL/USDT", start_date=start, end_date=end
        )
        # Funding exists for perpetuals only: that pair fails with one line, the others are done.
        assert list(report.failures) == ["SOL/USDT funding_rates"]
        assert "perpetual" in report.failures["SOL/USDT funding_rates"]
        assert "\n" not in report.failures["SOL/USDT funding_rates"]
        assert report.rows_by_type == {"ohlcv": 120 + 2, "trades": len(truth(sim, "SOL/USDT", start, end))}
        assert "trades" in report.summary()
        frame = await collector.load_trades("SOL/USDT", start, end)
        assert len(frame) == report.rows_by_type["trades"] and str(frame.index.tz) == "UTC"
