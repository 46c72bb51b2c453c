"""Klines backfill from the simulator's archive tree vs the REST weight floor of the same work.

``OptimizedDataCollector.collect`` of N spot symbols x 1m x D whole days ending 40 days ago
(``source: auto``, so months come as monthly files, the edges as daily ones), into PostgreSQL, the
simulator's zip cache warmed first (the files are built straight into the cache, untimed). The
REST floor is what the same candles cost at Binance's 6,000 weight a minute (klines weigh 2 per
1,000-candle page). Each collection runs in a child process (the benchmark ``backfill``'s child),
so its time and peak RSS are the collector's alone; the simulator serves from this process, and
the CPU seconds of both are reported (the simulator's share). Our REST path collects the same
candles once, side by side, at the default size (the ``issue`` size is far beyond what REST does
in a benchmark, so there it runs on the default size in the same run).

Sizes: ``--quick`` 2 x 31 days, default 4 x 122 days, ``--size issue`` 20 x 730 days (issue 13's
target: 21.0M candles in at most 60 s; then the default size runs too, for the REST row). The
``issue`` size's zip cache is kept in ``$DC_BENCH_ARCHIVE_CACHE`` (default
``<tmp>/dc_bench_archive_cache``): building its 1,080 files cold takes many minutes, and they are
the same every run (keyed by the simulator's seed, listing and gaps). The smaller sizes build
theirs in a fresh directory (seconds) unless that variable is set, so that runs side by side never
write one cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import numpy as np

from benchmarks.bench_backfill import _schema, run_child
from benchmarks.harness import BenchContext, Row, Table
from data_collector.config import ArchiveConfig
from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.archives import ArchiveSettings
from data_collector.storage import StoreSettings
from data_collector.storage.candle_columns import CandleColumns, copy_binary
from data_collector.storage.postgres import OHLCV_COLUMNS, PostgresCandleStore
from data_collector.venues.binance.archive_plan import split_for_archives

NAME = "archive"
DESCRIPTION = "klines backfill from archive zips vs the REST weight floor of the same candles"
SYMBOLS = [
    *("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT", "DOGE/USDT", "ADA/USDT", "DOT/USDT"),
    *("LINK/USDT", "AVAX/USDT", "LTC/USDT", "TRX/USDT", "ATOM/USDT", "UNI/USDT", "XLM/USDT"),
    *("ETC/USDT", "FIL/USDT", "NEAR/USDT", "APT/USDT", "ARB/USDT"),
]
#: ``--size`` -> (symbols, days).
SIZES = {"quick": (2, 31), "default": (4, 122), "issue": (20, 730)}
#: Binance spot: 6,000 weight a minute, 2 per 1,000-candle klines page.
WEIGHT_PER_MIN = 6000


@contextlib.contextmanager
def _cache_dir(size: str) -> Iterator[Path]:
    """``$DC_BENCH_ARCHIVE_CACHE``, or for the ``issue`` size ``<tmp>/dc_bench_archive_cache``
    (kept: its cold build takes minutes); else a fresh directory, so that runs side by side never
    write the same cache file."""
    kept = os.environ.get("DC_BENCH_ARCHIVE_CACHE")
    if kept is None and size == "issue":
        kept = str(Path(tempfile.gettempdir()) / "dc_bench_archive_cache")
    if kept is not None:
        yield Path(kept)
        return
    with tempfile.TemporaryDirectory() as fresh:
        yield Path(fresh)


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _collect(
    sim: SimulatedExchange,
    ctx: BenchContext,
    symbols: list[str],
    start: int,
    end: int,
    source: str = "auto",
    **extra: object,
) -> dict[str, float]:
    """One collection in a child process (so its RSS is the collector's alone): seconds, rows,
    peak MB, and the CPU seconds of the collector (the child) and of the simulator (this process)."""
    schema = "bench_archive_" + uuid.uuid4().hex[:8]
    config = {
        "exchange": {**sim.exchange_config(), "archive": {"url": sim.archive_url}, "source": source},
        "database": {"url": ctx.pg_url, "schema": schema},
        "logging": {"file": None},
        "symbols": symbols,
        "timeframes": ["1m"],
        "performance": {"api_rate_limit": 100_000},
        **extra,
    }
    spec = json.dumps({"config": config, "start": start, "end": end}).encode()
    sim0, child0 = _cpu_s(resource.RUSAGE_SELF), _cpu_s(resource.RUSAGE_CHILDREN)
    try:
        result = await run_child(spec)
        if result["failures"]:
            raise RuntimeError(f"pairs failed: {result['failures']}")
        return {
            "elapsed_s": float(result["elapsed_s"]),
            "rows": int(result["rows"]),
            "peak_mb": float(result["peak_rss_mb"]),
            "collector_cpu_s": _cpu_s(resource.RUSAGE_CHILDREN) - child0,
            "sim_cpu_s": _cpu_s(resource.RUSAGE_SELF) - sim0,
        }
    finally:
        await _schema(ctx.pg_dsn, False, schema)


async def _warm(sim: SimulatedExchange, symbols: list[str], start: int, end: int) -> tuple[int, float]:
    """Build every file the collector will ask for into the zip cache: files, seconds."""
    defaults = ArchiveConfig()
    files, _ = split_for_archives(
        [(start, end)],
        sim.clock.now_ms(),
        daily_lag_ms=int(defaults.daily_lag_h * HOUR_MS),
        monthly_lag_ms=int(defaults.monthly_lag_days * DAY_MS),
    )
    started = time.perf_counter()
    for symbol in symbols:
        market = sim.market(symbol)
        for file in files:
            await asyncio.to_thread(sim.archive.build, market, "1m", file.date)
    return len(files) * len(symbols), time.perf_counter() - started


async def _bare_copy(ctx: BenchContext, n: int, minutes: int) -> float:
    """Seconds for PostgreSQL alone to take the same rows: binary COPY of ready-made buffers of
    80,000 rows (a writer's transaction) into a fresh ``ohlcv`` table over two connections (the
    collector's two writers), nothing else: the floor of this machine's PostgreSQL."""
    schema = "bench_archive_copy_" + uuid.uuid4().hex[:8]
    async with PostgresCandleStore(StoreSettings(url=ctx.pg_url, db_schema=schema)) as store:
        await store.initialize()
    chunk = 80_000
    jobs = [(iid, lo) for iid in range(1, n + 1) for lo in range(0, minutes, chunk)]
    conns = [await asyncpg.connect(ctx.pg_dsn) for _ in range(2)]
    try:

        async def copy(conn: asyncpg.Connection, mine: list[tuple[int, int]]) -> None:
            for iid, lo in mine:
                ts = (np.arange(lo, min(lo + chunk, minutes), dtype=np.int64)) * 60_000
                prices = np.linspace(1.0, 2.0, len(ts))
                parts = list(
                    copy_binary([(iid, 1, CandleColumns(ts, prices, prices, prices, prices, prices))])
                )

                async def source(parts: list[bytes] = parts) -> AsyncIterator[bytes]:
                    for part in parts:
                        yield part

                async with conn.transaction():
                    await conn.copy_to_table(
                        "ohlcv", schema_name=schema, source=source(), columns=OHLCV_COLUMNS, format="binary"
                    )

        started = time.perf_counter()
        await asyncio.gather(*(copy(conn, jobs[i::2]) for i, conn in enumerate(conns)))
        return time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
        await _schema(ctx.pg_dsn, False, schema)


def _floor_s(candles: int) -> float:
    return (candles / 1000) * 2 / WEIGHT_PER_MIN * 60


async def _size_table(ctx: BenchContext, size: str, *, with_rest: bool) -> tuple[Table, dict[str, float]]:
    n, days = SIZES[size]
    symbols = SYMBOLS[:n]
    with _cache_dir(size) as cache:
        return await _measure(ctx, symbols, days, ArchiveSettings(cache_dir=cache), with_rest=with_rest)


async def _measure(
    ctx: BenchContext, symbols: list[str], days: int, settings: ArchiveSettings, *, with_rest: bool
) -> tuple[Table, dict[str, float]]:
    n = len(symbols)
    async with SimulatedExchange(symbols=symbols, seed=1, gaps={}, archive=settings) as sim:
        end = (sim.clock.now_ms() // DAY_MS - 40) * DAY_MS
        start = end - days * DAY_MS
        files, warm_s = await _warm(sim, symbols, start, end)
        build_s = sim.archive.build_s
        runs = [await _collect(sim, ctx, symbols, start, end) for _ in range(ctx.repeats)]
        rest = await _collect(sim, ctx, symbols, start, end, "rest") if with_rest else None
    candles = n * days * 1440
    bare_s = await _bare_copy(ctx, n, days * 1440)
    times = [r["elapsed_s"] for r in runs]
    table = Table(f"{n} spot symbols x 1m x {days} days = {candles:,} candles into PostgreSQL")
    table.add(
        Row(
            f"REST weight floor ({WEIGHT_PER_MIN:,}/min, 2 per 1,000 candles)",
            [_floor_s(candles)],
            "s",
            baseline=True,
            higher_is_better=False,
        )
    )
    table.add(Row("archive backfill (zip cache warm)", times, "s", higher_is_better=False))
    table.add(
        Row(
            "PostgreSQL alone: binary COPY of the same rows, buffers ready, 2 connections",
            [bare_s],
            "s",
            higher_is_better=False,
        )
    )
    if rest is not None:
        table.add(
            Row(
                "our REST backfill, same candles (simulator at 6,000 weight/min)",
                [rest["elapsed_s"]],
                "s",
                higher_is_better=False,
            )
        )
    median = statistics.median(times)
    peaks = [r["peak_mb"] for r in runs]
    sim_cpu = statistics.median(r["sim_cpu_s"] for r in runs)
    collector_cpu = statistics.median(r["collector_cpu_s"] for r in runs)
    table.notes += [
        f"collector / PostgreSQL alone: {median / bare_s:.2f}x the time",
        f"rows written {runs[-1]['rows']:,} (archive)"
        + (f", {rest['rows']:,} (REST)" if rest is not None else "")
        + f"; archive {candles / median:,.0f} candles/s, {_floor_s(candles) / median:.1f}x the REST floor (median)",
        f"collector child peak RSS {', '.join(f'{peak:.0f}' for peak in peaks)} MB (target <= 300 MB)",
        f"CPU during the archive run (median): collector {collector_cpu:.1f} s, simulator serving "
        f"{sim_cpu:.1f} s ({sim_cpu / max(median, 1e-9):.0%} of the wall time); PostgreSQL's not counted",
        f"zip cache: {files} files, warmed in {warm_s:.1f} s (of which building {build_s:.1f} s; 0 when cached)",
    ]
    return table, {"candles_per_s": candles / median}


async def run(ctx: BenchContext) -> list[Table]:
    size = ctx.size or ("quick" if ctx.quick else "default")
    if size not in SIZES:
        raise ValueError(f"archive: unknown --size {size!r}; one of {', '.join(SIZES)}")
    if size != "issue":
        table, _ = await _size_table(ctx, size, with_rest=True)
        table.notes.append("target (issue 13): 20 x 730 days in <= 60 s (>= 350,000 candles/s): --size issue")
        return [table]
    big, _ = await _size_table(ctx, "issue", with_rest=False)
    big.notes.append("target (issue 13): <= 60 s, >= 7x the REST floor, peak RSS <= 300 MB")
    side, _ = await _size_table(ctx, "default", with_rest=True)
    side.notes.append("the side-by-side with our REST path, in the same run as the table above")
    return [big, side]


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
                result = await _collect(sim, ctx, [busiest], start, end, **trades)
                times.append(result["elapsed_s"])
                peaks.append(result["peak_mb"])
                rows = int(result["rows"])
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
