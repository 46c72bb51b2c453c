"""``load_ohlcv`` over ten million 1m candles spanning both tiers, against its Parquet part alone.

The issue's target: "``load_ohlcv`` over 10M rows spanning both tiers within 2x the time of the
Parquet part alone". The split is the one the default ``archive.older_than: 90d`` leaves: five
instruments with four years of 1m candles each (2020-03-01 to 2024-03-01, 10,519,200 rows), of
which the closed months older than 90 days before 2024-03-01 are in Parquet (2020-03 to 2023-11,
93.8%) and December to February are in PostgreSQL (6.2%). The Parquet months are written by
:func:`~data_collector.storage.parquet_files.write_month` (what ``archive`` writes with; moving
ten million rows out of PostgreSQL first would only make the setup slower), the PostgreSQL months
by ``store.write``.

Both cases call :func:`~data_collector.storage.archive.load_ohlcv_tiers` per instrument and end
with pandas DataFrames: over the whole four years (both tiers), and over 2020-03 to 2023-11 (the
Parquet part alone; its PostgreSQL query finds no row). ``--quick``: one instrument.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import BenchContext, Row, Table
from data_collector.markets import MINUTE_MS
from data_collector.storage import CandleBatch, CoverageRange, Instrument
from data_collector.storage.archive import ArchiveSettings, ParquetArchive, load_ohlcv_tiers
from data_collector.storage.parquet_files import OHLCV_SPEC, Columns, MonthKey, months_between, write_month
from data_collector.storage.store import CandleStore

START_MS = 1_583_020_800_000  # 2020-03-01
SEAM_MS = 1_701_388_800_000  # 2023-12-01: closed months older than 90 days before 2024-03-01
END_MS = 1_709_251_200_000  # 2024-03-01


def _candles(seed: int) -> Columns:
    rng = np.random.default_rng(seed)
    ts = np.arange(START_MS, END_MS, MINUTE_MS, dtype=np.int64)
    n = len(ts)
    close = np.round(100 + np.cumsum(rng.integers(-5, 6, n)) * 0.01, 2).clip(1)
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.round(np.maximum(open_, close) + rng.integers(0, 4, n) * 0.01, 2)
    low = np.round(np.minimum(open_, close) - rng.integers(0, 4, n) * 0.01, 2)
    volume = np.round(rng.gamma(2.0, 50.0, n), 3)
    arrays = {"ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return Columns(OHLCV_SPEC, arrays)


async def timed_load(
    store: CandleStore, archive: ParquetArchive, instruments: list[Instrument], start_ms: int, end_ms: int
) -> tuple[int, float]:
    """``load_ohlcv_tiers`` of 1m candles for each instrument in turn: rows read, seconds taken."""
    started = time.perf_counter()
    got = 0
    for instrument in instruments:
        got += len(await load_ohlcv_tiers(store, archive, instrument, "1m", start_ms, end_ms))
    return got, time.perf_counter() - started


async def tiers_table(ctx: BenchContext, store: CandleStore, root: Path) -> Table:
    table = Table("load_ohlcv over 10M 1m candles spanning both tiers (90 days in PostgreSQL)")
    archive = ParquetArchive(ArchiveSettings(root))
    instruments, rows, parquet_rows = [], 0, 0
    for n in range(1 if ctx.quick else 5):
        instrument = await store.ensure_instrument("tiers", f"T{n}/USDT", base=f"T{n}", quote="USDT")
        candles = _candles(100 + n)
        ts = candles.ts
        for year, month in months_between(START_MS, SEAM_MS):
            key = MonthKey(instrument.exchange, instrument.market_type, "1m", instrument.symbol, year, month)
            part = candles.take((ts >= key.start_ms) & (ts < key.end_ms))
            await asyncio.to_thread(write_month, root, key, part, row_group_rows=1_048_576)
        recent = candles.take(ts >= SEAM_MS)
        tuples = list(zip(*(recent.arrays[name].tolist() for name in OHLCV_SPEC.names), strict=True))
        await store.write(
            [CandleBatch(instrument.id, "1m", tuples, [CoverageRange(SEAM_MS, END_MS, "data")])]
        )
        instruments.append(instrument)
        rows += len(candles)
        parquet_rows += int((ts < SEAM_MS).sum())
    both_s, part_s = [], []
    for _ in range(ctx.repeats):
        for end_ms, times, expect in ((SEAM_MS, part_s, parquet_rows), (END_MS, both_s, rows)):
            got, seconds = await timed_load(store, archive, instruments, START_MS, end_ms)
            times.append(seconds)
            assert got == expect, (got, expect)
    table.add(
        Row(
            "load_ohlcv_tiers, the Parquet part alone",
            [parquet_rows / s for s in part_s],
            "rows/s",
            baseline=True,
        )
    )
    table.add(Row("load_ohlcv_tiers, both tiers", [rows / s for s in both_s], "rows/s"))
    ratio = min(both_s) / min(part_s)
    table.notes.append(
        f"{rows:,} rows in {len(instruments)} instruments, {rows - parquet_rows:,} of them in PostgreSQL; "
        f"both tiers took {ratio:.2f}x the time of the Parquet part alone ({parquet_rows:,} rows), "
        f"fastest runs; target <= 2x: {'met' if ratio <= 2 else 'NOT met'}"
    )
    return table
