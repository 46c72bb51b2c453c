"""Archives for perpetual klines (every price) and for aggTrades (spot and perpetual): real ccxt and
aiohttp against the simulator's archive tree and REST, real PostgreSQL; every row equals REST's truth
over random ranges across the 2024/2025 microsecond switch."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from data_collector.backfill.report import CollectionReport
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.archives import FAULT_KINDS, WRONG_VALUE, ArchiveSettings
from data_collector.storage import Trade
from tests.support.backfill import config_for, floats
from tests.support.services import free_port

SPOT = "SOL/USDT"
PERP = "BTC/USDT:USDT"
PRICES = {"ohlcv": "last", "mark_ohlcv": "mark", "index_ohlcv": "index", "premium_ohlcv": "premium"}
SWITCH_MS = 1_735_689_600_000  # 2025-01-01


@pytest.fixture(scope="module")
def zip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Zips built once for the module's tests (a day of trades takes the simulator seconds)."""
    return tmp_path_factory.mktemp("archive-cache")


#: Maintenance most of each day around the switch, so a day holds thousands of trades, not 60,000
#: (a short test); a day's trades come in two bursts, and its file still covers the whole day.
GAPS = [(SWITCH_MS + d * DAY_MS + 3 * HOUR_MS, SWITCH_MS + d * DAY_MS + 21 * HOUR_MS) for d in range(-3, 3)]


@pytest.fixture
async def sim(zip_cache: Path) -> AsyncIterator[SimulatedExchange]:
    archive = ArchiveSettings(slow_s=0.2, cache_dir=zip_cache)
    gaps = {SPOT: GAPS, PERP: GAPS}
    async with SimulatedExchange(
        symbols=[SPOT, "BTC/USDT"], perpetuals=[PERP], seed=17, gaps=gaps, archive=archive
    ) as s:
        yield s


def random_range(seed: int, days_before: int, days_after: int) -> tuple[int, int]:
    """A range from a random ms up to 2 h before the midnight ``days_before`` days before 2025-01-01
    to one up to 2 h after the midnight ``days_after`` days after: those days from files."""
    rng = random.Random(seed)
    return (
        SWITCH_MS - days_before * DAY_MS - rng.randrange(10 * MINUTE_MS, 2 * HOUR_MS),
        SWITCH_MS + days_after * DAY_MS + rng.randrange(10 * MINUTE_MS, 2 * HOUR_MS),
    )


