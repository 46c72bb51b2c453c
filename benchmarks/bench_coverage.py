"""The coverage map at 100 symbols x 6 timeframes x 5 years of coverage rows (issue 18: < 5 s).

The record is seeded straight into PostgreSQL as a collector leaves it: per pair an empty range
before the listing, a 4-hour maintenance gap a year, a week never fetched, data elsewhere. The
1d candles are stored in full (182,600 rows, counted for real); the other timeframes have no
candles, so every one of their stored ranges falls short and takes the per-cell recount: the
most round trips the map can make. Baseline: what a user can do without the map, ``find_gaps``
per pair (which walks every expected candle of a short range), on a few symbols.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from benchmarks.harness import BenchContext, Row, Table, repeat
from data_collector.config import load_config
from data_collector.coverage import build_coverage_map
from data_collector.markets import DAY_MS, HOUR_MS, TIMEFRAME_CODES, candle_open_ms, next_open_ms
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.store import StoreSettings

NAME = "coverage"
DESCRIPTION = (
    "coverage map (record, holes, HTML, PNG) at 100 symbols x 6 timeframes x 5 years vs find_gaps per pair"
)
TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d")
END_MS = 1_767_225_600_000  # 2026-01-01, fixed so that every run seeds the same record
YEAR_MS = 365 * DAY_MS
TARGET_S = 5.0


def pair_ranges(k: int, years: int, timeframe: str) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` coverage rows of symbol ``k``: listing, maintenance, a week missing."""
    start = END_MS - years * YEAR_MS
    listing = candle_open_ms(start + (k % 10) * 30 * DAY_MS, timeframe)
    rows: list[tuple[int, int, str]] = [(start, listing, "empty")] if listing > start else []
    holes = [(start + y * YEAR_MS + (100 + k) * DAY_MS, 4 * HOUR_MS) for y in range(years)]
    cuts = sorted(
        [
            (
                candle_open_ms(a, timeframe),
                next_open_ms(candle_open_ms(a + n - 1, timeframe), timeframe),
                "empty",
            )
            for a, n in holes
        ]
        + [
            (
                start + (years // 2) * YEAR_MS + k * DAY_MS,
                start + (years // 2) * YEAR_MS + (k + 7) * DAY_MS,
                "",
            )
        ]
    )
    cursor = listing
    for a, b, kind in cuts:
        a, b = max(a, cursor), max(b, cursor)
        if a > cursor:
            rows.append((cursor, a, "data"))
        if kind and b > a:
            rows.append((a, b, kind))
        cursor = b
    rows.append((cursor, END_MS, "data"))
    return [(a, b, kind) for a, b, kind in rows if b > a]


async def seed(conn: asyncpg.Connection, schema: str, symbols: int, years: int) -> tuple[int, int]:
    """Instruments, coverage rows and the 1d candles; returns (coverage rows, candle rows)."""
    await conn.copy_records_to_table(
        "instruments",
        schema_name=schema,
        columns=["id", "exchange", "symbol", "base", "quote"],
        records=[(k + 1, "binance", f"S{k:03d}/USDT", f"S{k:03d}", "USDT") for k in range(symbols)],
    )
    coverage, candles = [], []
    for k in range(symbols):
        for tf in TIMEFRAMES:
            for a, b, kind in pair_ranges(k, years, tf):
                coverage.append((k + 1, TIMEFRAME_CODES[tf], kind, a, b))
                if tf == "1d" and kind == "data":
                    candles += [
                        (k + 1, TIMEFRAME_CODES[tf], t, 1.0, 1.0, 1.0, 1.0, 1.0) for t in range(a, b, DAY_MS)
                    ]
    await conn.copy_records_to_table("coverage", schema_name=schema, records=coverage)
    await conn.copy_records_to_table("ohlcv", schema_name=schema, records=candles)
    await conn.execute(f'ANALYZE "{schema}".coverage, "{schema}".ohlcv')
    return len(coverage), len(candles)


async def run(ctx: BenchContext) -> list[Table]:
    symbols, years, baseline_symbols = (10, 1, 1) if ctx.quick else (100, 5, 2)
    schema = f"bench_coverage_{uuid.uuid4().hex[:8]}"
    config = load_config({"database": {"url": ctx.pg_url, "schema": schema}, "logging": {"file": None}})
    store = PostgresCandleStore(StoreSettings.from_config(config))
    admin = await asyncpg.connect(ctx.pg_dsn)
    out = Path(tempfile.mkdtemp(prefix="bench_coverage_"))
    pairs = symbols * len(TIMEFRAMES)
    table = Table(
        f"Coverage map, {symbols} symbols x {len(TIMEFRAMES)} timeframes x {years} years ({pairs} rows)"
    )
    try:
        await store.initialize()
        n_cov, n_candles = await seed(admin, schema, symbols, years)
        since, until = END_MS - years * YEAR_MS, END_MS
        sizes: dict[str, int] = {}

        async def map_seconds(check_holes: bool, render: str = "") -> float:
            started = time.perf_counter()
            cover = await build_coverage_map(
                store, ["binance"], since=since, until=until, check_holes=check_holes
            )
            if render == "html":
                sizes["html"] = cover.save_html(out / "map.html").stat().st_size
            elif render == "png":
                sizes["png"] = cover.save_png(out / "map.png").stat().st_size
            if len(cover.rows) != pairs:
                raise RuntimeError(f"{len(cover.rows)} rows, expected {pairs}")
            return time.perf_counter() - started

        async def baseline_seconds() -> float:
            started = time.perf_counter()
            for k in range(baseline_symbols):
                for tf in TIMEFRAMES:
                    await store.find_gaps(k + 1, tf, since, until)
            return time.perf_counter() - started

        await map_seconds(False)  # warm the pool and the caches
        base = await repeat(ctx.repeats, baseline_seconds)
        table.add(
            Row(
                f"find_gaps per pair ({baseline_symbols * len(TIMEFRAMES)} pairs)",
                [baseline_symbols * len(TIMEFRAMES) / s for s in base],
                "pairs/s",
                baseline=True,
            )
        )
        timings: dict[str, list[float]] = {}
        for label, holes, render in (
            ("map from the coverage record only", False, ""),
            ("map with the hole check (candle counts)", True, ""),
            ("map with holes + HTML file", True, "html"),
            ("map with holes + PNG file (Pillow)", True, "png"),
        ):
            seconds = await repeat(ctx.repeats, lambda h=holes, r=render: map_seconds(h, r))  # type: ignore[misc]
            timings[label] = seconds
            table.add(
                Row(label, [pairs / s for s in seconds], "pairs/s", note=f"{max(seconds):.2f} s at worst")
            )
        worst = max(max(v) for v in timings.values())
        table.notes += [
            f"seeded {n_cov:,} coverage rows and {n_candles:,} 1d candles in schema {schema} (dropped after)",
            f"one cell per {'week' if years > 1 else 'day'}; HTML {sizes.get('html', 0):,} bytes, PNG {sizes.get('png', 0):,} bytes",
            f"slowest map of any kind: {worst:.2f} s; target < {TARGET_S:.0f} s: {'met' if worst < TARGET_S else 'NOT met'}"
            + ("" if not ctx.quick else " (quick sizes: not the target's)"),
        ]
    finally:
        await store.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
    return [table]
