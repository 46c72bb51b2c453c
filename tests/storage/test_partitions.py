"""Monthly partitions of ohlcv and trades: made on demand, retired by DETACH + DROP after a verified
archive, and the resumable migration of tables made before partitioning (SIGKILLed part way)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pandas as pd
import pytest

from data_collector.config import load_config
from data_collector.errors import PermanentError
from data_collector.markets import HOUR_MS
from data_collector.storage import CandleBatch, CoverageRange, TradeBatch, TradeCoverage, open_store
from data_collector.storage import archive as tiers
from data_collector.storage.archive import ArchiveSettings, ParquetArchive, load_ohlcv_tiers
from data_collector.storage.postgres import OHLCV_COLUMNS, PostgresCandleStore
from data_collector.storage.postgres_migrate import migrate_ohlcv
from data_collector.storage.postgres_partitions import (
    create_partitions,
    lock_partitions,
    month_start_ms,
    next_month,
)
from data_collector.storage.trades import TRADE_COLUMNS
from tests.storage.test_storage_postgres import _blocked_pid
from tests.storage.test_trades_tables import EARLIER as OLD_TRADES_DDL
from tests.support.archive import (
    CUTOFF_MS,
    END_MS,
    START_MS,
    TIMEFRAME,
    VENUE,
    candles,
    seed,
    seed_trades,
    store_config,
    trades,
)
from tests.support.migrate import OLD_OHLCV_DDL
from tests.support.services import PG_ADMIN_DSN, PG_URL

ROOT = Path(__file__).resolve().parents[2]
JANUARY = START_MS + 10 * HOUR_MS


def _store(schema: str) -> PostgresCandleStore:
    store = open_store(load_config(store_config(PG_URL, schema)))
    assert isinstance(store, PostgresCandleStore)
    return store


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[PostgresCandleStore]:
    async with _store(pg_schema) as opened:
        yield opened


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    yield conn
    await conn.close()


async def _tables(admin: asyncpg.Connection, schema: str, table: str = "ohlcv") -> dict[str, str]:
    rows = await admin.fetch(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname LIKE $2 AND c.relkind IN ('r', 'p')",
        schema,
        f"{table}\\_%",
    ) + await admin.fetch(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        schema,
        table,
    )
    return {r[0]: r[1].decode() for r in rows}


async def _all_rows(admin: asyncpg.Connection, schema: str, table: str = "ohlcv") -> list[tuple[object, ...]]:
    columns = ", ".join(OHLCV_COLUMNS if table == "ohlcv" else TRADE_COLUMNS)
    query = f'SELECT {columns} FROM "{schema}".{table} ORDER BY 1, 2, 3'
    return [tuple(r) for r in await admin.fetch(query)]


async def test_writes_make_monthly_partitions_and_a_prune_drops_the_archived_ones(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, tmp_path: Path
) -> None:
    instrument = await seed(store)
    tables = await _tables(admin, pg_schema)
    assert tables == {
        "ohlcv": "p",
        "ohlcv_default": "r",
        "ohlcv_p202401": "r",
        "ohlcv_p202402": "r",
        "ohlcv_p202403": "r",
    }
    before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
    archive = ParquetArchive(ArchiveSettings(tmp_path))
    report = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)
    assert (report.months_pruned, report.failed) == (2, [])
    # January and February were detached and dropped whole; March stays.
    assert set(await _tables(admin, pg_schema)) == {"ohlcv", "ohlcv_default", "ohlcv_p202403"}
    after = await load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)
    pd.testing.assert_frame_equal(after, before)
    kinds = {r.kind for r in await store.coverage(instrument.id, TIMEFRAME) if r.end_ms <= CUTOFF_MS}
    assert kinds == {"archived", "empty"}


async def test_trade_months_are_partitions_and_a_prune_drops_the_archived_ones(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, tmp_path: Path
) -> None:
    instrument = await seed(store)
    await seed_trades(store, instrument)
    tables = await _tables(admin, pg_schema, "trades")
    assert tables == {
        "trades": "p",
        "trades_default": "r",
        "trades_p202401": "r",
        "trades_p202402": "r",
        "trades_p202403": "r",
    }
    assert await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".trades_default') == 0
    before = await store.load_trades_frame(instrument.id, START_MS, END_MS)
    coverage = await store.trade_coverage(instrument.id)
    # A partition's rows are not deleted one by one: the month is detached and dropped.
    await admin.execute(
        f"""CREATE FUNCTION "{pg_schema}".no_delete() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'a row was deleted'; END $$;
        CREATE TRIGGER no_delete BEFORE DELETE ON "{pg_schema}".trades
        FOR EACH ROW EXECUTE FUNCTION "{pg_schema}".no_delete()"""
    )
    archive = ParquetArchive(ArchiveSettings(tmp_path))
    report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=["trades"], prune=True)
    assert (report.months_pruned, report.failed) == (2, [])
    assert set(await _tables(admin, pg_schema, "trades")) == {"trades", "trades_default", "trades_p202403"}
    assert await store.trade_coverage(instrument.id) == coverage
    after = await tiers.load_trades_tiers(store, archive, instrument, START_MS, END_MS)
    pd.testing.assert_frame_equal(after, before)
    # A later write into a retired month (another pair's) makes its partition again.
    other = await store.ensure_instrument("kraken", "SOL/USD", base="SOL", quote="USD")
    feb = trades(5000, 5010)
    cover = [TradeCoverage(5000, 5010, feb[0][1], feb[-1][1] + 1)]
    assert (await store.write_trades([TradeBatch(other.id, feb, cover)])).written == 10
    assert await store.load_trades(other.id, START_MS, END_MS) == feb
    assert "trades_p202402" in await _tables(admin, pg_schema, "trades")


async def test_a_trade_month_shared_with_a_pair_not_archived_keeps_its_partition_and_their_rows(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, tmp_path: Path
) -> None:
    instrument = await seed(store)
    await seed_trades(store, instrument)
    other = await store.ensure_instrument("kraken", "SOL/USD", base="SOL", quote="USD")
    theirs = trades(100, 110)  # January
    cover = [TradeCoverage(100, 110, theirs[0][1], theirs[-1][1] + 1)]
    await store.write_trades([TradeBatch(other.id, theirs, cover)])
    before = await store.load_trades_frame(instrument.id, START_MS, END_MS)
    archive = ParquetArchive(ArchiveSettings(tmp_path))
    report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=["trades"], prune=True)
    assert (report.months_pruned, report.failed) == (2, [])
    # January holds kraken's trades: SOL's are deleted instead; February was dropped whole.
    tables = set(await _tables(admin, pg_schema, "trades"))
    assert tables == {"trades", "trades_default", "trades_p202401", "trades_p202403"}
    assert await store.load_trades(other.id, START_MS, END_MS) == theirs
    assert await store.load_trades(instrument.id, START_MS, CUTOFF_MS) == []
    after = await tiers.load_trades_tiers(store, archive, instrument, START_MS, END_MS)
    pd.testing.assert_frame_equal(after, before)


async def test_sigkill_before_the_retiring_commit_keeps_partitions_and_coverage(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, tmp_path: Path
) -> None:
    instrument = await seed(store)
    before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
    coverage = await store.coverage(instrument.id, TIMEFRAME)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.archive",
        PG_URL,
        pg_schema,
        str(tmp_path),
        "drop",
        "ohlcv",
        cwd=ROOT,
    )
    assert await asyncio.wait_for(proc.wait(), 120) == -9
    # Detached and dropped, not committed: the partition, its rows and its coverage are all back.
    assert "ohlcv_p202401" in await _tables(admin, pg_schema)
    assert await store.coverage(instrument.id, TIMEFRAME) == coverage
    pd.testing.assert_frame_equal(await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS), before)
    archive = ParquetArchive(ArchiveSettings(tmp_path))
    assert (await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)).failed == []
    assert set(await _tables(admin, pg_schema)) == {"ohlcv", "ohlcv_default", "ohlcv_p202403"}
    after = await load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)
    pd.testing.assert_frame_equal(after, before)


async def test_a_month_shared_with_series_not_archived_keeps_its_partition_and_their_rows(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, tmp_path: Path
) -> None:
    instrument = await seed(store)
    other = await store.ensure_instrument("kraken", "SOL/USD", base="SOL", quote="USD")
    theirs = candles(START_MS, START_MS + 48 * HOUR_MS)
    await store.write(
        [CandleBatch(other.id, TIMEFRAME, theirs, [CoverageRange(START_MS, START_MS + 48 * HOUR_MS, "data")])]
    )
    before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
    archive = ParquetArchive(ArchiveSettings(tmp_path))
    report = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)
    assert (report.months_pruned, report.failed) == (2, [])
    # January holds kraken's rows: deleted key by key instead; February was dropped.
    assert set(await _tables(admin, pg_schema)) == {
        "ohlcv",
        "ohlcv_default",
        "ohlcv_p202401",
        "ohlcv_p202403",
    }
    assert await store.load(other.id, TIMEFRAME, START_MS, END_MS) == theirs
    assert await store.load(instrument.id, TIMEFRAME, START_MS, CUTOFF_MS) == []
    after = await load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)
    pd.testing.assert_frame_equal(after, before)


async def test_writes_into_a_month_retired_by_another_store_are_kept(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, tmp_path: Path
) -> None:
    instrument = await seed(store)  # this store has seen January's partition
    async with _store(pg_schema) as other:
        await ParquetArchive(ArchiveSettings(tmp_path)).archive_ohlcv(other, VENUE, CUTOFF_MS, prune=True)
    late = await store.ensure_instrument(VENUE, "ETH/USDT", base="ETH", quote="USDT")
    first = candles(START_MS, START_MS + 5 * HOUR_MS)
    cover = [CoverageRange(START_MS, START_MS + 5 * HOUR_MS, "data")]
    assert (await store.write([CandleBatch(late.id, TIMEFRAME, first, cover)])).written == 5
    # The month had no partition: the rows went to the default one, and a store that looks
    # again makes January's partition and moves them into it.
    async with _store(pg_schema) as fresh:
        more = candles(START_MS + 5 * HOUR_MS, START_MS + 9 * HOUR_MS)
        cover = [CoverageRange(START_MS + 5 * HOUR_MS, START_MS + 9 * HOUR_MS, "data")]
        assert (await fresh.write([CandleBatch(late.id, TIMEFRAME, more, cover)])).written == 4
    assert await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv_default') == 0
    assert await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv_p202401') == 9
    assert await store.load(late.id, TIMEFRAME, START_MS, CUTOFF_MS) == first + more
    assert await store.load(instrument.id, TIMEFRAME, START_MS, CUTOFF_MS) == []


async def _old_layout(admin: asyncpg.Connection, schema: str) -> dict[str, list[tuple[object, ...]]]:
    """A schema as main made it before partitioning, filled by a store: three candle series over
    months, and two pairs' trades (in the earlier column order); the rows of each table."""
    await admin.execute(OLD_OHLCV_DDL.replace("{s}", f'"{schema}"'))
    await admin.execute(OLD_TRADES_DDL.replace("{t}", f'"{schema}".'))
    async with _store(schema) as old:
        instrument = await seed(old)
        other = await old.ensure_instrument(VENUE, "ETH/USDT", base="ETH", quote="USDT")
        span = (START_MS - 40 * 24 * HOUR_MS, START_MS + 3 * HOUR_MS)
        await old.write([CandleBatch(other.id, TIMEFRAME, candles(*span), [CoverageRange(*span, "data")])])
        await old.write(
            [CandleBatch(instrument.id, "1d", candles(START_MS, START_MS + 24 * HOUR_MS)[:1], [])]
        )
        await seed_trades(old, instrument)
        eth = trades(4000, 4500)  # late January to early February
        cover = [TradeCoverage(4000, 4500, eth[0][1], eth[-1][1] + 1)]
        await old.write_trades([TradeBatch(other.id, eth, cover)])
    assert await _tables(admin, schema) == {"ohlcv": "r"}
    assert await _tables(admin, schema, "trades") == {"trades": "r"}
    return {t: await _all_rows(admin, schema, t) for t in ("ohlcv", "trades")}


