"""``load_ohlcv`` over ten million 1m candles spanning both tiers, against its Parquet part alone.

The issue's target: "``load_ohlcv`` over 10M rows spanning both tiers within 2x the time of the
Parquet part alone". The split is the one the default ``archive.older_than: 90d`` leaves: five
instruments with four years of 1m candles each (2020-03-01 to 2024-03-01, 10,519,200 rows), of
which the closed months older than 90 days before 2024-03-01 are in Parquet (2020-03 to 2023-11,
93.8%) and December to February are in PostgreSQL (6.2%). The Parquet months are written by
:func:`~data_collector.storage.parquet_files.write_month` (what ``archive`` writes with; moving
ten million rows out of PostgreSQL first would only make the setup slower), the PostgreSQL months
by ``store.write``.

Both cases (back to back in each repeat; the ratio is the median of the pairs, and of their CPU)
call :func:`~data_collector.storage.archive.load_ohlcv_tiers` per instrument and end
with pandas DataFrames: over the whole four years (both tiers), and over 2020-03 to 2023-11 (the
Parquet part alone; its PostgreSQL query finds no row). ``--quick``: one instrument.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import asyncpg
import numpy as np
import psutil

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


async def tiers_table(ctx: BenchContext, store: CandleStore, admin: asyncpg.Connection, root: Path) -> Table:
    table = Table(
        f"load_ohlcv over {'2M' if ctx.quick else '10M'} 1m candles spanning both tiers (90 days in PostgreSQL)"
    )
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
    both_s, part_s, both_cpu, part_cpu = [], [], [], []
    meter = CpuMeter(admin)
    for _ in range(ctx.repeats):  # the two cases back to back, so each pair saw the same load
        for end_ms, times, cpu, expect in (
            (SEAM_MS, part_s, part_cpu, parquet_rows),
            (END_MS, both_s, both_cpu, rows),
        ):
            await meter.start()
            got, seconds = await timed_load(store, archive, instruments, START_MS, end_ms)
            cpu.append(await meter.stop())
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
    paired = statistics.median(b / p for b, p in zip(both_s, part_s, strict=True))
    cpu_ratio = statistics.median(b / p for b, p in zip(both_cpu, part_cpu, strict=True))
    table.notes.append(
        f"{rows:,} rows in {len(instruments)} instruments, {rows - parquet_rows:,} of them in PostgreSQL; "
        f"both tiers took {paired:.2f}x the time of the Parquet part alone ({parquet_rows:,} rows; "
        f"median of the pairs, fastest against fastest {min(both_s) / min(part_s):.2f}x) and "
        f"{cpu_ratio:.2f}x its CPU (this process + its PostgreSQL backends); target <= 2x: "
        f"{'met' if paired <= 2 else 'NOT met'}"
    )
    return table


class CpuMeter:
    """CPU seconds of this process plus the PostgreSQL backends serving its connections.

    On a shared machine the wall time of a run says how much CPU it got, not how much it needs;
    this says what it needs: a pipeline that costs C CPU-seconds per row can at best run at
    ``cores / C`` rows/s on an idle machine (if its stages overlap perfectly). Backends are found
    by the client ports of this process's connections (``pg_stat_activity.client_port``).
    """

    def __init__(self, admin: asyncpg.Connection) -> None:
        self._admin = admin

    async def _backends(self) -> dict[int, float]:
        ports = [
            c.laddr.port
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == 5432
        ]
        rows = await self._admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[]) AND pid <> pg_backend_pid()",
            ports,
        )
        seconds = {}
        for row in rows:
            try:
                times = psutil.Process(row["pid"]).cpu_times()
            except psutil.Error:
                continue
            seconds[row["pid"]] = times.user + times.system
        return seconds

    async def start(self) -> None:
        self._process = time.process_time()
        self._before = await self._backends()

    async def stop(self) -> float:
        """CPU seconds since :meth:`start` (backends that started meanwhile count from zero)."""
        process = time.process_time() - self._process
        after = await self._backends()
        return process + sum(after[pid] - self._before.get(pid, 0.0) for pid in after)
