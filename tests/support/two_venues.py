"""Binance (spot and USDⓈ-M) and OKX (spot and swap) on one simulator, as ``venues:`` configs:
the venues' sections, the truth every run of them must store, and their candle request counts.

Shared by the in-process tests (tests/backfill/test_okx_backfill.py) and the distributed ones
(tests/distributed/test_venues_jobs.py). The simulator lists BTC/USDT (and ETH/USDT) spot,
BTC/USDT:USDT on Binance's futures port and BTC/USDT as an OKX swap.
"""

from __future__ import annotations

from typing import Any

from data_collector.markets import CODE_TIMEFRAMES
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import floats, pg_rows
from tests.support.okx_truth import model_candles

OKX_SYMBOLS = ["BTC/USDT", "BTC/USDT:USDT"]
BINANCE_SYMBOLS = ["BTC/USDT", "BTC/USDT:USDT"]
CANDLE_ENDPOINTS = ("market/candles", "market/history-candles")


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
    return {
        **sim.exchange_config(),
        "timeout_s": 2.0,
        "symbols": BINANCE_SYMBOLS,
        "futures_exchange": futures,
    }


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


def truth_rows(sim: SimulatedExchange, timeframes: list[str], start: int, end: int) -> list[tuple[Any, ...]]:
    """Every candle the four venues' pairs must store, as ``pg_rows`` gives them, sorted."""
    out: list[tuple[Any, ...]] = []
    for tf in timeframes:
        out += [("sim-binance", "BTC/USDT", tf, *floats(k)) for k in sim.klines("BTC/USDT", tf, start, end)]
        perp = sim.usdm.klines("BTC/USDT:USDT", tf, start, end)
        out += [("sim-binanceusdm", "BTC/USDT:USDT", tf, *floats(k)) for k in perp]
        for symbol in OKX_SYMBOLS:
            out += [("sim-okx", symbol, tf, *c) for c in model_candles(sim, symbol, tf, start, end)]
    return sorted(out)


async def stored_rows(schema: str) -> list[tuple[Any, ...]]:
    rows = [
        (r[0], r[1], CODE_TIMEFRAMES[r[2]], r[3], *(float(x) for x in r[4:])) for r in await pg_rows(schema)
    ]
    return sorted(rows)


def binance_candle_requests(sim: SimulatedExchange) -> int:
    endpoints = sim.stats()["endpoints"]
    return int(endpoints.get("klines", 0)) + int(endpoints.get("fapi/v1/klines", 0))
