"""Archives as a backfill source: real ccxt + aiohttp against the simulator, real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from data_collector.backfill.report import CollectionReport
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.archives import FAULT_KINDS, ArchiveSettings
from tests.support.backfill import config_for, klines_requests, stored_equals_sim
from tests.support.services import free_port

SYMBOLS = ["BTC/USDT", "SOL/USDT"]
TIMEFRAMES = ["1m", "1h"]
#: 2024-11-29 12:00 -> 2025-01-02 06:00 UTC: part day (REST), a day, December, a day (µs), part day.
START_MS = 1_732_881_600_000
END_MS = 1_735_797_600_000


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=SYMBOLS, seed=5, gaps={}, archive=ArchiveSettings(slow_s=0.2)) as s:
        yield s


async def _collect(
    base_config: dict[str, Any], sim: SimulatedExchange, **exchange: Any
) -> tuple[CollectionReport, OptimizedDataCollector]:
    ex = {
        "archive": {"url": sim.archive_url, "timeout_s": 30},
        **exchange,
    }  # generous: a loaded machine must not turn a slow answer into a fallback
    config = config_for(base_config, sim, symbols=SYMBOLS, timeframes=TIMEFRAMES, exchange=ex)
    collector = OptimizedDataCollector(config)
    await collector.initialize()
    report = await asyncio.wait_for(collector.collect(SYMBOLS, TIMEFRAMES, START_MS, END_MS), 120)
    return report, collector


async def test_archive_rows_equal_rest_truth_across_the_microsecond_switch(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    report, collector = await _collect(base_config, sim)
    try:
        assert report.ok, report.summary()
        assert report.archive_files == 3 * 4 and not report.archive_fallbacks
        await stored_equals_sim(collector, sim, START_MS, END_MS, SYMBOLS, TIMEFRAMES)
        # Only the two part days came from REST (1m: 2 pages, 1h: 2 pages) plus the listing probe;
        # the whole range by REST is about 50 pages a symbol.
        assert klines_requests(sim) <= len(SYMBOLS) * 5
    finally:
        await collector.close()


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_each_fault_falls_back_to_rest_named_in_the_report_and_the_table_is_exact(
    base_config: dict[str, Any], sim: SimulatedExchange, kind: str
) -> None:
    sim.archive.inject(kind, "BTCUSDT-1m-2024-11-30")
    report, collector = await _collect(base_config, sim)
    try:
        assert report.ok, report.summary()
        await stored_equals_sim(collector, sim, START_MS, END_MS, SYMBOLS, TIMEFRAMES)
        if kind == "slow":
            assert not report.archive_fallbacks
        else:
            assert [n.split(":")[0] for n in report.archive_fallbacks] == ["BTC/USDT 1m 2024-11-30"]
            assert "archive fallback BTC/USDT 1m 2024-11-30" in report.summary()
            assert report.archive_files == 3 * 4 - 1
    finally:
        await collector.close()


@pytest.mark.parametrize("kind", ["bad_checksum", "corrupt", "truncated", "5xx", "no_checksum"])
async def test_one_bad_answer_is_retried_once_without_fallback(
    base_config: dict[str, Any], sim: SimulatedExchange, kind: str
) -> None:
    sim.archive.inject(kind, "SOLUSDT-1h-2024-12", times=1)
    report, collector = await _collect(base_config, sim)
    try:
        assert report.ok and not report.archive_fallbacks, report.summary()
        assert sim.archive.stats[f"fault_{kind}"] == 1
        await stored_equals_sim(collector, sim, START_MS, END_MS, SYMBOLS, TIMEFRAMES)
    finally:
        await collector.close()


async def test_source_rest_asks_the_archive_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    report, collector = await _collect(base_config, sim, source="rest")
    try:
        assert report.ok and report.archive_files == 0
        assert not sim.archive.stats
        await stored_equals_sim(collector, sim, START_MS, END_MS, SYMBOLS, TIMEFRAMES)
    finally:
        await collector.close()


@pytest.mark.parametrize("source", ["auto", "archive"])
async def test_unreachable_archive_one_line_then_rest_or_failed_pairs(
    base_config: dict[str, Any], sim: SimulatedExchange, source: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="data_collector.venues.binance.archive_run")
    dead = f"http://127.0.0.1:{free_port()}"
    report, collector = await _collect(base_config, sim, source=source, archive={"url": dead, "timeout_s": 5})
    try:
        lines = [r.getMessage() for r in caplog.records if r.name.endswith("archive_run")]
        assert len(lines) == 1 and dead in lines[0]
        if source == "auto":
            assert report.ok, report.summary()
            await stored_equals_sim(collector, sim, START_MS, END_MS, SYMBOLS, TIMEFRAMES)
        else:
            assert set(report.failures) == {f"{s} {tf}" for s in SYMBOLS for tf in TIMEFRAMES}
            assert all("unreachable" in r for r in report.failures.values())
    finally:
        await collector.close()


async def test_listing_inside_the_range_is_found_before_files_are_asked_for(
    base_config: dict[str, Any],
) -> None:
    listing = 1_733_838_000_000 + 37 * 60_000  # 2024-12-10 13:37
    start, end = 1_733_011_200_000, 1_734_652_800_000  # 2024-12-01 .. 2024-12-20, whole days only
    async with SimulatedExchange(
        symbols=["SOL/USDT"], seed=5, gaps={}, listings={"SOL/USDT": listing}
    ) as sim:
        ex = {"archive": {"url": sim.archive_url}}
        config = config_for(base_config, sim, symbols=["SOL/USDT"], timeframes=["1m"], exchange=ex)
        async with OptimizedDataCollector(config) as collector:
            report = await asyncio.wait_for(collector.collect(["SOL/USDT"], ["1m"], start, end), 120)
            assert report.ok and not report.archive_fallbacks, report.summary()
            assert not sim.archive.stats["404"]  # no file before the listing was asked for
            await stored_equals_sim(collector, sim, start, end, ["SOL/USDT"], ["1m"])
