"""One test class run against every backend (PostgreSQL and SQLite), as saq does."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd
import pytest

from data_collector.config import load_config
from data_collector.errors import ClosedError, PermanentError, StoreNotInitializedError
from data_collector.markets import MINUTE_MS
from data_collector.storage import CandleBatch, CandleStore, CoverageRange, Gap, StoreSettings, open_store
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.sqlite import SqliteCandleStore
from tests.support.candles import batch, candles
from tests.support.services import PG_ADMIN_DSN, PG_URL, unique


@dataclass
class Backend:
    """A store plus raw SQL access behind its back (to corrupt or inspect what it wrote)."""

    name: str
    store: CandleStore
    table_prefix: str
    sqlite_path: str | None = None

    async def execute(self, sql: str, *args: Any) -> None:
        sql = sql.replace("{t}", self.table_prefix)
        if self.sqlite_path is not None:
            path = self.sqlite_path
            await asyncio.to_thread(_sqlite_execute, path, sql.replace("$1", "?").replace("$2", "?"), args)
            return
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def scalar(self, sql: str) -> Any:
        sql = sql.replace("{t}", self.table_prefix)
        if self.sqlite_path is not None:
            return await asyncio.to_thread(_sqlite_scalar, self.sqlite_path, sql)
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()


def _sqlite_execute(path: str, sql: str, args: tuple[Any, ...]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql, args)


def _sqlite_scalar(path: str, sql: str) -> Any:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.fixture(params=["postgres", "sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    schema = unique("t")
    if request.param == "postgres":
        # A schema of its own, created by initialize() and dropped after (pg_schema is async and
        # cannot be requested from a parametrised fixture).
        config = load_config({"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}})
        out = Backend("postgres", open_store(config), f'"{schema}".')
    else:
        path = tmp_path / "nested" / "candles.db"
        out = Backend("sqlite", open_store(StoreSettings(url=f"sqlite+aiosqlite:///{path}")), "", str(path))
    try:
        await out.store.initialize()
        yield out
    finally:
        await out.store.close()
        if request.param == "postgres":
            await out.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def sol(store: CandleStore) -> int:
    return (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id


class TestCandleStore:
    async def test_backend_matches_url(self, backend: Backend) -> None:
        expected = PostgresCandleStore if backend.name == "postgres" else SqliteCandleStore
        assert isinstance(backend.store, expected)

    async def test_initialize_is_idempotent(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        await backend.store.write([batch(iid, 0, 10)])
        await backend.store.initialize()
        await backend.store.initialize()
        assert len(await backend.store.load(iid, "1m", 0, 10 * MINUTE_MS)) == 10

    async def test_instrument_ids_are_stable(self, backend: Backend) -> None:
        store = backend.store
        first = await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")
        other = await store.ensure_instrument("binance", "BTC/USDT", base="BTC", quote="USDT")
        again = await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")
        assert first == again and first.id != other.id
        assert await store.get_instrument("binance", "SOL/USDT") == first
        assert await store.get_instrument("binance", "NOPE/USDT") is None
        await store.set_listing(first.id, 1_600_000_000_000)
        listed = await store.get_instrument("binance", "SOL/USDT")
        assert listed is not None and listed.listing_ms == 1_600_000_000_000

    async def test_concurrent_ensure_instrument_agrees(self, backend: Backend) -> None:
        ids = await asyncio.gather(*(sol(backend.store) for _ in range(8)))
        assert len(set(ids)) == 1

    async def test_write_twice_writes_nothing_the_second_time(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        batches = [batch(iid, 0, 500), batch(iid, 500, 500)]
        first = await backend.store.write(batches)
        second = await backend.store.write(batches)
        assert (first.written, first.skipped) == (1000, 0)
        assert (second.written, second.skipped) == (0, 1000)
        assert await backend.scalar("SELECT count(*) FROM {t}ohlcv") == 1000

    async def test_half_present_writes_only_the_new_half(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        await backend.store.write([batch(iid, 0, 100)])
        result = await backend.store.write([batch(iid, 50, 100)])
        assert (result.written, result.skipped) == (50, 50)
        assert await backend.scalar("SELECT count(*) FROM {t}ohlcv") == 150

    async def test_duplicates_within_a_batch_last_wins(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        rows = candles(0, 5) + [(2 * MINUTE_MS, 1.0, 1.0, 1.0, 7.0, 1.0)]
        result = await backend.store.write([CandleBatch(iid, "1m", rows)])
        assert (result.written, result.skipped) == (5, 1)
        loaded = await backend.store.load(iid, "1m", 0, 10 * MINUTE_MS)
        assert [c[0] for c in loaded] == [i * MINUTE_MS for i in range(5)]
        assert loaded[2][4] == 7.0

    async def test_forming_candle_is_overwritten_by_the_next_run(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        await backend.store.write([batch(iid, 0, 3, price=1.0, final=False)])
        rerun = await backend.store.write([batch(iid, 0, 3, price=2.0, final=False)])
        assert (rerun.written, rerun.skipped) == (3, 0)
        unchanged = await backend.store.write([batch(iid, 0, 3, price=2.0, final=False)])
        assert (unchanged.written, unchanged.skipped) == (0, 3)
        final = await backend.store.write([batch(iid, 0, 3, price=3.0)])
        assert (final.written, final.skipped) == (0, 3)  # final batches never overwrite
        assert [c[1] for c in await backend.store.load(iid, "1m", 0, 3 * MINUTE_MS)] == [2.0, 3.0, 4.0]

    async def test_coverage_merges_adjacent_ranges_of_a_kind(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        await backend.store.write([batch(iid, 20, 10), batch(iid, 0, 10)])
        await backend.store.write([batch(iid, 10, 10)])
        empty = CandleBatch(iid, "1m", [], [CoverageRange(30 * MINUTE_MS, 40 * MINUTE_MS, "empty")])
        await backend.store.write([empty])
        assert await backend.store.coverage(iid, "1m") == [
            CoverageRange(0, 30 * MINUTE_MS, "data"),
            CoverageRange(30 * MINUTE_MS, 40 * MINUTE_MS, "empty"),
        ]
        assert await backend.store.coverage(iid, "5m") == []
        # The stored rows were merged on write too, not just on read.
        assert await backend.scalar("SELECT count(*) FROM {t}coverage") == 2
        assert await backend.store.missing_ranges(iid, "1m", -5 * MINUTE_MS, 50 * MINUTE_MS) == [
            (-5 * MINUTE_MS, 0),
            (40 * MINUTE_MS, 50 * MINUTE_MS),
        ]

    async def test_find_gaps_tells_the_kinds_apart(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        await backend.store.write(
            [
                batch(iid, 0, 10),
                CandleBatch(iid, "1m", [], [CoverageRange(10 * MINUTE_MS, 15 * MINUTE_MS, "empty")]),
                batch(iid, 15, 10),
            ]
        )
        assert await backend.store.find_gaps(iid, "1m", 0, 30 * MINUTE_MS) == [
            Gap(10 * MINUTE_MS, 15 * MINUTE_MS, "exchange"),
            Gap(25 * MINUTE_MS, 30 * MINUTE_MS, "missing"),
        ]
        # Candles lost behind the coverage record's back are holes.
        await backend.execute("DELETE FROM {t}ohlcv WHERE ts >= $1 AND ts < $2", 3 * MINUTE_MS, 5 * MINUTE_MS)
        await backend.execute("DELETE FROM {t}ohlcv WHERE ts = $1", 24 * MINUTE_MS)
        assert await backend.store.find_gaps(iid, "1m", 0, 30 * MINUTE_MS) == [
            Gap(3 * MINUTE_MS, 5 * MINUTE_MS, "hole"),
            Gap(10 * MINUTE_MS, 15 * MINUTE_MS, "exchange"),
            Gap(24 * MINUTE_MS, 25 * MINUTE_MS, "hole"),
            Gap(25 * MINUTE_MS, 30 * MINUTE_MS, "missing"),
        ]

    async def test_venue_coverage_is_one_venue_merged_and_cut_to_the_range(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        btc = (await backend.store.ensure_instrument("binance", "BTC/USDT", base="BTC", quote="USDT")).id
        other = (
            await backend.store.ensure_instrument("sim-binance", "SOL/USDT", base="SOL", quote="USDT")
        ).id
        await backend.store.write(
            [batch(iid, 0, 10), batch(iid, 10, 5), batch(btc, 100, 10), batch(other, 0, 10)]
        )
        await backend.store.write(
            [CandleBatch(iid, "1m", [], [CoverageRange(15 * MINUTE_MS, 20 * MINUTE_MS, "empty")])]
        )
        assert await backend.store.venue_coverage("binance", 0, 50 * MINUTE_MS) == {
            (iid, "1m"): [
                CoverageRange(0, 15 * MINUTE_MS, "data"),
                CoverageRange(15 * MINUTE_MS, 20 * MINUTE_MS, "empty"),
            ]
        }
        assert set(await backend.store.venue_coverage("binance", 0, 200 * MINUTE_MS)) == {
            (iid, "1m"),
            (btc, "1m"),
        }
        assert await backend.store.venue_coverage("kraken", 0, 200 * MINUTE_MS) == {}
        spans = [(0, 5 * MINUTE_MS), (5 * MINUTE_MS, 30 * MINUTE_MS), (40 * MINUTE_MS, 50 * MINUTE_MS)]
        assert await backend.store.count_candles(iid, "1m", spans) == [5, 10, 0]
        assert await backend.store.count_candles(iid, "1m", []) == []
        # Per 4-minute cell from minute 2, inside two spans: the backend's one query and the
        # base class's count per piece agree.
        spans = [(3 * MINUTE_MS, 9 * MINUTE_MS), (12 * MINUTE_MS, 40 * MINUTE_MS)]
        want = {0: 3, 1: 3, 2: 2, 3: 1}  # candles at minutes 0..14
        assert (
            await backend.store.count_candles_per_cell(iid, "1m", spans, 2 * MINUTE_MS, 4 * MINUTE_MS) == want
        )
        assert (
            await CandleStore.count_candles_per_cell(
                backend.store, iid, "1m", spans, 2 * MINUTE_MS, 4 * MINUTE_MS
            )
            == want
        )

    async def test_load_latest_and_frame(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        assert await backend.store.latest_ts(iid, "1m") is None
        await backend.store.write([batch(iid, 0, 10)])
        assert await backend.store.latest_ts(iid, "1m") == 9 * MINUTE_MS
        assert await backend.store.load(iid, "1m", 2 * MINUTE_MS, 4 * MINUTE_MS) == candles(0, 10)[2:4]
        frame = await backend.store.load_frame(iid, "1m", 0, 10 * MINUTE_MS)
        assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
        assert isinstance(frame.index, pd.DatetimeIndex) and str(frame.index.tz) == "UTC"
        assert frame.index[1] == pd.Timestamp("1970-01-01 00:01", tz="UTC")
        assert frame["close"].iloc[0] == 100.5 and len(frame) == 10
        assert len(await backend.store.load_frame(iid, "1m", 100 * MINUTE_MS, 200 * MINUTE_MS)) == 0

    async def test_view_reads_like_the_exchange(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        await backend.store.write([CandleBatch(iid, "4h", candles(0, 1))])
        row = await backend.scalar("SELECT exchange || ' ' || symbol || ' ' || timeframe FROM {t}ohlcv_view")
        assert row == "binance SOL/USDT 4h"

    async def test_a_failing_write_leaves_nothing(self, backend: Backend) -> None:
        iid = await sol(backend.store)
        bad = batch(iid, 100, 3)
        bad.candles = [*bad.candles[:2], (102 * MINUTE_MS, 1.0, 1.0, 1.0, 1.0, None)]  # type: ignore[list-item]
        with pytest.raises(PermanentError):
            await backend.store.write([batch(iid, 0, 50), bad])
        assert await backend.scalar("SELECT count(*) FROM {t}ohlcv") == 0
        assert await backend.store.coverage(iid, "1m") == []
        result = await backend.store.write([batch(iid, 0, 50), batch(iid, 100, 3)])
        assert result.written == 53

    async def test_newest_candles_per_symbol_and_timeframe(self, backend: Backend) -> None:
        store = backend.store
        iid = await sol(store)
        eth = (await store.ensure_instrument("binance", "ETH/USDT", base="ETH", quote="USDT")).id
        other = (await store.ensure_instrument("kraken", "SOL/USDT", base="SOL", quote="USDT")).id
        await store.write(
            [
                batch(iid, 0, 10),
                CandleBatch(iid, "4h", candles(0, 1)),
                batch(eth, 5, 3),
                batch(other, 0, 500),  # another exchange's newer candles must not leak in
            ]
        )
        newest = await store.newest_candles(
            "binance", ["SOL/USDT", "ETH/USDT", "BTC/USDT"], ["1m", "4h", "1h"]
        )
        assert newest == {
            ("SOL/USDT", "1m"): 9 * MINUTE_MS,
            ("SOL/USDT", "4h"): 0,
            ("ETH/USDT", "1m"): 7 * MINUTE_MS,
        }
        assert await store.newest_candles("binance", [], ["1m"]) == {}

    async def test_server_version_names_the_real_version(self, backend: Backend) -> None:
        if backend.name == "postgres":
            shown = str(await backend.scalar("SHOW server_version")).split()[0]
            assert await backend.store.server_version() == f"PostgreSQL {shown}"
        else:
            assert await backend.store.server_version() == f"SQLite {sqlite3.sqlite_version}"

    async def test_close_is_idempotent_and_final(self, backend: Backend) -> None:
        await backend.store.close()
        await backend.store.close()
        with pytest.raises(ClosedError):
            await backend.store.latest_ts(1, "1m")


async def test_sqlite_creates_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "demo.db"
    async with SqliteCandleStore(StoreSettings(url=f"sqlite+aiosqlite:///{path}")) as store:
        await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")
    assert path.exists()


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_newest_candles_before_initialize_says_so(kind: str, tmp_path: Path) -> None:
    url = PG_URL if kind == "postgres" else f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    config = load_config({"database": {"url": url, "schema": unique("t")}, "logging": {"file": None}})
    store = open_store(config)
    try:
        with pytest.raises(StoreNotInitializedError) as info:
            await store.newest_candles("binance", ["SOL/USDT"], ["1m"])
    finally:
        await store.close()
    assert "initialize()" in str(info.value)


async def test_sqlite_opens_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    """The WAL switch on open waits for a writer's lock instead of failing with "database is locked".

    SQLite refuses that switch at once (no busy handler) while another connection holds a RESERVED
    lock on a rollback-journal file; CI saw it as a health check reading ``warn`` when two probes
    opened the same fresh file. The writer here holds its lock for 0.3 s, then commits.
    """
    path = tmp_path / "candles.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        writer.execute("CREATE TABLE t (x INTEGER)")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (1)")

        async def commit_later() -> None:
            await asyncio.sleep(0.3)  # the other writer's transaction: the scenario, not a wait
            await asyncio.to_thread(writer.execute, "COMMIT")

        committing = asyncio.create_task(commit_later())
        store = SqliteCandleStore(StoreSettings(url=f"sqlite+aiosqlite:///{path}", command_timeout_s=10))
        try:
            assert (await store.server_version()).startswith("SQLite ")
        finally:
            await store.close()
            await committing
        assert _sqlite_scalar(str(path), "PRAGMA journal_mode") == "wal"
    finally:
        writer.close()
