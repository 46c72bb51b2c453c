"""PostgreSQL-only behaviour: failures mid-transaction, concurrency, database creation, errors."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from data_collector.config import load_config
from data_collector.errors import ConfigError, PermanentError, ServerUnavailableError, TransientError
from data_collector.markets import MINUTE_MS
from data_collector.storage import CandleBatch, CoverageRange, StoreSettings, open_store
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.postgres_partitions import create_partitions
from tests.support.candles import batch, candles
from tests.support.services import PG_ADMIN_DSN, PG_URL, free_port


def _config(schema: str, url: str = PG_URL, **database: Any) -> Any:
    return load_config({"database": {"url": url, "schema": schema, **database}, "logging": {"file": None}})


def _settings(schema: str, url: str = PG_URL, **database: Any) -> StoreSettings:
    """Built without a config: the store takes only the settings it uses."""
    return StoreSettings(url=url, db_schema=schema, **database)


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[PostgresCandleStore]:
    async with PostgresCandleStore(_settings(pg_schema)) as s:
        yield s


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        yield conn
    finally:
        await conn.close()


async def _iid(store: PostgresCandleStore) -> int:
    return (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id


async def _blocked_pid(schema: str, needle: str) -> int:
    """The backend of our store that waits on a lock in a statement containing ``needle``."""
    # A connection of its own: inside a transaction, pg_stat_activity is a frozen snapshot.
    monitor = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return await _poll_blocked(monitor, schema, needle)
    finally:
        await monitor.close()


async def _poll_blocked(monitor: asyncpg.Connection, schema: str, needle: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = await monitor.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'data_collector' "
            "AND wait_event_type = 'Lock' AND query LIKE $1 AND query LIKE $2",
            f'%"{schema}"%',
            f"%{needle}%",
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no store backend blocked in {needle!r}")


async def test_pool_follows_the_performance_keys(pg_schema: str) -> None:
    config = _config(pg_schema)
    config.performance.db_pool_size = 3
    config.performance.db_max_overflow = 2
    config.performance.db_pool_recycle = 120
    async with PostgresCandleStore(StoreSettings.from_config(config)) as store:
        pool: Any = store._require_engine().pool
        assert (pool.size(), pool._max_overflow, pool._recycle, pool._pre_ping) == (3, 2, 120, True)


async def test_terminated_connection_mid_transaction_leaves_nothing(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str
) -> None:
    iid = await _iid(store)
    await store.write([batch(iid, 0, 10)])
    # Hold the coverage row the next write must merge with, so that it stops mid-transaction
    # after its candles went in.
    lock = admin.transaction()
    await lock.start()
    await admin.execute(f'SELECT * FROM "{pg_schema}".coverage FOR UPDATE')
    task = asyncio.create_task(store.write([batch(iid, 10, 10)]))
    pid = await _blocked_pid(pg_schema, "coverage")
    await admin.execute("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises(TransientError):
        await task
    await lock.rollback()
    assert await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv') == 10
    assert await store.coverage(iid, "1m") == [CoverageRange(0, 10 * MINUTE_MS, "data")]
    retry = await store.write([batch(iid, 10, 10)])
    assert retry.written == 10
    assert await store.coverage(iid, "1m") == [CoverageRange(0, 20 * MINUTE_MS, "data")]


async def test_a_call_that_hangs_is_cut_off_by_the_command_timeout(
    admin: asyncpg.Connection, pg_schema: str
) -> None:
    async with PostgresCandleStore(_settings(pg_schema, command_timeout_s=0.5)) as store:
        iid = await _iid(store)
        await store.write([batch(iid, 0, 10)])
        lock = admin.transaction()
        await lock.start()
        await admin.execute(f'LOCK TABLE "{pg_schema}".coverage IN EXCLUSIVE MODE')
        try:
            with pytest.raises(TransientError):
                await store.write([batch(iid, 10, 10)])
        finally:
            await lock.rollback()
        assert await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv') == 10
        assert (await store.write([batch(iid, 10, 10)])).written == 10


async def test_rows_appearing_after_the_probe_fall_back_to_the_staging_path(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str
) -> None:
    iid = await _iid(store)
    # The month's partition as a write makes it, so that the rows below go there, not to the default.
    await create_partitions(admin, pg_schema, "ohlcv", [(1970, 1)])
    other = admin.transaction()
    await other.start()
    await admin.copy_records_to_table(
        "ohlcv", schema_name=pg_schema, records=[(iid, 1, *c) for c in candles(0, 5)]
    )
    # The probe cannot see the uncommitted rows, so the write takes the COPY path and waits on them.
    task = asyncio.create_task(store.write([batch(iid, 0, 10)]))
    await _blocked_pid(pg_schema, "COPY")
    await other.commit()
    result = await task
    assert (result.written, result.skipped) == (5, 5)
    assert await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv') == 10
    assert await store.coverage(iid, "1m") == [CoverageRange(0, 10 * MINUTE_MS, "data")]


async def test_concurrent_writers_with_overlapping_batches(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str
) -> None:
    iid = await _iid(store)
    rng = random.Random(7)
    plans = [[(rng.randrange(0, 2000), rng.randrange(50, 400)) for _ in range(15)] for _ in range(2)]

    async def writer(plan: list[tuple[int, int]]) -> int:
        written = 0
        for start, n in plan:
            written += (await store.write([batch(iid, start, n), batch(iid, start + n // 2, n)])).written
        return written

    totals = await asyncio.gather(*(writer(p) for p in plans))
    expected = {m for plan in plans for start, n in plan for m in range(start, start + n + n // 2)}
    assert sum(totals) == len(expected)
    count, distinct = await admin.fetchrow(
        f'SELECT count(*), count(DISTINCT ts) FROM "{pg_schema}".ohlcv WHERE instrument_id = $1', iid
    )
    assert count == distinct == len(expected)
    covered = await store.missing_ranges(iid, "1m", 0, 3000 * MINUTE_MS)
    missing = {m for s, e in covered for m in range(s // MINUTE_MS, e // MINUTE_MS)}
    assert missing == set(range(3000)) - expected


async def test_concurrent_initialize_of_a_new_schema(admin: asyncpg.Connection) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    stores = [PostgresCandleStore(_settings(schema)) for _ in range(4)]
    try:
        await asyncio.gather(*(s.initialize() for s in stores))
        await asyncio.gather(*(s.initialize() for s in stores))
        tables = await admin.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", schema
        )
        # instruments, ohlcv, ohlcv_default, coverage, timeframes, ohlcv_view, price_ohlcv_view,
        # trades, trades_default, trade_coverage, trades_view, funding, funding_view, open_interest,
        # open_interest_view
        assert tables == 15
    finally:
        for s in stores:
            await s.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_view_columns_and_types(
    store: PostgresCandleStore, admin: asyncpg.Connection, pg_schema: str
) -> None:
    iid = await _iid(store)
    await store.write([CandleBatch(iid, "1M", [(1_704_067_200_000, 1.0, 2.0, 0.5, 1.5, 9.0)])])
    types = await admin.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'ohlcv_view' ORDER BY ordinal_position",
        pg_schema,
    )
    assert [(r[0], r[1]) for r in types] == [
        ("exchange", "text"),
        ("symbol", "text"),
        ("timeframe", "text"),
        ("ts", "timestamp with time zone"),
        ("open", "double precision"),
        ("high", "double precision"),
        ("low", "double precision"),
        ("close", "double precision"),
        ("volume", "double precision"),
    ]
    row = await admin.fetchrow(f'SELECT * FROM "{pg_schema}".ohlcv_view')
    assert row["timeframe"] == "1M"
    assert row["ts"].isoformat() == "2024-01-01T00:00:00+00:00"
    assert (row["symbol"], row["close"]) == ("SOL/USDT", 1.5)


async def test_initialize_creates_a_missing_database(admin: asyncpg.Connection) -> None:
    name = f"dc_test_{uuid.uuid4().hex[:10]}"
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    try:
        async with PostgresCandleStore(_settings("public", url=url)) as store:
            iid = await _iid(store)
            assert (await store.write([batch(iid, 0, 3)])).written == 3
        assert await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) == 1
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_missing_database_without_createdb_is_a_clear_permanent_error(
    admin: asyncpg.Connection,
) -> None:
    role = f"dc_nocreate_{uuid.uuid4().hex[:8]}"
    name = f"dc_test_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        url = f"postgresql+asyncpg://{role}@127.0.0.1:5432/{name}"
        store = PostgresCandleStore(_settings("public", url=url))
        with pytest.raises(PermanentError) as info:
            await store.initialize()
        await store.close()
        message = str(info.value)
        assert f"database '{name}' does not exist" in message and "createdb" in message
        assert await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) is None
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')


async def test_unreachable_server_names_host_and_port_but_not_the_password() -> None:
    port = free_port()
    url = f"postgresql+asyncpg://postgres:hunter2@127.0.0.1:{port}/test"
    store = open_store(_config("public", url=url, connect_timeout_s=2))
    assert "hunter2" not in repr(store)
    with pytest.raises(ServerUnavailableError) as info:
        await store.initialize()
    await store.close()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "hunter2" not in message
    assert "\n" not in message
    assert message == f"PostgreSQL at 127.0.0.1:{port}/test is unreachable: connection refused"


@pytest.mark.parametrize("schema", ["Bad", "x; drop table y", "1abc", 'a"b', ""])
def test_schema_names_are_validated(schema: str) -> None:
    with pytest.raises(ConfigError, match="schema"):
        open_store(_config(schema))


def test_unsupported_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="database.url"):
        open_store({"database": {"url": "sqlite://"}, "logging": {"file": None}})


class FreezableProxy:
    """A TCP relay to PostgreSQL that can stop relaying: a server that went silent mid-call."""

    def __init__(self) -> None:
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        #: Freeze as soon as the client sends a chunk this large (COPY data), mid-call.
        self.freeze_at_bytes: int | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upstream and self.freeze_at_bytes is not None and len(data) >= self.freeze_at_bytes:
                        self.freeze_at_bytes = None
                        self.freeze()
                    await self.thawed.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw_and_drop_all(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()
        self.thawed.set()

    async def close(self) -> None:
        self.thaw_and_drop_all()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_server_gone_silent_mid_copy_is_cut_off_and_the_pool_recovers(
    pg_schema: str, admin: asyncpg.Connection
) -> None:
    proxy = FreezableProxy()
    await proxy.start()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/test"
    try:
        async with PostgresCandleStore(_settings(pg_schema, url=url, command_timeout_s=1)) as store:
            iid = await _iid(store)
            await store.write([batch(iid, 0, 10)])
            proxy.freeze_at_bytes = 16_384  # the COPY data of the next write
            with pytest.raises(TransientError):
                # The bound here only keeps a broken build from hanging the suite.
                await asyncio.wait_for(store.write([batch(iid, 10, 20_000)]), 30)
            assert not proxy.thawed.is_set()  # it was cut off mid-COPY, not before
            proxy.thaw_and_drop_all()
            assert await admin.fetchval(f'SELECT count(*) FROM "{pg_schema}".ohlcv') == 10
            retry = await store.write([batch(iid, 10, 20_000)])
            assert retry.written == 20_000
    finally:
        await proxy.close()
