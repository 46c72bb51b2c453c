"""The Parquet tier: closed months of candles moved out of PostgreSQL, verified, and read back.

```python
async with OptimizedDataCollector("config.yaml") as collector:
    report = await collector.archive(older_than="90d", prune=True)
    frame = await collector.load_ohlcv("SOL/USDT", "1m", "2023-01-01", "2024-06-01")  # both tiers
```

A move of one month of one (instrument, timeframe), whose coverage says ``'data'``:

1. **write**: the month's rows are read by binary COPY (merged with the rows of the month's
   existing file, if any) and written atomically (:mod:`~data_collector.storage.parquet_files`).
2. **verify**: the file is read back; its row count and content hash must equal the manifest's.
3. **drop** (``prune`` only): one transaction reads the range again, checks that every row is in
   the file with the same values, deletes the range and marks its coverage ``'archived'``
   (:mod:`~data_collector.storage.postgres_archive`).

A crash between any two steps leaves the rows in PostgreSQL, in Parquet, or in both; a re-run
finds the month still covered as ``'data'`` and moves it again. Archived ranges count as covered,
so a collector run never fetches them again, and ``find_gaps`` reports them as ``'archived'``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_collector.errors import PermanentError, UsageError
from data_collector.markets import timeframe_code
from data_collector.storage.base import CoverageRange, Instrument
from data_collector.storage.parquet_files import (
    CANDLE_FIELDS,
    FILE_NAME,
    MANIFEST_NAME,
    CandleColumns,
    Manifest,
    MonthKey,
    StepHook,
    check_writable,
    months_between,
    read_file,
    write_month,
)
from data_collector.storage.store import CandleStore

if TYPE_CHECKING:
    import pandas as pd

    from data_collector.config import Config
    from data_collector.storage.postgres_archive import PostgresArchiveSide


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """The ``archive`` section: where the dataset lives and how its files are cut."""

    #: A local directory (created on first use).
    path: Path
    #: Rows per Parquet row group: a month of 1m candles (44,640) is one group, read in one go.
    row_group_rows: int = 1_048_576

    @classmethod
    def from_config(cls, config: Config) -> ArchiveSettings:
        return cls(path=Path(config.archive.path), row_group_rows=config.archive.row_group_rows)


@dataclass(slots=True)
class ArchiveReport:
    """What one archive run did; ``failed`` names each month left in the database and why."""

    months_written: int = 0
    months_verified: int = 0
    months_pruned: int = 0
    rows_archived: int = 0
    rows_pruned: int = 0
    bytes_written: int = 0
    failed: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        return (
            f"archive: {self.months_written} month files written ({self.bytes_written:,} bytes), "
            f"{self.months_verified} verified ({self.rows_archived:,} rows), {self.months_pruned} pruned "
            f"({self.rows_pruned:,} rows deleted from the database), {len(self.failed)} failed, "
            f"{self.elapsed_s:.1f} s"
        )


def cutoff_ms(older_than: str | int, now_ms: int | None = None) -> int:
    """The end of what may be archived: ``older_than`` as a relative form (``90d``: before now) or
    an ISO date, in UTC ms.

    Raises:
        UsageError: not a time, or a time in the future.
    """
    from data_collector.config import parse_time_ms

    now = int(time.time() * 1000) if now_ms is None else now_ms
    cutoff = older_than if isinstance(older_than, int) else parse_time_ms(str(older_than), now)
    if cutoff > now:
        raise UsageError(f"--older-than {older_than} lies in the future; give a past date or a form like 90d")
    return cutoff


class ParquetArchive:
    """The Parquet dataset under ``settings.path``: moves months into it and reads them back.

    Args:
        settings: where the dataset lives (:meth:`ArchiveSettings.from_config`).
    """

    def __init__(self, settings: ArchiveSettings) -> None:
        if "://" in str(settings.path):
            raise UsageError(f"archive.path {settings.path}: only local directories are supported so far")
        self.root = settings.path.absolute()
        self._row_group_rows = settings.row_group_rows

    @classmethod
    def from_config(cls, config: Config) -> ParquetArchive:
        return cls(ArchiveSettings.from_config(config))

    async def archive_ohlcv(
        self,
        store: CandleStore,
        venue: str,
        older_than: str | int,
        *,
        prune: bool = False,
        hook: StepHook | None = None,
    ) -> ArchiveReport:
        """Move every closed month of ``venue``'s candles that ends before ``older_than``.

        Without ``prune`` the months are written and verified and stay in the database too.

        Raises:
            UsageError: the store is not PostgreSQL, ``older_than`` is in the future, the path
                cannot be written, or the dataset holds a file of a newer schema version.
            ArchiveWriteError: a file could not be written (disk full); nothing was pruned.
        """
        from data_collector.storage.postgres import PostgresCandleStore
        from data_collector.storage.postgres_archive import PostgresArchiveSide

        cutoff = cutoff_ms(older_than)
        if not isinstance(store, PostgresCandleStore):
            raise UsageError(
                "archive: the Parquet tier moves data out of PostgreSQL; database.url is not one"
            )
        started = time.perf_counter()
        await asyncio.to_thread(check_writable, self.root)
        side = PostgresArchiveSide(store)
        await side.ensure_archived_kind()
        report = ArchiveReport()
        instruments = {i.id: i for i in await store.instruments(venue)}
        coverage = await store.venue_coverage(venue, 0, cutoff)
        for (iid, timeframe), ranges in sorted(coverage.items()):
            instrument = instruments[iid]
            months = sorted(
                {
                    ym
                    for r in ranges
                    if r.kind == "data"
                    for ym in months_between(r.start_ms, min(r.end_ms, cutoff))
                }
            )
            for year, month in months:
                key = MonthKey(venue, instrument.market_type, timeframe, instrument.symbol, year, month)
                if key.end_ms <= cutoff:
                    await self._move(side, iid, key, ranges, prune, hook, report)
        report.elapsed_s = time.perf_counter() - started
        return report

    async def _move(
        self,
        side: PostgresArchiveSide,
        iid: int,
        key: MonthKey,
        ranges: list[CoverageRange],
        prune: bool,
        hook: StepHook | None,
        report: ArchiveReport,
    ) -> None:
        from data_collector.storage.postgres_archive import MoveMismatch

        code = timeframe_code(key.timeframe)
        held = await side.read_range(iid, code, key.start_ms, key.end_ms)
        if not len(held):
            return
        directory = key.directory(self.root)
        path = directory / FILE_NAME
        manifest = Manifest.load(directory / MANIFEST_NAME)
        existing = await asyncio.to_thread(_verified_or_none, path, manifest)
        if existing is None and any(
            r.kind == "archived" and r.start_ms < key.end_ms and r.end_ms > key.start_ms for r in ranges
        ):
            report.failed.append(
                f"{key}: part of the month is archived, but {path} does not match its manifest; "
                "left as it is (restore the file)"
            )
            return
        want = existing.union(held) if existing is not None else held
        if existing is None or manifest is None or manifest.sha256 != want.content_hash():
            manifest = await asyncio.to_thread(
                write_month, self.root, key, want, row_group_rows=self._row_group_rows, before_rename=hook
            )
            report.months_written += 1
            report.bytes_written += manifest.bytes
        if hook is not None:
            hook("verify", str(path))
        back = await asyncio.to_thread(_verified_or_none, path, manifest)
        if back is None:
            report.failed.append(f"{key}: {path} read back does not match its manifest; not pruned")
            return
        report.months_verified += 1
        report.rows_archived += len(back)
        if not prune:
            return
        try:
            report.rows_pruned += await side.prune(iid, code, key.start_ms, key.end_ms, back, hook)
        except MoveMismatch as exc:
            report.failed.append(f"{key}: {exc}; not pruned")
            return
        report.months_pruned += 1

    def read_ohlcv(self, instrument: Instrument, timeframe: str, start_ms: int, end_ms: int) -> CandleColumns:
        """The archived candles of ``[start_ms, end_ms)``, sorted by time (blocking file reads).

        Raises:
            NewerSchemaError: a file was written by a newer schema version.
        """
        parts = []
        for year, month in months_between(start_ms, end_ms):
            key = MonthKey(
                instrument.exchange, instrument.market_type, timeframe, instrument.symbol, year, month
            )
            path = key.directory(self.root) / FILE_NAME
            if path.exists():
                parts.append(read_file(path, start_ms, end_ms))
        if not parts:
            return CandleColumns.empty()
        if len(parts) == 1:
            return parts[0]
        return CandleColumns(
            np.concatenate([p.ts for p in parts]),
            {k: np.concatenate([p.values[k] for p in parts]) for k in CANDLE_FIELDS},
        )


def _verified_or_none(path: Path, manifest: Manifest | None) -> CandleColumns | None:
    """The file's rows if it reads back with the manifest's row count and content hash."""
    if manifest is None or not path.exists():
        return None
    try:
        back = read_file(path)
    except UsageError:
        raise
    except PermanentError:
        return None
    if len(back) != manifest.rows or back.content_hash() != manifest.sha256:
        return None
    return back


async def load_ohlcv_tiers(
    store: CandleStore,
    archive: ParquetArchive,
    instrument: Instrument,
    timeframe: str,
    start_ms: int,
    end_ms: int,
) -> pd.DataFrame:
    """Candles of ``[start_ms, end_ms)`` from PostgreSQL and the Parquet tier as one DataFrame
    (the shape of :meth:`CandleStore.load_frame`); where both hold a candle, the database's wins."""
    from data_collector.storage.postgres import PostgresCandleStore
    from data_collector.storage.postgres_archive import PostgresArchiveSide

    archived = await asyncio.to_thread(archive.read_ohlcv, instrument, timeframe, start_ms, end_ms)
    if not len(archived):
        return await store.load_frame(instrument.id, timeframe, start_ms, end_ms)
    if isinstance(store, PostgresCandleStore):
        code = timeframe_code(timeframe)
        held = await PostgresArchiveSide(store).read_range(instrument.id, code, start_ms, end_ms)
    else:
        rows = await store.load(instrument.id, timeframe, start_ms, end_ms)
        held = CandleColumns(
            np.array([r[0] for r in rows], np.int64),
            {k: np.array([r[i] for r in rows], np.float64) for i, k in enumerate(CANDLE_FIELDS, 1)},
        )
    return columns_frame(archived.union(held))


def columns_frame(columns: CandleColumns) -> pd.DataFrame:
    """Candle columns as the DataFrame :func:`~data_collector.storage.store.candles_frame` makes."""
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime(columns.ts, unit="ms", utc=True), name="time")
    return pd.DataFrame({k: columns.values[k] for k in CANDLE_FIELDS}, index=index)