@pytest.mark.parametrize("step", ["2", "swap", "trades:2", "swap:trades"])
async def test_migration_sigkilled_part_way_then_rerun_keeps_every_row(
    admin: asyncpg.Connection, pg_schema: str, tmp_path: Path, step: str
) -> None:
    rows = await _old_layout(admin, pg_schema)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.migrate", PG_URL, pg_schema, step, cwd=ROOT
    )
    assert await asyncio.wait_for(proc.wait(), 120) == -9
    # Killed in the second series' move (rolled back: one series moved) or in the swap (rolled
    # back: all moved, not swapped): every row in exactly one table. ohlcv goes first: when the
    # kill is in trades, ohlcv is migrated already.
    table = "trades" if "trades" in step else "ohlcv"
    moved = await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".{table}_next')
    left = await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".{table}')
    total = len(rows[table])
    assert moved + left == total and (0 < moved < total if "swap" not in step else left == 0)
    if table == "trades":
        assert (await _tables(admin, pg_schema))["ohlcv"] == "p"
    # A collector refuses the half-migrated schema, with one line saying how to finish.
    with pytest.raises(PermanentError, match="migrate-partitions"):
        async with _store(pg_schema):
            pass
    store = _store(pg_schema)
    try:
        report = await migrate_ohlcv(store)
    finally:
        await store.close()
    assert report.rows_moved == left + (len(rows["trades"]) if table == "ohlcv" else 0)
    for name in ("ohlcv", "trades"):
        assert (await _tables(admin, pg_schema, name))[name] == "p"
        assert f"{name}_next" not in await _tables(admin, pg_schema, name)
        assert await _all_rows(admin, pg_schema, name) == rows[name]
    # The collector works on it: writes into new months, reads, archive with prune drops months.
    async with _store(pg_schema) as again:
        instrument = await again.get_instrument(VENUE, "SOL/USDT")
        assert instrument is not None
        before = await again.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
        trades_before = await again.load_trades_frame(instrument.id, START_MS, END_MS)
        late = candles(END_MS, END_MS + 3 * HOUR_MS)
        batch = CandleBatch(
            instrument.id, TIMEFRAME, late, [CoverageRange(END_MS, END_MS + 3 * HOUR_MS, "data")]
        )
        assert (await again.write([batch])).written == 3
        again_trades = trades(0, 10)
        cover = [TradeCoverage(0, 10, START_MS, again_trades[-1][1] + 1)]
        assert (await again.write_trades([TradeBatch(instrument.id, again_trades, cover)])).written == 0
        archive = ParquetArchive(ArchiveSettings(tmp_path))
        report_archive = await archive.archive(
            again, VENUE, CUTOFF_MS, data_types=["ohlcv", "trades"], prune=True
        )
        assert report_archive.failed == []
        after = await load_ohlcv_tiers(again, archive, instrument, TIMEFRAME, START_MS, END_MS)
        pd.testing.assert_frame_equal(after, before)
        trades_after = await tiers.load_trades_tiers(again, archive, instrument, START_MS, END_MS)
        pd.testing.assert_frame_equal(trades_after, trades_before)
        assert await migrate_ohlcv(again) == type(report)(already=("ohlcv", "trades"))
    # January held only SOL's and ETH's archived trades: dropped whole, as was February.
    assert set(await _tables(admin, pg_schema, "trades")) == {"trades", "trades_default", "trades_p202403"}


