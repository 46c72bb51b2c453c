"""SQLite backend (``sqlite+aiosqlite:///path``): the embedded default, for machines with no servers.

Same API and tables as PostgreSQL (SQLite has no schemas, so ``database.db_schema`` is unused, and
``ohlcv_view.ts`` stays an integer in ms: ``datetime(ts / 1000, 'unixepoch')`` reads it). A write is
one ``BEGIN IMMEDIATE`` transaction of ``executemany`` ``INSERT … ON CONFLICT DO NOTHING`` (``DO
UPDATE`` for ``final=False`` batches) plus the coverage update: slower than COPY, equally atomic.
The file runs in WAL mode so that readers in other processes do not block the writer.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_random

from data_collector.errors import (
    ClosedError,
    ConfigError,
    PermanentError,
    StoreNotInitializedError,
    TransientError,
)
from data_collector.markets import CODE_TIMEFRAMES, TIMEFRAME_CODES, timeframe_code
from data_collector.storage.base import Candle, CandleBatch, CoverageRange, Instrument, WriteResult
from data_collector.storage.batching import PreparedWrite, prepare
from data_collector.storage.ranges import Span, cut_coverage, merge_spans
from data_collector.storage.sqlite_funding import FUNDING_DDL, SqliteFunding, SqliteOpenInterest
from data_collector.storage.sqlite_trades import TRADE_DDL, SqliteTrades
from data_collector.storage.store import CandleStore, StoreSettings
from data_collector.storage.url import parse_database_url

T = TypeVar("T")

_DDL = (
    """CREATE TABLE IF NOT EXISTS instruments (
        id INTEGER PRIMARY KEY,
        exchange TEXT NOT NULL,
        symbol TEXT NOT NULL,
        base TEXT NOT NULL,
        quote TEXT NOT NULL,
        market_type TEXT NOT NULL DEFAULT 'spot',
        listing_ms INTEGER,
        UNIQUE (exchange, symbol))""",
    """CREATE TABLE IF NOT EXISTS ohlcv (
        instrument_id INTEGER NOT NULL,
        timeframe INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        open REAL NOT NULL,
        high REAL NOT NULL,
        low REAL NOT NULL,
        close REAL NOT NULL,
        volume REAL NOT NULL,
        PRIMARY KEY (instrument_id, timeframe, ts)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS coverage (
        instrument_id INTEGER NOT NULL,
        timeframe INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('data', 'empty')),
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL CHECK (end_ms > start_ms))""",
    "CREATE INDEX IF NOT EXISTS coverage_key ON coverage (instrument_id, timeframe, start_ms)",
    "CREATE TABLE IF NOT EXISTS timeframes (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    """CREATE VIEW IF NOT EXISTS ohlcv_view AS
        SELECT i.exchange, i.symbol, t.name AS timeframe, o.ts, o.open, o.high, o.low, o.close, o.volume
        FROM ohlcv o
        JOIN instruments i ON i.id = o.instrument_id
        JOIN timeframes t ON t.code = o.timeframe""",
    """CREATE VIEW IF NOT EXISTS price_ohlcv_view AS
        SELECT i.exchange, i.symbol, p.price, t.name AS timeframe, o.ts, o.open, o.high, o.low, o.close, o.volume
        FROM ohlcv o
        JOIN instruments i ON i.id = o.instrument_id
        JOIN timeframes t ON t.code = o.timeframe % 100
        JOIN (SELECT 0 AS n, 'last' AS price UNION ALL SELECT 1, 'mark' UNION ALL SELECT 2, 'index'
              UNION ALL SELECT 3, 'premium') p ON p.n = o.timeframe / 100""",
)
# Not INSERT OR IGNORE: that would also drop rows breaking NOT NULL, silently.
_INSERT_KEEP = (
    "INSERT INTO ohlcv VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (instrument_id, timeframe, ts) DO NOTHING"
)
_INSERT_OVERWRITE = (
    "INSERT INTO ohlcv VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (instrument_id, timeframe, ts) DO UPDATE SET "
    "open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close, "
    "volume = excluded.volume "
    "WHERE open IS NOT excluded.open OR high IS NOT excluded.high OR low IS NOT excluded.low "
    "OR close IS NOT excluded.close OR volume IS NOT excluded.volume"
)
_SELECT_INSTRUMENT = (
    "SELECT id, exchange, symbol, base, quote, market_type, listing_ms "
    "FROM instruments WHERE exchange = ? AND symbol = ?"
)
# The lists arrive as JSON arrays (json_each) so that the statement stays one constant whatever
# their length; max(ts) under an equality on the key's first two columns is one index probe.
_NEWEST_CANDLES = (
    "SELECT i.symbol, t.value, "
    "(SELECT max(o.ts) FROM ohlcv o WHERE o.instrument_id = i.id AND o.timeframe = t.value) "
    "FROM instruments i CROSS JOIN json_each(?) AS t "
    "WHERE i.exchange = ? AND i.symbol IN (SELECT value FROM json_each(?))"
)


def _is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" / "busy": another connection holds the lock; worth waiting."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class SqliteCandleStore(CandleStore):
    """A :class:`~data_collector.storage.base.CandleStore` in one SQLite file.

    One connection, used by one call at a time; the file's parent directory is created.

    Args:
        settings: its ``url`` (``sqlite+aiosqlite:///relative/path.db`` or ``////abs/path.db``)
            and ``command_timeout_s`` are used (:meth:`StoreSettings.from_config`).
    """

    def __init__(self, settings: StoreSettings) -> None:
        url = parse_database_url(settings.url)
        if url.get_backend_name() != "sqlite":
            raise ConfigError("database.url: SqliteCandleStore needs a sqlite+aiosqlite:/// URL")
        database = url.database or ""
        if not database:
            raise ConfigError("database.url: name the SQLite file, e.g. sqlite+aiosqlite:///data/candles.db")
        self._path = database
        self._timeout_s = settings.command_timeout_s
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteCandleStore(path={self._path!r})"

    @property
    def path(self) -> str:
        return self._path

    async def __aenter__(self) -> SqliteCandleStore:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; safe to call twice. Using the store afterwards raises ClosedError."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(self._timeout_s):
            return await awaitable

    async def _open(self) -> aiosqlite.Connection:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._conn is None:
            if self._path != ":memory:":
                await asyncio.to_thread(Path(self._path).parent.mkdir, parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self._path, timeout=self._timeout_s, isolation_level=None)
            try:
                await self._enable_wal(conn)
                await conn.execute("PRAGMA synchronous=NORMAL")
                await conn.execute(f"PRAGMA busy_timeout={int(self._timeout_s * 1000)}")
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _enable_wal(self, conn: aiosqlite.Connection) -> None:
        """Switch the file to WAL, retried while another connection holds the lock for the same switch.

        Converting a rollback-journal file to WAL needs an exclusive lock. When two connections open
        such a file at once (the health check's probes, two processes starting), SQLite answers the
        one that already holds a shared lock with "database is locked" at once, without calling the
        busy handler (its deadlock rule), so ``busy_timeout`` cannot help here. Seen in 5 of 900
        triple opens; the retry is bounded by the command timeout.
        """
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_locked),
            wait=wait_random(0.005, 0.05),
            stop=stop_after_delay(self._timeout_s),
            reraise=True,
        ):
            with attempt:
                await conn.execute("PRAGMA journal_mode=WAL")

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                yield await self._open()
            except sqlite3.OperationalError as exc:
                if _is_locked(exc):
                    raise TransientError(f"SQLite {self._path}: {exc}") from None
                if "no such table" in str(exc):
                    raise StoreNotInitializedError(
                        f"SQLite {self._path}: {exc}; call initialize() to create the tables"
                    ) from None
                raise PermanentError(f"SQLite {self._path}: {exc}") from None
            except sqlite3.Error as exc:
                raise PermanentError(f"SQLite {self._path}: {exc}") from None
            except TimeoutError:
                raise TransientError(f"SQLite {self._path}: no answer within {self._timeout_s:g} s") from None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._connect() as conn:
            await self._bounded(conn.execute("BEGIN IMMEDIATE"))
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            await self._bounded(conn.execute("COMMIT"))

    async def initialize(self) -> None:
        """Create the file, its directory, the tables and the view, idempotently."""
        codes = sorted(TIMEFRAME_CODES.items(), key=lambda item: item[1])
        async with self._transaction() as conn:
            for statement in (*_DDL, *TRADE_DDL, *FUNDING_DDL):
                await self._bounded(conn.execute(statement))
            await self._bounded(
                conn.executemany(
                    "INSERT OR IGNORE INTO timeframes (code, name) VALUES (?, ?)", [(c, n) for n, c in codes]
                )
            )

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._connect() as conn:
            return list(await self._bounded(conn.execute_fetchall(sql, params)))

    async def ensure_instrument(
        self, exchange: str, symbol: str, *, base: str, quote: str, market_type: str = "spot"
    ) -> Instrument:
        """Return the instrument, inserting it on first use (ids are stable)."""
        async with self._transaction() as conn:
            await self._bounded(
                conn.execute(
                    "INSERT OR IGNORE INTO instruments (exchange, symbol, base, quote, market_type) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (exchange, symbol, base, quote, market_type),
                )
            )
            rows = list(await self._bounded(conn.execute_fetchall(_SELECT_INSTRUMENT, (exchange, symbol))))
        return Instrument(*rows[0])

    async def get_instrument(self, exchange: str, symbol: str) -> Instrument | None:
        """The instrument, or ``None`` when it was never stored."""
        rows = await self._fetchall(_SELECT_INSTRUMENT, (exchange, symbol))
        return Instrument(*rows[0]) if rows else None

    async def set_listing(self, instrument_id: int, listing_ms: int | None) -> None:
        """Record the first candle time the exchange has for this instrument (``None``: unknown)."""
        async with self._transaction() as conn:
            await self._bounded(
                conn.execute(
                    "UPDATE instruments SET listing_ms = ? WHERE id = ?", (listing_ms, instrument_id)
                )
            )

    async def instruments(self, exchange: str) -> list[Instrument]:
        """Every stored instrument of the venue label ``exchange``, by id."""
        rows = await self._fetchall(
            "SELECT id, exchange, symbol, base, quote, market_type, listing_ms "
            "FROM instruments WHERE exchange = ? ORDER BY id",
            (exchange,),
        )
        return [Instrument(*r) for r in rows]

    async def remove_candles(
        self, instrument_id: int, timeframe: str, ts: Sequence[int], uncover: Sequence[CoverageRange]
    ) -> int:
        """Delete the candles opening at ``ts`` and cut ``uncover`` out of the coverage, atomically."""
        code = timeframe_code(timeframe)
        key = (instrument_id, code)
        async with self._transaction() as conn:
            before = conn.total_changes
            await self._bounded(
                conn.executemany(
                    "DELETE FROM ohlcv WHERE instrument_id = ? AND timeframe = ? AND ts = ?",
                    [(*key, t) for t in ts],
                )
            )
            removed = conn.total_changes - before
            if uncover:
                rows = await self._bounded(
                    conn.execute_fetchall(
                        "DELETE FROM coverage WHERE instrument_id = ? AND timeframe = ? "
                        "RETURNING start_ms, end_ms, kind",
                        key,
                    )
                )
                kept = cut_coverage([CoverageRange(int(r[0]), int(r[1]), r[2]) for r in rows], uncover)
                await self._bounded(
                    conn.executemany(
                        "INSERT INTO coverage (instrument_id, timeframe, kind, start_ms, end_ms) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(*key, r.kind, r.start_ms, r.end_ms) for r in kept],
                    )
                )
        return removed

    async def write(self, batches: Sequence[CandleBatch]) -> WriteResult:
        """Write batches in one transaction: candles and coverage visible together or not at all.

        See :meth:`data_collector.storage.postgres.PostgresCandleStore.write`.
        """
        prepared = prepare(batches)
        if not prepared.groups and not prepared.coverage:
            return WriteResult(0, prepared.total)
        async with self._transaction() as conn:
            before = conn.total_changes
            for group in prepared.groups:
                sql = _INSERT_KEEP if group.final else _INSERT_OVERWRITE
                await self._bounded(conn.executemany(sql, group.records))
            written = conn.total_changes - before
            await self._write_coverage(conn, prepared)
        return WriteResult(written, prepared.total - written)

    async def _write_coverage(self, conn: aiosqlite.Connection, prepared: PreparedWrite) -> None:
        for (instrument_id, code, kind), new in prepared.coverage.items():
            spans = list(new)
            for start, end in new:
                touched = list(
                    await self._bounded(
                        conn.execute_fetchall(
                            "DELETE FROM coverage WHERE instrument_id = ? AND timeframe = ? AND kind = ? "
                            "AND start_ms <= ? AND end_ms >= ? RETURNING start_ms, end_ms",
                            (instrument_id, code, kind, end, start),
                        )
                    )
                )
                spans += [(int(r[0]), int(r[1])) for r in touched]
            await self._bounded(
                conn.executemany(
                    "INSERT INTO coverage (instrument_id, timeframe, kind, start_ms, end_ms) VALUES (?, ?, ?, ?, ?)",
                    [(instrument_id, code, kind, s, e) for s, e in merge_spans(spans)],
                )
            )

    def _trade_tables(self) -> SqliteTrades:
        return SqliteTrades(self)

    def _funding_tables(self) -> SqliteFunding:
        return SqliteFunding(self)

    def _open_interest_tables(self) -> SqliteOpenInterest:
        return SqliteOpenInterest(self)

    async def _coverage_rows(self, instrument_id: int, code: int) -> list[CoverageRange]:
        rows = await self._fetchall(
            "SELECT start_ms, end_ms, kind FROM coverage WHERE instrument_id = ? AND timeframe = ? "
            "ORDER BY start_ms",
            (instrument_id, code),
        )
        return [CoverageRange(int(r[0]), int(r[1]), r[2]) for r in rows]

    async def _venue_coverage_rows(
        self, exchange: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, int, CoverageRange]]:
        rows = await self._fetchall(
            "SELECT c.instrument_id, c.timeframe, c.start_ms, c.end_ms, c.kind FROM coverage c "
            "JOIN instruments i ON i.id = c.instrument_id "
            "WHERE i.exchange = ? AND c.end_ms > ? AND c.start_ms < ?",
            (exchange, start_ms, end_ms),
        )
        return [(int(r[0]), int(r[1]), CoverageRange(int(r[2]), int(r[3]), r[4])) for r in rows]

    async def _count_rows(self, instrument_id: int, code: int, spans: Sequence[Span]) -> list[int]:
        counts = []
        for start, end in spans:
            rows = await self._fetchall(
                "SELECT count(*) FROM ohlcv WHERE instrument_id = ? AND timeframe = ? AND ts >= ? AND ts < ?",
                (instrument_id, code, start, end),
            )
            counts.append(int(rows[0][0]))
        return counts

    async def count_candles_per_cell(
        self, instrument_id: int, timeframe: str, spans: Sequence[Span], first_ms: int, cell_ms: int
    ) -> dict[int, int]:
        """Stored candles inside ``spans`` per cell ``(ts - first_ms) // cell_ms``; one query a span."""
        out: dict[int, int] = {}
        for start, end in spans:
            rows = await self._fetchall(
                "SELECT (ts - ?) / ?, count(*) FROM ohlcv WHERE instrument_id = ? AND timeframe = ? "
                "AND ts >= ? AND ts < ? GROUP BY 1",
                (first_ms, cell_ms, instrument_id, timeframe_code(timeframe), start, end),
            )
            for cell, n in rows:
                out[int(cell)] = out.get(int(cell), 0) + int(n)
        return out

    async def _load_ts(self, instrument_id: int, code: int, start_ms: int, end_ms: int) -> list[int]:
        rows = await self._fetchall(
            "SELECT ts FROM ohlcv WHERE instrument_id = ? AND timeframe = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (instrument_id, code, start_ms, end_ms),
        )
        return [int(r[0]) for r in rows]

    async def load(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Candle]:
        """Candles with ``start_ms <= ts < end_ms``, oldest first."""
        rows = await self._fetchall(
            "SELECT ts, open, high, low, close, volume FROM ohlcv "
            "WHERE instrument_id = ? AND timeframe = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (instrument_id, timeframe_code(timeframe), start_ms, end_ms),
        )
        return [tuple(r) for r in rows]

    async def latest_ts(self, instrument_id: int, timeframe: str) -> int | None:
        """Open time of the newest stored candle, or ``None``."""
        rows = await self._fetchall(
            "SELECT max(ts) FROM ohlcv WHERE instrument_id = ? AND timeframe = ?",
            (instrument_id, timeframe_code(timeframe)),
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def newest_candles(
        self, exchange: str, symbols: Sequence[str], timeframes: Sequence[str]
    ) -> dict[tuple[str, str], int]:
        """See :meth:`data_collector.storage.base.CandleStore.newest_candles`; one query."""
        codes = [timeframe_code(tf) for tf in timeframes]
        rows = await self._fetchall(_NEWEST_CANDLES, (json.dumps(codes), exchange, json.dumps(list(symbols))))
        return {(r[0], CODE_TIMEFRAMES[int(r[1])]): int(r[2]) for r in rows if r[2] is not None}

    async def server_version(self) -> str:
        """``SQLite <version>`` of the library this process links; one round trip, so a ping."""
        rows = await self._fetchall("SELECT sqlite_version()")
        return f"SQLite {rows[0][0]}"