def trades_truth(sim: SimulatedExchange, symbol: str, start_ms: int, end_ms: int) -> list[Trade]:
    """The aggregate trades REST serves (the futures venue's for a perpetual)."""
    if ":" not in symbol:
        rows = sim.agg_trades(symbol, start_ms, end_ms)
        return [(t["a"], t["T"], float(t["p"]), float(t["q"]), t["f"], t["l"], t["m"]) for t in rows]
    market = sim.usdm.market(symbol)
    pd, qd = 10**market.price_decimals, 10**market.qty_decimals
    return [
        (t.id, t.time_ms, t.price / pd, t.qty / qd, t.id, t.id, t.buyer_maker)
        for minute in range(start_ms // MINUTE_MS, end_ms // MINUTE_MS + 1)
        for t in market.minute_trades(minute)
        if start_ms <= t.time_ms < end_ms
    ]


@asynccontextmanager
async def collected(
    base_config: dict[str, Any], sim: SimulatedExchange, start: int, end: int, **extra: Any
) -> AsyncIterator[tuple[CollectionReport, OptimizedDataCollector]]:
    """A collector with archives on, after one run over ``[start, end)``; closed on the way out."""
    futures = {**sim.futures_exchange_config(), "timeout_s": 2.0, "ohlcv_page_limit": 499}
    ex = {
        "archive": {"url": sim.archive_url, "timeout_s": 60, **extra.pop("archive", {})},
        **extra.pop("exchange", {}),
    }
    config = config_for(base_config, sim, futures_exchange=futures, exchange=ex, **extra)
    collector = OptimizedDataCollector(config)
    await collector.initialize()
    try:
        report = await asyncio.wait_for(collector.collect(start=start, end=end), 120)
        yield report, collector
    finally:
        await collector.close()


async def test_perpetual_klines_of_every_price_from_archives_equal_rest_truth(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    start, end = random_range(1, 3, 2)
    async with collected(
        base_config, sim, start, end, symbols=[PERP], timeframes=["1m", "1h"], data_types=list(PRICES)
    ) as (report, collector):
        assert report.ok and not report.archive_fallbacks, report.summary()
        # 4 prices x 2 timeframes x 5 whole days (3 before the switch, 2 after) come from files.
        assert report.archive_files == 4 * 2 * 5, report.summary()
        inst = await collector.instrument(PERP)
        for price in PRICES.values():
            for tf in ("1m", "1h"):
                key = tf if price == "last" else f"{price}:{tf}"
                want = [floats(k) for k in sim.usdm.klines(PERP, tf, start, end, price=price)]
                got = await collector.store.load(inst.id, key, start, end)
                assert want and got == want, key


@pytest.mark.parametrize("seed", [2, 3])
async def test_agg_trades_from_archives_equal_rest_truth_spot_and_perpetual(
    base_config: dict[str, Any], sim: SimulatedExchange, seed: int
) -> None:
    start, end = random_range(seed, 1, 1)
    symbols = [SPOT, PERP]
    async with collected(base_config, sim, start, end, symbols=symbols, data_types=["trades"]) as (
        report,
        collector,
    ):
        assert report.ok and not report.archive_fallbacks, report.summary()
        assert report.archive_files == 2 * 2  # 2024-12-31 and 2025-01-01 (µs on spot), each symbol
        for symbol in symbols:
            inst = await collector.instrument(symbol)
            want = trades_truth(sim, symbol, start, end)
            got = await collector.store.load_trades(inst.id, start, end)
            assert len(got) == len(want) > 5_000, symbol
            assert got == want, symbol
        again = await collector.collect(start=start, end=end)
        assert again.ok and again.requests == 0 and again.archive_files == 0, again.summary()


async def check_trades(
    collector: OptimizedDataCollector, sim: SimulatedExchange, start: int, end: int
) -> None:
    for symbol in (SPOT, PERP):
        inst = await collector.instrument(symbol)
        assert await collector.store.load_trades(inst.id, start, end) == trades_truth(sim, symbol, start, end)


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_each_fault_on_a_trades_file_falls_back_to_rest_named_and_exact(
    base_config: dict[str, Any], sim: SimulatedExchange, kind: str
) -> None:
    start, end = random_range(4, 1, 1)
    sim.archive.inject(kind, "/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-12-31")
    async with collected(base_config, sim, start, end, symbols=[SPOT, PERP], data_types=["trades"]) as (
        report,
        collector,
    ):
        assert report.ok, report.summary()
        await check_trades(collector, sim, start, end)
        if kind == "slow":
            assert not report.archive_fallbacks and report.archive_files == 4
        else:
            assert [n.split(":")[0] for n in report.archive_fallbacks] == ["BTC/USDT"]
            assert report.archive_fallbacks[0].startswith("BTC/USDT:USDT trades 2024-12-31: ")
            assert "archive fallback BTC/USDT:USDT trades 2024-12-31" in report.summary()
            assert report.archive_files == 3


@pytest.mark.parametrize("kind", ["bad_checksum", "corrupt", "404"])
async def test_a_fault_on_a_mark_klines_file_falls_back_to_rest_and_exact(
    base_config: dict[str, Any], sim: SimulatedExchange, kind: str
) -> None:
    start, end = random_range(5, 1, 1)
    sim.archive.inject(kind, "/markPriceKlines/BTCUSDT/1h/BTCUSDT-1h-2025-01-01")
    async with collected(
        base_config, sim, start, end, symbols=[PERP], timeframes=["1h"], data_types=["mark_ohlcv"]
    ) as (report, collector):
        assert report.ok, report.summary()
        assert [n.split(": ")[0] for n in report.archive_fallbacks] == ["BTC/USDT:USDT mark:1h 2025-01-01"]
        inst = await collector.instrument(PERP)
        want = [floats(k) for k in sim.usdm.klines(PERP, "1h", start, end, price="mark")]
        assert await collector.store.load(inst.id, "mark:1h", start, end) == want


@pytest.mark.parametrize("cross_check", [0, 24])
async def test_cross_check_finds_a_wrong_value_under_a_matching_checksum(
    base_config: dict[str, Any], sim: SimulatedExchange, cross_check: int
) -> None:
    start, end = random_range(6, 1, 1)
    sim.archive.inject(WRONG_VALUE, "/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2024-12-31")
    extra = {"symbols": ["BTC/USDT"], "timeframes": ["1h"], "archive": {"cross_check": cross_check}}
    async with collected(base_config, sim, start, end, **extra) as (report, collector):
        assert report.ok, report.summary()
        inst = await collector.instrument("BTC/USDT")
        want = [floats(k) for k in sim.klines("BTC/USDT", "1h", start, end)]
        got = await collector.store.load(inst.id, "1h", start, end)
        if cross_check:
            # Both months' first files compared: December's differs (named, fetched by REST).
            assert [n.split(": ")[0] for n in report.archive_fallbacks] == ["BTC/USDT 1h 2024-12-31"]
            assert "differs from REST" in report.archive_fallbacks[0]
            assert 24 < report.archive_cross_checked <= 48
            assert "cross-checked with REST" in report.summary()
            assert got == want
        else:
            # The checksum matches the changed zip: without a cross-check one value is wrong.
            assert not report.archive_fallbacks and report.archive_cross_checked == 0
            assert len(got) == len(want) and sum(g != w for g, w in zip(got, want, strict=True)) == 1


@pytest.fixture
def dead_archive(caplog: pytest.LogCaptureFixture) -> str:
    """An archive URL nothing listens on; the archive's error lines captured."""
    caplog.set_level(logging.ERROR, logger="data_collector.venues.binance.archive_run")
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("source", ["auto", "archive"])
async def test_unreachable_archive_for_trades_one_line_then_rest_or_failed_pairs(
    base_config: dict[str, Any],
    sim: SimulatedExchange,
    source: str,
    dead_archive: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = dead_archive
    start, end = random_range(7, 1, 1)
    extra = {"symbols": [SPOT, PERP], "data_types": ["trades"], "archive": {"url": dead}}
    async with collected(base_config, sim, start, end, exchange={"source": source}, **extra) as (
        report,
        collector,
    ):
        lines = [r.getMessage() for r in caplog.records if r.name.endswith("archive_run")]
        assert len(lines) == 1 and dead in lines[0]
        if source == "auto":
            assert report.ok, report.summary()
            await check_trades(collector, sim, start, end)
        else:
            assert set(report.failures) == {f"{s} trades" for s in (SPOT, PERP)}
            assert all("unreachable" in r for r in report.failures.values())
