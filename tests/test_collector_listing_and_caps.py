"""What a page proves, end to end: real ccxt against the simulator, real PostgreSQL (issue 11).

* A fresh listing on every timeframe: the candle that contains the listing opens before it and
  must be stored; ``'empty'`` coverage ends exactly at that candle's open.
* An answer cut short at the server's cap proves nothing after its last candle: with a page limit
  above what the exchange serves, the rest of each page is fetched in the same run, and a page
  limit above the exchange's documented maximum is a config error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from data_collector.backfill import align_up
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS, TIMEFRAMES, candle_open_ms, next_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.limits import SimClock
from tests.test_collector_e2e import (
    config_for,
    floats,
    klines_requests,
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
