"""Klines backfill from the simulator's archive tree vs the REST weight floor of the same work.

``OptimizedDataCollector.collect`` of N spot symbols x 1m x D whole days ending 40 days ago
(``source: auto``, so months come as monthly files, the edges as daily ones), into PostgreSQL, the
simulator's zip cache warmed by a first pass. The REST floor is what the same candles cost at
Binance's 6,000 weight a minute (klines weigh 2 per 1,000-candle page). Each collection runs in a
child process (the benchmark ``backfill``'s child), so its time and peak RSS are the collector's
alone; the simulator serves from this process. The same candles by our REST path, once.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import uuid
from pathlib import Path

from benchmarks.bench_backfill import _schema, run_child
from benchmarks.harness import BenchContext, Row, Table
from data_collector.markets import DAY_MS
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.archives import ArchiveSettings

NAME = "archive"
DESCRIPTION = "klines backfill from archive zips vs the REST weight floor of the same candles"
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT", "DOGE/USDT", "ADA/USDT", "DOT/USDT"]


async def _collect(
    sim: SimulatedExchange,
    ctx: BenchContext,
    symbols: list[str],
    start: int,
    end: int,
    source: str = "auto",
    **extra: object,
) -> tuple[float, int, float]:
    """One collection in a child process (so its RSS is the collector's alone): seconds, rows, peak MB."""
    schema = "bench_archive_" + uuid.uuid4().hex[:8]
    config = {
        "exchange": {
            **sim.exchange_config(),
            "archive": {"url": sim.archive_url, "downloads_in_flight": 4},
            "source": source,
        },
        "database": {"url": ctx.pg_url, "schema": schema},
        "logging": {"file": None},
        "symbols": symbols,
        "timeframes": ["1m"],
        "performance": {"api_rate_limit": 100_000},
        **extra,
    }
    spec = json.dumps({"config": config, "start": start, "end": end}).encode()
    try:
        result = await run_child(spec)
        if result["failures"]:
            raise RuntimeError(f"pairs failed: {result['failures']}")
        return float(result["elapsed_s"]), int(result["rows"]), float(result["peak_rss_mb"])
    finally:
        await _schema(ctx.pg_dsn, False, schema)


async def run(ctx: BenchContext) -> list[Table]:
    n, days = (2, 31) if ctx.quick else (4, 122)
    symbols = SYMBOLS[:n]
    with tempfile.TemporaryDirectory() as cache:
        settings = ArchiveSettings(cache_dir=Path(cache))
        async with SimulatedExchange(symbols=symbols, seed=1, gaps={}, archive=settings) as sim:
            end = (sim.clock.now_ms() // DAY_MS - 40) * DAY_MS
            start = end - days * DAY_MS
            await _collect(sim, ctx, symbols, start, end)  # warms the zip cache
            build_s = sim.archive.build_s
            times, peaks, rows = [], [], 0
            for _ in range(ctx.repeats):
                elapsed, rows, peak = await _collect(sim, ctx, symbols, start, end)
                times.append(elapsed)
                peaks.append(peak)
            rest_s, rest_rows, _ = await _collect(sim, ctx, symbols, start, end, "rest")
    candles = n * days * 1440
    floor_s = (candles / 1000) * 2 / 6000 * 60
    table = Table(f"{n} spot symbols x 1m x {days} days = {candles:,} candles into PostgreSQL")
    table.add(
        Row(
            "REST weight floor (6,000/min, 2 per 1,000 candles)",
            [floor_s],
            "s",
            baseline=True,
            higher_is_better=False,
        )
    )
    table.add(Row("archive backfill (zip cache warm)", times, "s", higher_is_better=False))
    table.add(
        Row(
            "our REST backfill, same candles (simulator at 6,000 weight/min)",
            [rest_s],
            "s",
            higher_is_better=False,
        )
    )
    table.notes += [
        f"rows written {rows:,} (archive), {rest_rows:,} (REST); archive {candles / statistics.median(times):,.0f} candles/s (median)",
        f"collector child peak RSS {', '.join(f'{p:.0f}' for p in peaks)} MB (target <= 300 MB); "
        f"simulator zip build (cold pass, not timed) {build_s:.1f} s",
        "target (issue 13): 20 x 730 days in <= 60 s, i.e. >= 350,000 candles/s",
    ]
    return [table]


async def run_trades(ctx: BenchContext) -> list[Table]:
    """aggTrades of the simulator's busiest symbol from daily archive files vs the REST weight floor.

    ``collect(data_types=['trades'])`` of whole days ending 40 days ago (zip cache warmed by a
    first pass), in a child process. The floor: the same trades by ``fromId`` pages of 1,000 at
    Binance spot's aggTrades weight 4, under 6,000 weight a minute (no look-ups counted).
    """
    days = 1 if ctx.quick else 90
    probe = SimulatedExchange(symbols=SYMBOLS, seed=1, gaps={})
    hour = probe.clock.now_ms() // DAY_MS * DAY_MS - 41 * DAY_MS
    busiest = max(
        SYMBOLS, key=lambda s: sum(len(probe.market(s).minute_trades(hour // 60_000 + m)) for m in range(60))
    )
    with tempfile.TemporaryDirectory() as cache:
        settings = ArchiveSettings(cache_dir=Path(cache))
        async with SimulatedExchange(symbols=[busiest], seed=1, gaps={}, archive=settings) as sim:
            end = (sim.clock.now_ms() // DAY_MS - 40) * DAY_MS
            start = end - days * DAY_MS
            trades = {"data_types": ["trades"]}
            await _collect(sim, ctx, [busiest], start, end, **trades)  # warms the zip cache
            build_s = sim.archive.build_s
            times, peaks, rows = [], [], 0
            for _ in range(ctx.repeats):
                elapsed, rows, peak = await _collect(sim, ctx, [busiest], start, end, **trades)
                times.append(elapsed)
                peaks.append(peak)
            zip_mb = sim.archive.stats["bytes"] / (ctx.repeats + 1) / 1e6
    floor_s = -(-rows // 1000) * 4 / 6000 * 60
    table = Table(f"{busiest} (busiest) aggTrades x {days} days = {rows:,} trades into PostgreSQL")
    cases = [
        ("REST weight floor (6,000/min, 4 per 1,000 trades)", [floor_s]),
        ("archive backfill (daily zips)", times),
    ]
    for n, (label, values) in enumerate(cases):
        table.add(Row(label, values, "s", baseline=n == 0, higher_is_better=False))
    table.notes += [
        f"archive {rows / statistics.median(times):,.0f} trades/s (median), {zip_mb:,.0f} MB of zips a run; "
        f"collector child peak RSS {', '.join(f'{p:.0f}' for p in peaks)} MB; "
        f"simulator zip build (cold pass, not timed) {build_s:.1f} s",
        "target (issue 13): >= 10x faster than the REST floor",
    ]
    return [table]
