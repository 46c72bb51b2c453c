"""Perpetual trades end to end: real ccxt binanceusdm ``fetch_trades(fromId)`` against the
simulator's ``/fapi/v1/aggTrades``, on PostgreSQL and SQLite.

Random ranges equal the simulator's aggTrades exactly (nothing missing, nothing twice), a second
run asks nothing, and each request is counted at the futures weight (20, not spot's 4) by both
the collector's futures limiter and the simulator's futures budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from data_collector.backfill.exchange import ExchangeClient, ExchangeSettings
from data_collector.backfill.trades_fetch import FAPI_AGG_TRADES_WEIGHT, fetch_trades_from
from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.backfill.test_perpetuals_e2e import on_backend, random_ranges
from tests.backfill.test_trades_e2e import truth
from tests.support.backfill import assert_again_asks_nothing, assert_trades_exactly_covered, config_for

PERPS = ["BTC/USDT:USDT", "SOL/USDT:USDT"]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    # A large futures budget: at Binance's 2,400 a minute, 20-weight pages go 2 a second.
    async with SimulatedExchange(
        symbols=["BTC/USDT"], perpetuals=PERPS, seed=23, futures_weight_limit=1_000_000
    ) as exchange:
        yield exchange


def perp_trades_config(base: dict[str, Any], sim: SimulatedExchange) -> dict[str, Any]:
    futures = {**sim.futures_exchange_config(), "timeout_s": 2.0}
    return config_for(base, sim, symbols=PERPS, data_types=["trades"], futures_exchange=futures)


def fapi_agg_requests(sim: SimulatedExchange) -> int:
    return int(sim.stats()["endpoints"].get("fapi/v1/aggTrades", 0))


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_perpetual_trades_equal_the_truth_and_a_second_run_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange, tmp_path: Path, backend: str
) -> None:
    config = on_backend(perp_trades_config(base_config, sim), backend, tmp_path)
    ranges = random_ranges(sim, 13, (2 * DAY_MS, 20 * DAY_MS), (HOUR_MS // 2, 2 * HOUR_MS))
    async with OptimizedDataCollector(config) as collector:
        for start, end in ranges:
            report = await collector.collect(start=start, end=end)
            assert report.ok, report.summary()
            assert set(report.rows_by_type) == {"trades"}
            for symbol in PERPS:
                inst = await collector.instrument(symbol)
                assert inst.exchange == "sim-binanceusdm"
                want = truth(sim, symbol, start, end)
                assert len(want) > 500
                assert await collector.store.load_trades(inst.id, start, end) == want, (symbol, start, end)
        assert fapi_agg_requests(sim) > 0
        await assert_again_asks_nothing(collector, ranges, lambda: fapi_agg_requests(sim))
        await assert_trades_exactly_covered(collector, PERPS)


async def test_a_perpetual_trades_page_weighs_20_on_both_sides(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    async with OptimizedDataCollector(perp_trades_config(base_config, sim)) as collector:
        futures = await collector.client_for(PERPS[0])
        # Frozen, the server's minute cannot roll over between the two readings.
        sim.clock.freeze(sim.clock.now_ms())
        ours, theirs = futures.limiter.stats.weight, sim.stats()["futures"]["used_weight_1m"]
        page = await fetch_trades_from(futures, PERPS[0], 1_000, 1000)
        assert len(page) == 1000
        assert futures.limiter.stats.weight - ours == FAPI_AGG_TRADES_WEIGHT == 20
        assert sim.stats()["futures"]["used_weight_1m"] - theirs == 20


@pytest.mark.parametrize(("market", "weight"), [("spot", 20 + 1), ("usdm", 1 + 1)])
async def test_opening_a_client_charges_what_the_venue_charges(
    sim: SimulatedExchange, market: str, weight: int
) -> None:
    """Opening loads the markets (one exchangeInfo: 20 on spot, 1 on USDⓈ-M futures) and reads the
    clock (one time: 1 on both). The client charges its budget what the venue's budget counts."""
    config = sim.exchange_config() if market == "spot" else sim.futures_exchange_config()
    settings = ExchangeSettings(id=config["id"], urls=config["urls"], options=config["options"])
    stats = (lambda: sim.stats()) if market == "spot" else (lambda: sim.stats()["futures"])
    # Frozen, the server's minute cannot roll over between the two readings.
    sim.clock.freeze(sim.clock.now_ms())
    theirs = stats()["used_weight_1m"]
    async with ExchangeClient(settings) as client:
        assert client.futures is (market == "usdm")
        assert client.limiter.stats.weight == weight
    assert stats()["used_weight_1m"] - theirs == weight
