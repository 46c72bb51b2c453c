"""Perpetuals end to end: real ccxt binanceusdm against the simulator's futures, real PostgreSQL and SQLite.

Candles of every price type and funding rates over random ranges equal the simulator's truth,
a second run asks nothing, and bad input gets one line.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from data_collector.errors import InvalidSymbolError, UsageError
from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.storage.funding import FundingRate
from tests.support.backfill import config_for, floats

SPOT = ["BTC/USDT"]
PERPS = ["BTC/USDT:USDT", "ETH/USDT:USDT"]
TIMEFRAMES = ["1h", "4h"]
ALL_TYPES = ["ohlcv", "mark_ohlcv", "index_ohlcv", "premium_ohlcv", "funding_rates"]
PRICES = {"ohlcv": "last", "mark_ohlcv": "mark", "index_ohlcv": "index", "premium_ohlcv": "premium"}


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(
        symbols=["BTC/USDT", "ETH/USDT"], perpetuals=PERPS, seed=11, futures_weight_limit=2400
    ) as exchange:
        yield exchange


def perp_config(base: dict[str, Any], sim: SimulatedExchange, **extra: Any) -> dict[str, Any]:
    futures = {**sim.futures_exchange_config(), "timeout_s": 2.0, "ohlcv_page_limit": 499}
    return config_for(
        base,
        sim,
        symbols=[*SPOT, *PERPS],
        timeframes=TIMEFRAMES,
        data_types=ALL_TYPES,
        futures_exchange=futures,
        **extra,
    )


def on_backend(config: dict[str, Any], backend: str, tmp_path: Path) -> dict[str, Any]:
    """``config`` on PostgreSQL (as given) or on a fresh SQLite file."""
    if backend == "sqlite":
        return {**config, "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'perp.db'}"}}
    return config


def random_ranges(
    sim: SimulatedExchange, seed: int, ago: tuple[int, int], length: tuple[int, int]
) -> list[tuple[int, int]]:
    """Three ranges starting ``ago`` before now (at a random ms) and lasting ``length``, up to now."""
    rng = random.Random(seed)
    now = sim.clock.now_ms()
    out = []
    for _ in range(3):
        start = now - rng.randrange(*ago) + rng.randrange(HOUR_MS)
        out.append((start, min(now, start + rng.randrange(*length))))
    return out


def funding_truth(sim: SimulatedExchange, symbol: str, start_ms: int, end_ms: int) -> list[FundingRate]:
    rows = sim.usdm.funding_history(symbol, start_ms, end_ms - 1)
    return [(r["fundingTime"], float(r["fundingRate"]), float(r["markPrice"])) for r in rows]


def fapi_requests(sim: SimulatedExchange) -> int:
    endpoints = sim.stats()["endpoints"]
    names = ("klines", "markPriceKlines", "indexPriceKlines", "premiumIndexKlines", "fundingRate")
    return sum(int(endpoints.get(f"fapi/v1/{n}", 0)) for n in names)


async def check_truth(
    collector: OptimizedDataCollector, sim: SimulatedExchange, start: int, end: int
) -> None:
    for symbol in PERPS:
        inst = await collector.instrument(symbol)
        assert inst.exchange == "sim-binanceusdm"
        for price in PRICES.values():
            for tf in TIMEFRAMES:
                key = tf if price == "last" else f"{price}:{tf}"
                want = [floats(k) for k in sim.usdm.klines(symbol, tf, start, end, price=price)]
                got = await collector.store.load(inst.id, key, start, end)
                assert want and got == want, (symbol, key, start, end)
        want_f = funding_truth(sim, symbol, start, end)
        got_f = await collector.store.load_funding(inst.id, start, end)
        assert want_f and got_f == want_f, (symbol, start, end)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_every_perpetual_type_equals_the_truth_and_a_second_run_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange, tmp_path: Path, backend: str
) -> None:
    config = on_backend(perp_config(base_config, sim), backend, tmp_path)
    ranges = random_ranges(sim, 7, (5 * DAY_MS, 60 * DAY_MS), (2 * DAY_MS, 8 * DAY_MS))
    async with OptimizedDataCollector(config) as collector:
        for start, end in ranges:
            report = await collector.collect(start=start, end=end)
            failed = {k: p.error for k, p in report.pairs.items() if p.status == "failed"}
            # The spot symbol has no funding nor mark candles: those pairs fail with one line each.
            assert set(failed) == {
                f"BTC/USDT {k}"
                for k in ["funding_rates"]
                + [f"{p}:{tf}" for p in ("mark", "index", "premium") for tf in TIMEFRAMES]
            }, failed
            assert all("spot symbol" in str(e) and "\n" not in str(e) for e in failed.values())
            assert set(report.rows_by_type) >= set(ALL_TYPES), report.rows_by_type
            await check_truth(collector, sim, start, end)
        before = fapi_requests(sim)
        assert before > 0
        for start, end in ranges:
            again = await collector.collect(start=start, end=end)
            assert again.requests == 0 and again.rows_written == 0, again.summary()
        assert fapi_requests(sim) == before
        frame = await collector.load_funding(PERPS[0], *ranges[0])
        assert list(frame.columns) == ["rate", "mark_price"] and len(frame) > 0
        mark = await collector.load_ohlcv(PERPS[0], "1h", *ranges[0], price="mark")
        assert len(mark) > 0


async def test_perpetuals_have_their_own_rate_limiter_and_label(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    async with OptimizedDataCollector(perp_config(base_config, sim)) as collector:
        spot = await collector.client_for("BTC/USDT")
        futures = await collector.client_for("BTC/USDT:USDT")
        assert spot.limiter is not futures.limiter
        assert 2300 < futures.limiter.budget <= 2400 < spot.limiter.budget
        assert (await collector.instrument("BTC/USDT")).exchange == "sim-binance"


async def test_an_unlisted_perpetual_fails_with_one_line(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    async with OptimizedDataCollector(perp_config(base_config, sim)) as collector:
        now = sim.clock.now_ms()
        report = await collector.collect(
            symbols=["BTC/USDT:USDT", "DOGE/USDT:USDT"],
            start=now - DAY_MS,
            end=now,
            data_types=["funding_rates"],
        )
        bad = report.pairs["DOGE/USDT:USDT funding_rates"]
        assert bad.status == "failed" and "DOGE/USDT:USDT" in str(bad.error) and "\n" not in str(bad.error)
        assert report.pairs["BTC/USDT:USDT funding_rates"].status == "done"
        with pytest.raises(InvalidSymbolError, match="DOGE/USDT:USDT"):
            await collector.collect(symbols=["DOGE/USDT:USDT"], start=now - DAY_MS, end=now)


def oi_truth(sim: SimulatedExchange, symbol: str, period: str, start_ms: int, end_ms: int) -> list[Any]:
    rows = sim.usdm.open_interest_history(symbol, period, start_ms, end_ms - 1)
    return [(r["timestamp"], float(r["sumOpenInterest"]), float(r["sumOpenInterestValue"])) for r in rows]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_open_interest_equals_the_truth_within_30_days_and_refuses_beyond(
    base_config: dict[str, Any], sim: SimulatedExchange, tmp_path: Path, backend: str
) -> None:
    config = {
        **perp_config(base_config, sim),
        "data_types": ["open_interest"],
        "timeframes": ["5m", "1h", "1m"],
    }
    config = on_backend(config, backend, tmp_path)
    now = sim.clock.now_ms()
    ranges = random_ranges(sim, 3, (3 * DAY_MS, 28 * DAY_MS), (DAY_MS, 4 * DAY_MS))
    async with OptimizedDataCollector(config) as collector:
        for start, end in ranges:
            report = await collector.collect(symbols=PERPS, start=start, end=end)
            failed = {k: str(p.error) for k, p in report.pairs.items() if p.status == "failed"}
            assert set(failed) == {f"{s} oi:1m" for s in PERPS}, failed
            assert all("no 1m period" in e for e in failed.values())
            for symbol in PERPS:
                inst = await collector.instrument(symbol)
                for period in ("5m", "1h"):
                    want = oi_truth(sim, symbol, period, start, end)
                    got = await collector.store.load_open_interest(inst.id, period, start, end)
                    assert want and got == want, (symbol, period, start, end)
        before = int(sim.stats()["endpoints"].get("futures/data/openInterestHist", 0))
        assert before > 0
        for start, end in ranges:
            again = await collector.collect(symbols=PERPS, start=start, end=end)
            assert again.requests == 0 and again.rows_written == 0, again.summary()
        frame = await collector.load_open_interest(PERPS[0], "1h", *ranges[0])
        assert list(frame.columns) == ["amount", "value"] and len(frame) > 0
        written = await collector.store.load_open_interest(
            (await collector.instrument(PERPS[1])).id, "5m", 0, 2**62
        )
        with pytest.raises(UsageError, match=r"only the last 30 days.*start at .* or later") as refused:
            await collector.collect(symbols=PERPS, start=now - 31 * DAY_MS, end=now - 20 * DAY_MS)
        assert "\n" not in str(refused.value)
        # Nothing was asked or written.
        assert int(sim.stats()["endpoints"].get("futures/data/openInterestHist", 0)) == before
        after = await collector.store.load_open_interest(
            (await collector.instrument(PERPS[1])).id, "5m", 0, 2**62
        )
        assert after == written
