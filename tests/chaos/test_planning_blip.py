"""A PostgreSQL blip while a run is being planned (issue 11, defect 4).

The collector reaches the machine's PostgreSQL through the fault proxy, so the outage is the
proxy's alone: it resets every open connection and refuses (RST) new ones for about 1.7 s, then
lets them through again. The shared server is never stopped.

Before the fix the planning reads (``ensure_instrument``, ``coverage``) were not retried: one
refused connection failed every pair of the run at once. Now they go through the same transient
retry policy as the writes, so every pair completes and the stored candles equal the simulator's
truth exactly. A permanent error in planning still fails at once, without a retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest

from data_collector.markets import DAY_MS, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.chaos.helpers import Candles, stored_candles
from tests.chaos.proxy import FaultProxy
from tests.support.services import PG_ADMIN_DSN, PG_URL

SYMBOLS = ["BTC/USDT", "ETH/USDT"]
TIMEFRAMES = ["1m", "1h"]
#: About as long as the outage the fault run found; shorter than the retry policy's patience.
OUTAGE_S = 1.7
DAYS = 2

MakeProxy = Callable[[str, int], Awaitable[FaultProxy]]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=SYMBOLS, seed=23, gaps={}) as exchange:
        yield exchange


@pytest.fixture
async def proxy(make_proxy: MakeProxy) -> FaultProxy:
    """The fault proxy in front of the shared PostgreSQL (the test's own schema lives there)."""
    host, port = PG_URL.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return await make_proxy(host, int(port))


def _config(base_config: dict[str, Any], sim: SimulatedExchange, proxy: FaultProxy) -> dict[str, Any]:
    database = {
        **base_config["database"],
        "url": proxy.url(PG_URL),
        "connect_timeout_s": 2,
        "command_timeout_s": 5,
    }
    return {
        **base_config,
        "database": database,
        "exchange": {**sim.exchange_config(), "timeout_s": 2.0},
        "symbols": SYMBOLS,
        "timeframes": TIMEFRAMES,
        "performance": {"api_rate_limit": 100_000},
    }


def _range(sim: SimulatedExchange) -> tuple[int, int]:
    start_ms = candle_open_ms(sim.clock.now_ms() - (DAYS + 2) * DAY_MS, "1d")
    return start_ms, start_ms + DAYS * DAY_MS


def _truth(sim: SimulatedExchange, start_ms: int, end_ms: int) -> Candles:
    return {
        (symbol, tf, int(k[0])): tuple(float(x) for x in k[1:6])
        for symbol in SYMBOLS
        for tf in TIMEFRAMES
        for k in sim.klines(symbol, tf, start_ms, end_ms)
    }


async def _stored(schema: str) -> tuple[Candles, int]:
    """Every stored candle (read directly, not through the proxy) and the number of rows."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return await stored_candles(conn, schema)
    finally:
        await conn.close()


@contextmanager
def _outage(proxy: FaultProxy, seconds: float) -> Iterator[dict[str, int]]:
    """Reset every connection and refuse new ones now, and let them through after ``seconds``.

    Yields a dict whose ``refused`` entry, once the block ends, counts the connections the
    proxy refused during the outage: proof that the outage really met the collector.
    """
    proxy.reset_new = True
    proxy.reset_all()
    refused_from = proxy.stats.resets
    counts = {"refused": 0}

    def lift() -> None:
        proxy.reset_new = False
        counts["refused"] = proxy.stats.resets - refused_from

    handle = asyncio.get_running_loop().call_later(seconds, lift)
    try:
        yield counts
    finally:
        handle.cancel()
        if proxy.reset_new:
            lift()


@pytest.mark.parametrize("hit", ["instruments", "coverage"])
async def test_a_blip_during_planning_loses_nothing(
    base_config: dict[str, Any], pg_schema: str, sim: SimulatedExchange, proxy: FaultProxy, hit: str
) -> None:
    start_ms, end_ms = _range(sim)
    async with OptimizedDataCollector(_config(base_config, sim, proxy)) as collector:
        if hit == "coverage":
            # Instruments known already: the outage meets the first coverage read instead.
            for symbol in SYMBOLS:
                await collector.instrument(symbol)
        with _outage(proxy, OUTAGE_S) as outage:
            report = await collector.collect(start=start_ms, end=end_ms)
    assert outage["refused"] > 0, "the outage never met the collector"
    assert report.ok, report.summary()
    assert {key: pair.status for key, pair in report.pairs.items()} == {
        f"{s} {tf}": "done" for s in SYMBOLS for tf in TIMEFRAMES
    }
    truth = _truth(sim, start_ms, end_ms)
    stored, rows = await _stored(pg_schema)
    assert rows == len(stored) == len(truth)  # 0 duplicated
    assert stored == truth  # 0 lost, 0 different


async def test_a_blip_during_gap_reads_is_retried(
    base_config: dict[str, Any], pg_schema: str, sim: SimulatedExchange, proxy: FaultProxy
) -> None:
    """``find_gaps`` and ``load_ohlcv`` (the reads ``repair_gaps`` and users make) ride out a blip."""
    start_ms, end_ms = _range(sim)
    async with OptimizedDataCollector(_config(base_config, sim, proxy)) as collector:
        assert (await collector.collect(start=start_ms, end=end_ms)).ok
        with _outage(proxy, OUTAGE_S) as outage:
            gaps = await collector.find_gaps("BTC/USDT", "1m", start_ms, end_ms)
        assert outage["refused"] > 0, "the outage never met the collector"
        with _outage(proxy, OUTAGE_S) as outage:
            frame = await collector.load_ohlcv("ETH/USDT", "1h", start_ms, end_ms)
        assert outage["refused"] > 0, "the outage never met the collector"
    assert gaps == []
    want = sim.klines("ETH/USDT", "1h", start_ms, end_ms)
    assert len(frame) == len(want)
    assert [float(x) for x in frame["close"]] == [float(k[4]) for k in want]


async def test_a_permanent_error_in_planning_fails_fast(
    base_config: dict[str, Any],
    pg_schema: str,
    sim: SimulatedExchange,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A missing table is no blip: every pair fails at once, with no retry and nothing fetched."""
    start_ms, end_ms = _range(sim)
    async with OptimizedDataCollector(_config(base_config, sim, proxy)) as collector:
        for symbol in SYMBOLS:
            await collector.instrument(symbol)
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP TABLE "{pg_schema}".coverage')
        finally:
            await conn.close()
        requests_before = sim.stats()["requests"]
        with caplog.at_level(logging.DEBUG, logger="data_collector"):
            report = await collector.collect(start=start_ms, end=end_ms)
    assert not report.ok
    assert {key: pair.status for key, pair in report.pairs.items()} == {
        f"{s} {tf}": "failed" for s in SYMBOLS for tf in TIMEFRAMES
    }
    assert all("coverage" in (pair.error or "") for pair in report.pairs.values()), report.summary()
    retries = [r.getMessage() for r in caplog.records if r.name == "data_collector.retrying"]
    assert retries == []
    assert sim.stats()["requests"] == requests_before
