"""The Parquet tier: closed months of candles and trades moved out of PostgreSQL, verified, read back.

```python
async with OptimizedDataCollector("config.yaml") as collector:
    report = await collector.archive(older_than="90d", prune=True)
    frame = await collector.load_ohlcv("SOL/USDT", "1m", "2023-01-01", "2024-06-01")  # both tiers
```

A move of one month of one (instrument, timeframe) whose coverage says ``'data'``, or of one
instrument's trades (by trade time):

1. **write**: the month's rows are read by binary COPY (merged with the rows of the month's
   existing file, if any) and written atomically (:mod:`~data_collector.storage.parquet_files`).
2. **verify**: the file is read back; its row count and content hash must equal the manifest's.
3. **drop** (``prune`` only): one transaction reads the range again, checks that every row is in
   the file with the same values, deletes the range and marks its coverage ``'archived'``
   (:mod:`~data_collector.storage.postgres_archive`).

A crash between any two steps leaves the rows in PostgreSQL, in Parquet, or in both; a re-run
finds the month's rows still in the database and moves them again. Archived candle ranges count
as covered, so a collector run never fetches them again, and ``find_gaps`` reports them as
``'archived'``; trades keep their id-keyed coverage, which stays true across the two tiers.

With ``prune``, candle and trade months are retired after all are verified: a month whose
``ohlcv`` (or ``trades``) partition holds only verified rows is detached and dropped whole;
otherwise (other venues' rows share it, or the table is not partitioned) the verified ranges are
deleted key by key.

Long because it is the whole move (plan, write, verify, retire or prune, restore) and the reads
across both tiers of every series, each step beside the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.fs as pafs

from data_collector.errors import PermanentError, UsageError
from data_collector.storage.archive_series import FUNDING_SPEC, fields_frame, series_for, series_of
from data_collector.storage.base import CandleBatch, CoverageRange, Instrument
from data_collector.storage.columns import columns_frame as columns_frame
from data_collector.storage.columns import trade_columns_frame as trade_columns_frame
from data_collector.storage.parquet_files import (
    FILE_NAME,
    MANIFEST_NAME,
    OHLCV_SPEC,
    TRADES_SPEC,
    ZSTD_LEVEL,
    Columns,
    DataSpec,
    Manifest,
    MonthKey,
    StepHook,
    check_writable,
    months_between,
    read_file,
    write_month,
)
from data_collector.storage.parquet_remote import RemoteRoot, is_remote
from data_collector.storage.ranges import clip, merge_coverage
from data_collector.storage.store import CandleStore

log = logging.getLogger(__name__)

#: What :meth:`ParquetArchive.archive` moves by default.
ARCHIVED_TYPES = ("ohlcv", "trades", "funding", "open_interest")
#: Months moved at once (see :meth:`ParquetArchive.archive`). A move waits a fifth to a quarter
#: of its time for its four fsyncs and much of the rest for PostgreSQL, so more moves than cores
#: keep both cores busy: 26 months of 1m candles on the shared 2-core machine (load 5-7), runs
#: taking turns, medians of 8: 3 in flight 0.93M rows/s, 6 0.97M, 8 1.01M (0.70, 0.69 and 0.65
#: us of CPU per row); PERFORMANCE.md, *Archive throughput*.
MOVES_IN_FLIGHT = 8
#: Of them, trade months at once: a busy pair's month of trades is millions of rows held whole in
#: memory (a month of 1m candles is 44,640 rows, 2 MB).
TRADE_MOVES_IN_FLIGHT = 3

if TYPE_CHECKING:
    import pandas as pd

    from data_collector.config import Config
    from data_collector.storage.postgres_archive import PostgresArchiveSide


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """The ``archive`` section: where the dataset lives and how its files are cut."""

    #: A local directory (created on first use), or an object store URI (``s3://bucket/prefix``,
    #: :mod:`~data_collector.storage.parquet_remote`).
    path: Path | str
    #: Rows per Parquet row group: a month of 1m candles (44,640) is one group, read in one go.
    row_group_rows: int = 1_048_576
    #: The files' zstd level (the benchmark compares levels; the config has no key for it).
    zstd_level: int = ZSTD_LEVEL
    #: Months moved at once (the benchmark compares counts; the config has no key for it).
    moves_in_flight: int = MOVES_IN_FLIGHT

    @classmethod
    def from_config(cls, config: Config) -> ArchiveSettings:
        return cls(path=dataset_path(config.archive.path), row_group_rows=config.archive.row_group_rows)


def dataset_path(path: str) -> Path | str:
    """``archive.path`` as given: a URI stays a string (``Path`` would fold ``s3://`` into ``s3:/``)."""
    return path if is_remote(path) else Path(path)


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
        self._remote = RemoteRoot.open(str(settings.path)) if is_remote(settings.path) else None
        self.root: PurePath = self._remote.root if self._remote else Path(settings.path).absolute()
        self._row_group_rows = settings.row_group_rows
        self._zstd_level = settings.zstd_level
        self._moves_in_flight = settings.moves_in_flight

    @classmethod
    def from_config(cls, config: Config) -> ParquetArchive:
        return cls(ArchiveSettings.from_config(config))

    async def archive(
        self,
        store: CandleStore,
        venue: str | Sequence[str],
        older_than: str | int,
        *,
        data_types: Sequence[str] = ARCHIVED_TYPES,
        prune: bool = False,
        hook: StepHook | None = None,
    ) -> ArchiveReport:
        """Move every closed month of ``venue``'s series (candles of every price type, trades,
        funding, open interest) that ends before ``older_than``. ``venue``: one venue label or
        several (the spot and the perpetual venue in one run, so months they share in the
        ``ohlcv`` partitions can be dropped whole).

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
        await asyncio.to_thread(self._check_writable)
        side = PostgresArchiveSide(store)
        await side.ensure_tables()
        report = ArchiveReport()
        venues = [venue] if isinstance(venue, str) else list(venue)
        instruments = {i.id: i for v in venues for i in await store.instruments(v)}
        moves: list[_Move] = []
        for label in venues:
            moves += await _series_moves(store, label, instruments, cutoff, data_types)
        if TRADES_SPEC.data_type in data_types:
            moves += await _trade_moves(store, side, instruments, cutoff)
        # Months move moves_in_flight (MOVES_IN_FLIGHT) at a time: one's COPY runs in PostgreSQL
        # while another's file is written in a thread and a third waits for its fsync. Workers take the next
        # move from one iterator, so the number of tasks stays bounded however many months
        # there are; trade months also take one of TRADE_MOVES_IN_FLIGHT slots (memory).
        todo = iter(moves)
        trade_slots = asyncio.Semaphore(TRADE_MOVES_IN_FLIGHT)
        # With prune, candle and trade months are retired after all are verified (a partition is
        # dropped whole); funding and open interest are pruned as each month is verified.
        retiring: dict[tuple[str, int, int], list[_Verified]] = {}

        async def worker() -> None:
            for move in todo:
                async with trade_slots if move.spec is TRADES_SPEC else contextlib.nullcontext():
                    await self._move(side, move, prune, hook, report, retiring)

        try:
            async with asyncio.TaskGroup() as group:
                # A move holds one pooled connection at a time: no more moves than connections,
                # or one would wait for a connection past the store's timeout.
                for _ in range(min(self._moves_in_flight, store.connections)):
                    group.create_task(worker())
        except BaseExceptionGroup as errors:  # the first error, as one line, not a group
            raise errors.exceptions[0] from None
        for (_, year, month), verified in sorted(retiring.items()):
            await self._retire(side, year, month, verified, hook, report)
        report.elapsed_s = time.perf_counter() - started
        return report

    async def _retire(
        self,
        side: PostgresArchiveSide,
        year: int,
        month: int,
        verified: list[_Verified],
        hook: StepHook | None,
        report: ArchiveReport,
    ) -> None:
        """Drop the month's partition whole when only verified rows are in it, else delete the
        verified ranges key by key (other venues' rows share the partition, or the table is not
        partitioned)."""
        from data_collector.storage.postgres_archive import MoveMismatch, NotRetirable

        expected = {v.move.db_key: (v.rows, v.sha256) for v in verified}
        try:
            pruned = await side.retire_month(year, month, expected, hook, verified[0].move.spec)
        except (NotRetirable, MoveMismatch) as exc:
            log.info("%04d-%02d: partition kept (%s); deleting its archived ranges", year, month, exc)
        else:
            report.rows_pruned += pruned
            report.months_pruned += len(verified)
            return
        for v in verified:
            back = await asyncio.to_thread(self._verified_or_none, v.move.spec, v.path, v.manifest)
            if back is None:
                report.failed.append(f"{v.move.month}: {v.path} no longer matches its manifest; not pruned")
                continue
            await self._prune(side, v.move, back, hook, report)

    async def _prune(
        self,
        side: PostgresArchiveSide,
        move: _Move,
        back: Columns,
        hook: StepHook | None,
        report: ArchiveReport,
    ) -> None:
        from data_collector.storage.postgres_archive import MoveMismatch

        key = move.month
        try:
            # Not ``report.rows_pruned += await ...``: that reads the count before the await and
            # would lose what a concurrent move adds meanwhile.
            coverage = None if move.code is None else (move.db_key[0], move.code)
            pruned = await side.prune(move.spec, move.db_key, key.start_ms, key.end_ms, back, hook, coverage)
        except MoveMismatch as exc:
            report.failed.append(f"{key}: {exc}; not pruned")
            return
        report.rows_pruned += pruned
        report.months_pruned += 1

    async def archive_ohlcv(
        self,
        store: CandleStore,
        venue: str | Sequence[str],
        older_than: str | int,
        *,
        prune: bool = False,
        hook: StepHook | None = None,
    ) -> ArchiveReport:
        """:meth:`archive` of the candles only (every price type)."""
        return await self.archive(store, venue, older_than, data_types=["ohlcv"], prune=prune, hook=hook)

    async def _move(
        self,
        side: PostgresArchiveSide,
        move: _Move,
        prune: bool,
        hook: StepHook | None,
        report: ArchiveReport,
        retiring: dict[tuple[str, int, int], list[_Verified]],
    ) -> None:
        key, spec = move.month, move.spec
        held = await side.read_range(spec, move.db_key, key.start_ms, key.end_ms)
        if not len(held):
            return
        directory = key.directory(self.root)
        path = directory / FILE_NAME
        manifest = await asyncio.to_thread(self._manifest, directory / MANIFEST_NAME)
        existing = await asyncio.to_thread(self._verified_or_none, spec, path, manifest)
        if existing is None and move.partly_archived:
            report.failed.append(
                f"{key}: part of the month is archived, but {path} does not match its manifest; "
                "left as it is (restore the file)"
            )
            return
        want = existing.union(held) if existing is not None else held
        if existing is None or manifest is None or manifest.sha256 != want.content_hash():
            manifest = await asyncio.to_thread(self._write, key, want, hook)
            report.months_written += 1
            report.bytes_written += manifest.bytes
        if hook is not None:
            hook("verify", str(path))
        back = await asyncio.to_thread(self._verified_or_none, spec, path, manifest)
        if back is None:
            report.failed.append(f"{key}: {path} read back does not match its manifest; not pruned")
            return
        report.months_verified += 1
        report.rows_archived += len(back)
        if not prune:
            return
        if spec is not OHLCV_SPEC and spec is not TRADES_SPEC:
            await self._prune(side, move, back, hook, report)
            return
        same = back.take(np.isin(back.key, held.key))
        if len(same) != len(held) or same.content_hash() != held.content_hash():
            report.failed.append(f"{key}: {path} does not hold the database's rows; not pruned")
            return
        assert manifest is not None  # the file verified against it
        verified = _Verified(move, path, manifest, len(held), held.content_hash())
        retiring.setdefault((spec.data_type, key.year, key.month), []).append(verified)

    async def restore_ohlcv(
        self, store: CandleStore, instrument: Instrument, timeframe: str, start_ms: int, end_ms: int
    ) -> int:
        """Copy the archived candles of ``[start_ms, end_ms)`` back into the database, with
        ``'data'`` coverage over the archived ranges (which then count as stored there); return
        the rows written. The files stay; a later ``archive --prune`` moves the range out again.
        """
        archived = [r for r in await store.coverage(instrument.id, timeframe) if r.kind == "archived"]
        ranges = clip(archived, start_ms, end_ms)
        if not ranges:
            return 0
        series = series_for(instrument.id, timeframe)
        read = partial(
            self.read, OHLCV_SPEC, instrument, series.timeframe, start_ms, end_ms, series.data_type
        )
        rows = await asyncio.to_thread(read)
        ts = rows.ts
        batches = []
        for r in ranges:
            inside = rows.take((ts >= r.start_ms) & (ts < r.end_ms))
            candles = list(zip(*(inside.arrays[name].tolist() for name in OHLCV_SPEC.names), strict=True))
            batches.append(
                CandleBatch(instrument.id, timeframe, candles, [CoverageRange(r.start_ms, r.end_ms, "data")])
            )
        return (await store.write(batches)).written

    def read(
        self,
        spec: DataSpec,
        instrument: Instrument,
        timeframe: str | None,
        start_ms: int,
        end_ms: int,
        data_type: str | None = None,
    ) -> Columns:
        """The archived rows with ``start_ms <= ts < end_ms``, sorted by key (blocking file reads);
        ``data_type``: the files' (default the spec's; ``ohlcv_mark`` for mark candles).

        Raises:
            NewerSchemaError: a file was written by a newer schema version.
        """
        parts = []
        for year, month in months_between(start_ms, end_ms):
            key = _month(instrument, timeframe, year, month, data_type or spec.data_type)
            path = key.directory(self.root) / FILE_NAME
            if self._exists(path):
                parts.append(read_file(spec, path, start_ms, end_ms, self._filesystem))
        return Columns.concat(spec, parts)

    def read_ohlcv(self, instrument: Instrument, timeframe: str, start_ms: int, end_ms: int) -> Columns:
        """The archived candles of ``[start_ms, end_ms)``, sorted by time (blocking file reads)."""
        return self.read(OHLCV_SPEC, instrument, timeframe, start_ms, end_ms)

    # The file operations, on a local directory or an object store (blocking).

    @property
    def _filesystem(self) -> pafs.FileSystem | None:
        return self._remote.filesystem if self._remote else None

    def _check_writable(self) -> None:
        if self._remote:
            self._remote.check_writable()
        else:
            check_writable(Path(self.root))

    def _exists(self, path: PurePath) -> bool:
        return self._remote.exists(PurePosixPath(path)) if self._remote else Path(path).exists()

    def _manifest(self, path: PurePath) -> Manifest | None:
        return self._remote.load_manifest(PurePosixPath(path)) if self._remote else Manifest.load(Path(path))

    def _write(self, key: MonthKey, columns: Columns, hook: StepHook | None) -> Manifest:
        rows, level = self._row_group_rows, self._zstd_level
        if self._remote:
            return self._remote.write_month(
                key, columns, row_group_rows=rows, zstd_level=level, before_upload=hook
            )
        return write_month(
            Path(self.root), key, columns, row_group_rows=rows, zstd_level=level, before_rename=hook
        )

    def _verified_or_none(self, spec: DataSpec, path: PurePath, manifest: Manifest | None) -> Columns | None:
        """The file's rows if it reads back with the manifest's row count and content hash."""
        if manifest is None or not self._exists(path):
            return None
        try:
            back = read_file(spec, path, filesystem=self._filesystem)
        except UsageError:
            raise
        except PermanentError:
            return None
        if len(back) != manifest.rows or back.content_hash() != manifest.sha256:
            return None
        return back


@dataclass(frozen=True, slots=True)
class _Move:
    """One month to move: the data type, its rows' key in PostgreSQL, the file, and whether part
    of the month was already pruned (its file then must verify before anything is rewritten)."""

    spec: DataSpec
    db_key: tuple[int, ...]
    month: MonthKey
    partly_archived: bool
    #: The series' coverage code (None for trades, which have their own record).
    code: int | None = None


@dataclass(frozen=True, slots=True)
class _Verified:
    """A candle or trade month written and verified, to be retired: the database's rows of it then
    (count and content hash), which the retiring transaction must find unchanged."""

    move: _Move
    path: PurePath
    manifest: Manifest
    rows: int
    sha256: str


async def _series_moves(
    store: CandleStore, venue: str, instruments: dict[int, Instrument], cutoff: int, data_types: Sequence[str]
) -> list[_Move]:
    """A move per closed month of every series of ``venue`` whose coverage says ``'data'``
    (candles of every price type, funding, open interest; see :mod:`.archive_series`)."""
    grouped: dict[tuple[int, int], list[CoverageRange]] = {}
    for iid, code, row in await store._venue_coverage_rows(venue, 0, cutoff):
        grouped.setdefault((iid, code), []).append(row)
    moves = []
    for (iid, code), rows in sorted(grouped.items()):
        series = series_of(iid, code)
        if series is None or series.spec.data_type not in data_types or iid not in instruments:
            continue
        ranges = merge_coverage(rows)
        spans = [(r.start_ms, r.end_ms) for r in ranges if r.kind == "data"]
        for year, month in _closed_months(spans, cutoff):
            key = _month(instruments[iid], series.timeframe, year, month, series.data_type)
            partly = any(
                r.kind == "archived" and r.start_ms < key.end_ms and r.end_ms > key.start_ms for r in ranges
            )
            moves.append(_Move(series.spec, series.db_key, key, partly, code))
    return moves


async def _trade_moves(
    store: CandleStore, side: PostgresArchiveSide, instruments: dict[int, Instrument], cutoff: int
) -> list[_Move]:
    moves = []
    for instrument in instruments.values():
        spans = [(r.start_ms, r.end_ms) for r in await store.trade_coverage(instrument.id)]
        archived = await side.archived_trade_months(instrument.id)
        for year, month in _closed_months(spans, cutoff):
            key = _month(instrument, None, year, month, "trades")
            moves.append(_Move(TRADES_SPEC, (instrument.id,), key, key.start_ms in archived))
    return moves


def _month(instrument: Instrument, timeframe: str | None, year: int, month: int, data_type: str) -> MonthKey:
    return MonthKey(
        instrument.exchange, instrument.market_type, timeframe, instrument.symbol, year, month, data_type
    )


def _closed_months(spans: Sequence[tuple[int, int]], cutoff: int) -> list[tuple[int, int]]:
    """The months the spans touch that end at or before ``cutoff``, oldest first."""
    months = {ym for start, end in spans for ym in months_between(start, min(end, cutoff))}
    return sorted(ym for ym in months if _month_end(*ym) <= cutoff)


def _month_end(year: int, month: int) -> int:
    return MonthKey("", "", None, "", year, month).end_ms


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
    series = series_for(instrument.id, timeframe)
    read = partial(archive.read, OHLCV_SPEC, instrument, series.timeframe, start_ms, end_ms, series.data_type)
    archived = await asyncio.to_thread(read)
    if not len(archived):
        return await store.load_frame(instrument.id, timeframe, start_ms, end_ms)
    held = await _held(
        store, OHLCV_SPEC, series.db_key, start_ms, end_ms, partial(store.load, instrument.id, timeframe)
    )
    return await _seam(archived, held, columns_frame)


async def load_points_tiers(
    store: CandleStore,
    archive: ParquetArchive,
    instrument: Instrument,
    key: str,
    start_ms: int,
    end_ms: int,
) -> pd.DataFrame:
    """Funding rates (``key="funding"``) or open interest (``"oi:<period>"``) of
    ``[start_ms, end_ms)`` from PostgreSQL and the Parquet tier as one DataFrame (the shape of
    the store's ``load_funding_frame`` / ``load_open_interest_frame``); the database's row wins."""
    series = series_for(instrument.id, key)
    if series.spec is FUNDING_SPEC:
        frame = partial(store.load_funding_frame, instrument.id, start_ms, end_ms)
        load: Callable[[int, int], Awaitable[Sequence[Sequence[Any]]]] = partial(
            store.load_funding, instrument.id
        )
    else:
        period = str(series.timeframe)
        frame = partial(store.load_open_interest_frame, instrument.id, period, start_ms, end_ms)
        load = partial(store.load_open_interest, instrument.id, period)
    read = partial(archive.read, series.spec, instrument, series.timeframe, start_ms, end_ms)
    archived = await asyncio.to_thread(read)
    if not len(archived):
        return await frame()
    held = await _held(store, series.spec, series.db_key, start_ms, end_ms, load)
    return await _seam(archived, held, fields_frame)


async def load_trades_tiers(
    store: CandleStore, archive: ParquetArchive, instrument: Instrument, start_ms: int, end_ms: int
) -> pd.DataFrame:
    """Trades of ``[start_ms, end_ms)`` from PostgreSQL and the Parquet tier as one DataFrame
    (the shape of :meth:`CandleStore.load_trades_frame`), in id order; the database's row wins."""
    archived = await asyncio.to_thread(archive.read, TRADES_SPEC, instrument, None, start_ms, end_ms)
    if not len(archived):
        return await store.load_trades_frame(instrument.id, start_ms, end_ms)
    load = partial(store.load_trades, instrument.id)
    held = await _held(store, TRADES_SPEC, (instrument.id,), start_ms, end_ms, load)
    return await _seam(archived, held, trade_columns_frame)


async def _seam(
    archived: Columns, held: Columns, frame: Callable[[list[Columns]], pd.DataFrame]
) -> pd.DataFrame:
    """The one seam merge of every loader: the Parquet rows and the database's, the database's
    row winning where both hold a key, as consecutive pieces (:meth:`Columns.union_pieces`) that
    ``frame`` copies once into the DataFrame."""
    return await asyncio.to_thread(frame, archived.union_pieces(held))


async def _held(
    store: CandleStore,
    spec: DataSpec,
    db_key: tuple[int, ...],
    start_ms: int,
    end_ms: int,
    load: Callable[[int, int], Awaitable[Sequence[Sequence[Any]]]],
) -> Columns:
    """The database's rows as columns: binary COPY on PostgreSQL, ``load`` elsewhere."""
    from data_collector.storage.postgres import PostgresCandleStore
    from data_collector.storage.postgres_archive import PostgresArchiveSide

    if isinstance(store, PostgresCandleStore):
        return await PostgresArchiveSide(store).read_range(spec, db_key, start_ms, end_ms)
    rows = await load(start_ms, end_ms)  # tuples in the spec's field order
    return Columns(
        spec, {name: np.array([r[i] for r in rows], dtype) for i, (name, dtype) in enumerate(spec.fields)}
    )