async def test_a_store_works_on_the_old_layout_and_prunes_by_delete(
    admin: asyncpg.Connection, pg_schema: str, tmp_path: Path
) -> None:
    await _old_layout(admin, pg_schema)
    async with _store(pg_schema) as store:
        instrument = await store.get_instrument(VENUE, "SOL/USDT")
        assert instrument is not None
        before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
        archive = ParquetArchive(ArchiveSettings(tmp_path))
        report = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)
        assert (report.months_pruned, report.failed) == (5, [])  # SOL Jan-Feb, ETH Nov-Jan
        after = await load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)
        pd.testing.assert_frame_equal(after, before)
    assert await _tables(admin, pg_schema) == {"ohlcv": "r"}


APRIL_MS = 1_711_929_600_000  # 2024-04-01


def _month_after_march(n: int) -> int:
    """The start of the ``n``-th month after March 2024 (0: April)."""
    ym = (2024, 4)
    for _ in range(n):
        ym = next_month(*ym)
    return month_start_ms(*ym)


@pytest.mark.parametrize("data_type", ["ohlcv", "trades"])
async def test_retiring_a_month_while_ingest_runs_into_another_loses_nothing_and_blocks_boundedly(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, tmp_path: Path, data_type: str
) -> None:
    """A collector (another process: here a thread with its own loop and pool) writes a new month
    with each write (so it makes a partition each time: the DDL most likely to meet the retiring
    lock) while archive --prune retires January and February. Its writes wait for the retiring
    transaction's lock (seen waiting in pg_stat_activity while that transaction is held open at
    its last step) and go on once it commits: no error (no deadlock; the store's command timeout
    bounds every wait), no row lost on either side."""
    instrument = await seed(store)
    await seed_trades(store, instrument)
    before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
    trades_before = await store.load_trades_frame(instrument.id, START_MS, END_MS)
    lock_held, writer_blocked, stop = threading.Event(), threading.Event(), threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    async def ingest() -> None:
        async with _store(pg_schema) as collector:
            other = await collector.ensure_instrument(VENUE, "ETH/USDT", base="ETH", quote="USDT")

            async def watch() -> None:
                await asyncio.to_thread(lock_held.wait, 60)
                await _blocked_pid(pg_schema, "")  # a write of ours waits on the retiring lock
                writer_blocked.set()

            watcher = asyncio.create_task(watch())
            n = 0
            while not stop.is_set() or n < 3:
                if data_type == "ohlcv":
                    span = (_month_after_march(n), _month_after_march(n) + HOUR_MS)
                    batch = CandleBatch(other.id, TIMEFRAME, candles(*span), [CoverageRange(*span, "data")])
                    written.append((await collector.write([batch])).written)
                else:
                    page = [
                        (i, _month_after_march(n) + i % 10 * 1000, 1.0, 1.0, i, i, False)
                        for i in range(10 * n, 10 * n + 10)
                    ]
                    cover = [TradeCoverage(10 * n, 10 * n + 10, page[0][1], page[-1][1] + 1)]
                    written.append(
                        (await collector.write_trades([TradeBatch(other.id, page, cover)])).written
                    )
                n += 1
            await watcher

    def run_ingest() -> None:
        try:
            asyncio.run(ingest())
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    def hook(at: str, _what: str) -> None:
        # Inside the retiring transaction, after DETACH + DROP, before the commit.
        if at == "drop" and not lock_held.is_set():
            lock_held.set()
            assert writer_blocked.wait(60), "no write waited on the retiring transaction"

    thread = threading.Thread(target=run_ingest)
    thread.start()
    try:
        archive = ParquetArchive(ArchiveSettings(tmp_path))
        report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=[data_type], prune=True, hook=hook)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 120)
    assert errors == [] and writer_blocked.is_set()
    assert (report.months_pruned, report.failed) == (2, [])
    tables = set(await _tables(admin, pg_schema, data_type))
    assert {f"{data_type}_p202401", f"{data_type}_p202402"}.isdisjoint(tables)
    assert f"{data_type}_p202403" in tables and len(tables) == 3 + len(written)
    # Every write of the collector is stored, once.
    other = await store.get_instrument(VENUE, "ETH/USDT")
    assert other is not None and len(written) >= 3 and set(written) == {1 if data_type == "ohlcv" else 10}
    if data_type == "ohlcv":
        assert len(await store.load(other.id, TIMEFRAME, APRIL_MS, APRIL_MS + 10**10)) == len(written)
        after = await load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)
        pd.testing.assert_frame_equal(after, before)
    else:
        assert len(await store.load_trades(other.id, APRIL_MS, APRIL_MS + 10**10)) == 10 * len(written)
        after = await tiers.load_trades_tiers(store, archive, instrument, START_MS, END_MS)
        pd.testing.assert_frame_equal(after, trades_before)


