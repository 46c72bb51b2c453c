"""The Parquet tier: verified moves out of PostgreSQL, SIGKILL at each step, reads across tiers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_collector.config import load_config
from data_collector.storage import (
    CandleBatch,
    CandleStore,
    CoverageRange,
    Gap,
    Instrument,
    TradeBatch,
    TradeCoverage,
    open_store,
)
from data_collector.storage.archive import (
    ArchiveSettings,
    ParquetArchive,
    load_ohlcv_tiers,
    load_trades_tiers,
)
from data_collector.storage.parquet_files import (
    FILE_NAME,
    MANIFEST_NAME,
    Columns,
    DataSpec,
    Manifest,
    MonthKey,
)
from tests.support.archive import (
    CUTOFF_MS,
    END_MS,
    GAP,
    START_MS,
    SYMBOL,
    TIMEFRAME,
    TRADE_STEP_MS,
    VENUE,
    archive_and_die,
    seed,
    seed_trades,
    store_config,
)
from tests.support.services import PG_URL

ROOT = Path(__file__).resolve().parents[2]
JANUARY = MonthKey(VENUE, "spot", TIMEFRAME, SYMBOL, 2024, 1)
FEBRUARY = MonthKey(VENUE, "spot", TIMEFRAME, SYMBOL, 2024, 2)
TRADES_JANUARY = MonthKey(VENUE, "spot", None, SYMBOL, 2024, 1, "trades")


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[CandleStore]:
    async with open_store(load_config(store_config(PG_URL, pg_schema))) as opened:
        yield opened


async def _everything(store: CandleStore, archive: ParquetArchive, instrument: Instrument) -> pd.DataFrame:
    return await load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)


async def _seeded(store: CandleStore, path: Path) -> tuple[Instrument, pd.DataFrame, ParquetArchive]:
    """The seeded instrument, its candles as read before any move, and an archive at ``path``."""
    instrument = await seed(store)
    before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
    return instrument, before, ParquetArchive(ArchiveSettings(path))


async def _db_rows(store: CandleStore, instrument: Instrument) -> int:
    return len(await store.load(instrument.id, TIMEFRAME, START_MS, END_MS))


async def test_archive_with_prune_then_load_equals_the_data_before(
    store: CandleStore, tmp_path: Path
) -> None:
    instrument, before, archive = await _seeded(store, tmp_path)
    report = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)
    done = (report.months_written, report.months_verified, report.months_pruned, report.failed)
    assert done == (2, 2, 2, [])
    # Only March is left in the database; the whole range reads back row for row.
    assert await _db_rows(store, instrument) == (END_MS - CUTOFF_MS) // 3_600_000
    pd.testing.assert_frame_equal(await _everything(store, archive, instrument), before)
    # Archived ranges are covered (a re-run fetches nothing there) and reported as archived.
    assert await store.missing_ranges(instrument.id, TIMEFRAME, START_MS, END_MS) == []
    gaps = await store.find_gaps(instrument.id, TIMEFRAME, START_MS, END_MS)
    assert gaps == [
        Gap(START_MS, GAP[0], "archived"),
        Gap(GAP[0], GAP[1], "exchange"),
        Gap(GAP[1], CUTOFF_MS, "archived"),
    ]
    # A second run has nothing to do.
    again = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)
    assert (again.months_written, again.months_pruned, again.failed) == (0, 0, [])


async def test_the_files_are_sorted_zstd_with_statistics_version_and_manifest(
    store: CandleStore, tmp_path: Path
) -> None:
    await seed(store)
    await ParquetArchive(ArchiveSettings(tmp_path)).archive_ohlcv(store, VENUE, CUTOFF_MS)
    directory = JANUARY.directory(tmp_path)
    assert directory.relative_to(tmp_path).as_posix() == (
        "venue=binance/market=spot/data_type=ohlcv/timeframe=1h/symbol=SOL%2FUSDT/year=2024/month=01"
    )
    meta = pq.ParquetFile(directory / FILE_NAME).metadata
    column = meta.row_group(0).column(0)
    assert column.compression == "ZSTD" and column.statistics.has_min_max
    assert meta.metadata[b"data_collector.schema_version"] == b"1"
    manifest = Manifest.load(directory / MANIFEST_NAME)
    assert manifest is not None and manifest.rows == meta.num_rows == 31 * 24 - 10
    assert manifest.min_ts_ms == START_MS and manifest.max_ts_ms == JANUARY.end_ms - 3_600_000
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


async def test_without_prune_both_tiers_hold_the_months_and_reads_have_no_duplicate(
    store: CandleStore, tmp_path: Path
) -> None:
    instrument, before, archive = await _seeded(store, tmp_path)
    report = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS)
    assert (report.months_verified, report.months_pruned) == (2, 0)
    assert await _db_rows(store, instrument) == len(before)
    pd.testing.assert_frame_equal(await _everything(store, archive, instrument), before)


async def test_a_corrupted_file_is_caught_by_verification_and_not_pruned(
    store: CandleStore, tmp_path: Path
) -> None:
    instrument = await seed(store)
    before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)

    def flip_bytes(step: str, path: str) -> None:
        if step == "verify":
            data = bytearray(Path(path).read_bytes())
            middle = len(data) // 2
            data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
            Path(path).write_bytes(bytes(data))

    archive = ParquetArchive(ArchiveSettings(tmp_path))
    report = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True, hook=flip_bytes)
    assert report.months_pruned == 0 and len(report.failed) == 2
    assert "does not match its manifest; not pruned" in report.failed[0]
    assert await _db_rows(store, instrument) == len(before)
    assert await store.missing_ranges(instrument.id, TIMEFRAME, START_MS, END_MS) == []
    assert not [
        g for g in await store.find_gaps(instrument.id, TIMEFRAME, START_MS, END_MS) if g.kind == "archived"
    ]
    # The next run writes the months again from the database and moves them.
    again = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)
    assert (again.months_written, again.months_pruned, again.failed) == (2, 2, [])
    pd.testing.assert_frame_equal(await _everything(store, archive, instrument), before)


@pytest.mark.parametrize("data_type", ["ohlcv", "trades"])
@pytest.mark.parametrize("step", ["write", "verify", "drop"])
async def test_sigkill_at_each_step_then_a_rerun_converges(
    store: CandleStore, pg_schema: str, tmp_path: Path, step: str, data_type: str
) -> None:
    instrument, before, archive = await _seeded(store, tmp_path)
    await seed_trades(store, instrument)
    trades_before = await store.load_trades_frame(instrument.id, START_MS, END_MS)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.archive",
        PG_URL,
        pg_schema,
        str(tmp_path),
        step,
        data_type,
        cwd=ROOT,
    )
    assert await asyncio.wait_for(proc.wait(), 120) == -9
    # Killed: every candle and trade is still in PostgreSQL or in Parquet (or both), none twice.
    pd.testing.assert_frame_equal(await _everything(store, archive, instrument), before)
    trades_now = await load_trades_tiers(store, archive, instrument, START_MS, END_MS)
    pd.testing.assert_frame_equal(trades_now, trades_before)
    report = await archive.archive(store, VENUE, CUTOFF_MS, prune=True)
    assert report.failed == []
    pd.testing.assert_frame_equal(await _everything(store, archive, instrument), before)
    trades_now = await load_trades_tiers(store, archive, instrument, START_MS, END_MS)
    pd.testing.assert_frame_equal(trades_now, trades_before)
    assert await _db_rows(store, instrument) == (END_MS - CUTOFF_MS) // 3_600_000
    assert (
        len(await store.load_trades(instrument.id, START_MS, END_MS)) == (END_MS - CUTOFF_MS) // TRADE_STEP_MS
    )
    kinds = {g.kind for g in await store.find_gaps(instrument.id, TIMEFRAME, START_MS, END_MS)}
    assert kinds == {"archived", "exchange"}


async def test_trades_move_with_prune_keep_their_coverage_and_read_back(
    store: CandleStore, tmp_path: Path
) -> None:
    instrument = await seed(store)
    total = await seed_trades(store, instrument)
    coverage = await store.trade_coverage(instrument.id)
    before = await store.load_trades_frame(instrument.id, START_MS, END_MS)
    archive = ParquetArchive(ArchiveSettings(tmp_path))
    report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=["trades"], prune=True)
    assert (report.months_pruned, report.failed) == (2, [])
    assert report.rows_pruned == (CUTOFF_MS - START_MS) // TRADE_STEP_MS
    assert len(await store.load_trades(instrument.id, START_MS, END_MS)) == total - report.rows_pruned
    # The id-keyed coverage is unchanged: a run plans nothing for the archived months.
    assert await store.trade_coverage(instrument.id) == coverage
    pd.testing.assert_frame_equal(
        await load_trades_tiers(store, archive, instrument, START_MS, END_MS), before
    )
    middle = (START_MS + 20 * 86_400_000, CUTOFF_MS + 86_400_000)  # from inside January to March
    want = _slice(before, *middle)
    pd.testing.assert_frame_equal(await load_trades_tiers(store, archive, instrument, *middle), want)
    path = TRADES_JANUARY.directory(tmp_path) / FILE_NAME
    assert "data_type=trades/symbol=SOL%2FUSDT/year=2024/month=01" in path.as_posix() and path.exists()
    assert await _db_rows(store, instrument) == (END_MS - START_MS) // 3_600_000 - 10  # candles untouched


def _slice(frame: pd.DataFrame, start_ms: int, end_ms: int) -> pd.DataFrame:
    start, end = pd.Timestamp(start_ms, unit="ms", tz="UTC"), pd.Timestamp(end_ms, unit="ms", tz="UTC")
    return frame[(frame.index >= start) & (frame.index < end)]


async def test_the_kill_helper_archives_everything_when_the_step_never_comes(
    store: CandleStore, pg_schema: str, tmp_path: Path
) -> None:
    """The kill runs above prove something only if the helper moves data when it is not killed."""
    instrument = await seed(store)
    await archive_and_die(PG_URL, pg_schema, str(tmp_path), "never", "ohlcv")
    assert await _db_rows(store, instrument) == (END_MS - CUTOFF_MS) // 3_600_000
    assert (FEBRUARY.directory(tmp_path) / FILE_NAME).exists()


@pytest.mark.parametrize("data_type", ["ohlcv", "trades"])
async def test_a_lost_file_of_an_archived_month_is_never_overwritten(
    store: CandleStore, tmp_path: Path, data_type: str
) -> None:
    """Rows written into a pruned month after the move, and its file gone: the next run must not
    write a file of the new rows alone (that would drop the archived ones for good)."""
    instrument, _, archive = await _seeded(store, tmp_path)
    await seed_trades(store, instrument)
    await archive.archive(store, VENUE, CUTOFF_MS, data_types=[data_type], prune=True)
    month = JANUARY if data_type == "ohlcv" else TRADES_JANUARY
    (month.directory(tmp_path) / FILE_NAME).unlink()
    late = START_MS + 3_600_000
    if data_type == "ohlcv":
        candle = (late, 1.0, 1.0, 1.0, 1.0, 1.0)
        await store.write(
            [CandleBatch(instrument.id, TIMEFRAME, [candle], [CoverageRange(late, late + 3_600_000, "data")])]
        )
    else:
        trade = (10**9, late, 1.0, 1.0, 1, 1, False)
        await store.write_trades(
            [TradeBatch(instrument.id, [trade], [TradeCoverage(10**9, 10**9 + 1, late, late + 1)])]
        )
    report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=[data_type], prune=True)
    assert len(report.failed) == 1 and "part of the month is archived" in report.failed[0], report.failed
    assert not (month.directory(tmp_path) / FILE_NAME).exists()
    # The late row stays in the database (the other type was not archived: its row is there too).
    assert len(await store.load(instrument.id, TIMEFRAME, late, late + 1)) == 1
    assert len(await store.load_trades(instrument.id, late, late + 1)) == 1


async def test_an_archived_range_is_restored_into_the_database_on_request(
    store: CandleStore, tmp_path: Path
) -> None:
    instrument, before, archive = await _seeded(store, tmp_path)
    await archive.archive(store, VENUE, CUTOFF_MS, prune=True)
    restored = await archive.restore_ohlcv(store, instrument, TIMEFRAME, START_MS, FEBRUARY.start_ms)
    assert restored == (FEBRUARY.start_ms - START_MS) // 3_600_000 - 10  # January, less the gap
    january = await store.load_frame(instrument.id, TIMEFRAME, START_MS, FEBRUARY.start_ms)
    pd.testing.assert_frame_equal(january, _slice(before, START_MS, FEBRUARY.start_ms))
    gaps = await store.find_gaps(instrument.id, TIMEFRAME, START_MS, END_MS)
    assert gaps == [Gap(GAP[0], GAP[1], "exchange"), Gap(FEBRUARY.start_ms, CUTOFF_MS, "archived")]
    pd.testing.assert_frame_equal(await _everything(store, archive, instrument), before)
    # Archiving again moves January out once more, with nothing duplicated.
    again = await archive.archive(store, VENUE, CUTOFF_MS, prune=True)
    assert (again.months_pruned, again.failed) == (1, [])
    pd.testing.assert_frame_equal(await _everything(store, archive, instrument), before)


async def test_trade_months_take_turns_while_candle_months_move_alongside(
    store: CandleStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trade months (a busy pair's is millions of rows, held whole) are bounded on their own:
    with one trade slot the two closed trade months never read at once, while both candle
    months do (8 moves in flight)."""
    import data_collector.storage.archive as archive_module
    from data_collector.storage.postgres_archive import PostgresArchiveSide

    instrument = await seed(store)
    await seed_trades(store, instrument)
    monkeypatch.setattr(archive_module, "TRADE_MOVES_IN_FLIGHT", 1)
    inside = {"ohlcv": 0, "trades": 0}
    most = dict(inside)
    read_range = PostgresArchiveSide.read_range

    async def counted(self: PostgresArchiveSide, spec: DataSpec, *args: int) -> Columns:
        inside[spec.data_type] += 1
        most[spec.data_type] = max(most[spec.data_type], inside[spec.data_type])
        for _ in range(20):  # let every other ready move start its read meanwhile
            await asyncio.sleep(0)
        try:
            return await read_range(self, spec, *args)
        finally:
            inside[spec.data_type] -= 1

    monkeypatch.setattr(PostgresArchiveSide, "read_range", counted)
    archive = ParquetArchive(ArchiveSettings(tmp_path, moves_in_flight=8))
    report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=["ohlcv", "trades"])
    assert report.failed == [] and report.months_verified == 4, report.summary()
    assert most == {"ohlcv": 2, "trades": 1}
