"""What a page proves, end to end: real ccxt against the simulator, real PostgreSQL (issue 11).

* A fresh listing on every timeframe: the candle that contains the listing opens before it and
  must be stored; ``'empty'`` coverage ends exactly at that candle's open.
* An answer cut short at the server's cap proves nothing after its last candle: with a page limit
  above what the exchange serves, the rest of each page is fetched in the same run, and a page
  limit above the exchange's documented maximum is a config error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from data_collector.backfill.plan import align_up
from data_collector.errors import ConfigError
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS, TIMEFRAMES, candle_open_ms, next_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.limits import SimClock
from tests.support.backfill import (
    RANGE_START_MS,
    config_for,
    count_rows,
    floats,
    klines_requests,
    local_iso,
    run_script,
    stored_equals_sim,
    write_config,
)

#: Every timeframe from 1m to 1M the simulator serves (1s has no listing candle to lose).
LISTING_TIMEFRAMES = [tf for tf in TIMEFRAMES if tf != "1s"]


@pytest.fixture
async def fresh() -> AsyncIterator[tuple[SimulatedExchange, int]]:
    """A simulator listing NEW/USDT at 13:37 UTC about ten weeks ago, and that listing time.

    13:37 lies inside every candle above 1m rather than at its open; the day is never a 1st, so
    the month candle opens a day or more before the listing.
    """
    listing = candle_open_ms(SimClock().now_ms() - 70 * DAY_MS, "1d") + 13 * HOUR_MS + 37 * MINUTE_MS
    if candle_open_ms(listing, "1M") == candle_open_ms(listing, "1d"):
        listing += DAY_MS
    async with SimulatedExchange(
        symbols=["NEW/USDT"], seed=13, listings={"NEW/USDT": listing}, gaps={}
    ) as sim:
        yield sim, listing


async def test_fresh_listing_keeps_the_candle_that_contains_it_on_every_timeframe(
    base_config: dict[str, Any], fresh: tuple[SimulatedExchange, int]
) -> None:
    sim, listing = fresh
    # From long before the listing to two days after it: on every timeframe the range holds
    # the before-listing part, the listing candle and (up to 1d) the candles after it.
    start, end = listing - 60 * DAY_MS, listing + 2 * DAY_MS
    config = config_for(base_config, sim, symbols=["NEW/USDT"], timeframes=LISTING_TIMEFRAMES)
    async with OptimizedDataCollector(config) as collector:
        report = await collector.collect(start=start, end=end)
        assert report.ok, report.summary()
        inst = await collector.instrument("NEW/USDT")
        for tf in LISTING_TIMEFRAMES:
            listing_open = candle_open_ms(listing, tf)
            want = [floats(k) for k in sim.klines("NEW/USDT", tf, start, end)]
            assert want and want[0][0] == listing_open, tf  # the truth has the candle
            got = await collector.store.load(inst.id, tf, start, end)
            assert got == want, tf  # 0 lost, 0 duplicated, same values
            gaps = await collector.find_gaps("NEW/USDT", tf, start, end)
            # 'empty' exactly where the exchange has nothing: before the listing candle.
            assert [(g.start_ms, g.end_ms, g.kind) for g in gaps] == [
                (align_up(start, tf), listing_open, "exchange")
            ], tf
        before = klines_requests(sim)
        again = await collector.collect(start=start, end=end)
        assert again.ok and again.requests == 0 and klines_requests(sim) == before


async def test_simulator_rest_serves_the_listing_candle_from_any_start_up_to_its_open(
    base_config: dict[str, Any], fresh: tuple[SimulatedExchange, int]
) -> None:
    sim, listing = fresh
    config = config_for(base_config, sim, symbols=["NEW/USDT"], timeframes=["1h"])
    async with OptimizedDataCollector(config) as collector:
        exchange = collector.client.exchange
        for tf in LISTING_TIMEFRAMES:
            listing_open = candle_open_ms(listing, tf)
            truth = sim.klines("NEW/USDT", tf, listing_open, next_open_ms(listing_open, tf))
            for since in (0, listing_open - DAY_MS, listing_open):
                rows = await exchange.fetch_ohlcv("NEW/USDT", tf, since=since, limit=1)
                assert [floats(r) for r in rows] == [floats(k) for k in truth], (tf, since)
            if listing_open < listing:
                # Binance: startTime after a candle's open skips that candle.
                rows = await exchange.fetch_ohlcv("NEW/USDT", tf, since=listing_open + 1, limit=1)
                assert rows and rows[0][0] == next_open_ms(listing_open, tf), tf


async def test_answers_cut_at_the_server_cap_are_fetched_to_the_end(base_config: dict[str, Any]) -> None:
    # The server answers at most 300 klines while the collector asks for 1000 (ccxt's documented
    # Binance maximum, so the config passes): every answer is cut short. Two maintenance windows
    # lie at the end of a 1000-candle page, one ending exactly on it and one across it, so the
    # cut answers and the real holes meet at the same places.
    start, end = RANGE_START_MS, RANGE_START_MS + 3 * DAY_MS
    gaps = [
        (start + 1850 * MINUTE_MS, start + 2000 * MINUTE_MS),
        (start + 2950 * MINUTE_MS, start + 3100 * MINUTE_MS),
    ]
    async with SimulatedExchange(
        symbols=["BTC/USDT"], seed=21, gaps={"BTC/USDT": gaps}, klines_limit_max=300
    ) as sim:
        config = config_for(base_config, sim, symbols=["BTC/USDT"], timeframes=["1m", "1h"])
        async with OptimizedDataCollector(config) as collector:
            report = await collector.collect(start=start, end=end)
            assert report.ok, report.summary()
            await stored_equals_sim(collector, sim, start, end, ["BTC/USDT"], ["1m", "1h"])
            found = await collector.find_gaps("BTC/USDT", "1m", start, end)
            assert [(g.start_ms, g.end_ms, g.kind) for g in found] == [(*g, "exchange") for g in gaps]
            hourly = await collector.find_gaps("BTC/USDT", "1h", start, end)
            assert [(g.start_ms, g.end_ms, g.kind) for g in hourly] == [
                (start + 31 * HOUR_MS, start + 33 * HOUR_MS, "exchange"),
                (start + 50 * HOUR_MS, start + 51 * HOUR_MS, "exchange"),
            ]
            before = klines_requests(sim)
            again = await collector.collect(start=start, end=end)
            assert again.ok and again.requests == 0 and klines_requests(sim) == before
            repaired = await collector.repair_gaps("BTC/USDT", "1m", start, end)
            assert repaired.ok and repaired.requests == 0


async def test_page_limit_above_the_exchange_maximum_is_a_config_error(
    base_config: dict[str, Any], pg_schema: str, tmp_path: Path
) -> None:
    # The run: 10 days of BTC/USDT 1m with ohlcv_page_limit 5000 stored 3,000 of 14,400
    # candles and exited 0. Binance (ccxt's fetchOHLCV feature) serves at most 1000.
    async with SimulatedExchange(symbols=["BTC/USDT"], seed=5, gaps={}) as sim:
        start, end = RANGE_START_MS, RANGE_START_MS + 10 * DAY_MS
        config = config_for(
            base_config,
            sim,
            symbols=["BTC/USDT"],
            timeframes=["1m"],
            start=local_iso(start),
            end=local_iso(end),
            exchange={"ohlcv_page_limit": 5000},
        )
        path = write_config(tmp_path / "config.yaml", config)
        code, out, err = await run_script("--config", str(path), cwd=tmp_path)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, out + err
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "exchange.ohlcv_page_limit" in lines[0] and "1000" in lines[0], lines[0]
        assert await count_rows(pg_schema) == 0
        with pytest.raises(ConfigError, match="ohlcv_page_limit"):
            async with OptimizedDataCollector(config):
                pass