@pytest.mark.parametrize("table", ["ohlcv", "trades"])
async def test_making_a_partition_waits_on_the_parent_before_it_touches_a_partition(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, table: str
) -> None:
    """The retiring transaction locks the parent and then every partition; a writer making a
    month's partition must take the parent first too, or it can hold the default partition (read
    to find stray rows) while it waits for the parent: a deadlock. Here the parent is held, and
    the writer, blocked, must hold no lock on any partition."""
    holder = await asyncpg.connect(PG_ADMIN_DSN)
    maker = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await holder.execute("BEGIN")
        await holder.execute(f'LOCK TABLE ONLY "{pg_schema}".{table} IN ACCESS EXCLUSIVE MODE')

        async def make() -> None:
            async with maker.transaction():
                await create_partitions(maker, pg_schema, table, [(2030, 1)])

        task = asyncio.create_task(make())
        pid = maker.get_server_pid()
        while not await admin.fetchval(  # the condition: the maker waits on a lock
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            assert not task.done(), task
            await asyncio.sleep(0.01)
        held = await admin.fetch(
            "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = $1 AND l.granted AND c.relnamespace = $2::regnamespace AND c.relname LIKE $3",
            pid,
            f'"{pg_schema}"',
            f"{table}\\_%",
        )
        assert [r[0] for r in held] == []
        await holder.execute("COMMIT")
        await asyncio.wait_for(task, 30)
        assert f"{table}_p203001" in await _tables(admin, pg_schema, table)
    finally:
        await holder.close()
        await maker.close()


@pytest.mark.parametrize("table", ["ohlcv", "trades"])
async def test_a_store_starting_while_a_partition_is_made_does_not_deadlock(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str, table: str
) -> None:
    """A store's start runs the schema's DDL (``CREATE INDEX IF NOT EXISTS`` locks the table) and
    then makes the default partition (the partitions' lock); a writer making a month's partition
    holds that lock and then waits for the table. A start that took the table first deadlocked
    with it, and PostgreSQL aborted one of the two (seen under load in CI: a streamer's trade
    writes beside a backfill starting). Here the maker's side holds the lock; the start must wait
    for it before it touches the table, so the maker gets the table and both finish."""
    maker = await asyncpg.connect(PG_ADMIN_DSN)
    starting = _store(pg_schema)
    try:
        await maker.execute("BEGIN")
        await lock_partitions(maker, pg_schema, table)  # as a maker of a month's partition holds it
        task = asyncio.create_task(starting.initialize())
        while not await admin.fetchval(  # the condition: the start waits on an advisory lock
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid <> $1",
            maker.get_server_pid(),
        ):
            assert not task.done(), task
            await asyncio.sleep(0.01)
        await asyncio.wait_for(
            maker.execute(f'LOCK TABLE ONLY "{pg_schema}".{table} IN ACCESS EXCLUSIVE MODE'), 30
        )
        await maker.execute("COMMIT")
        await asyncio.wait_for(task, 30)
    finally:
        await maker.close()
        await starting.close()
