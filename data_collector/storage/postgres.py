"""PostgreSQL backend: SQLAlchemy's async engine owns the pool, asyncpg's COPY does the writing.

The pool is SQLAlchemy's (sized by ``performance.db_pool_size`` / ``db_max_overflow``, recycled
after ``db_pool_recycle`` seconds, pinged before use). The hot path borrows the pooled asyncpg
connection itself (``driver_connection``) because only asyncpg speaks binary COPY.

A write is one transaction: candles and coverage become visible together or not at all.

* One query fetches the open times already stored within the spans of the write's batches
  (an index-only range scan; nothing comes back for a fresh range), and those rows are left out.
* The rest goes by binary COPY straight into ``ohlcv``, inside a savepoint: if rows appeared
  meanwhile (a concurrent writer), the unique violation rolls back to the savepoint and the same
  rows take the conflict-safe path instead of failing the batch.
* That path, and ``final=False`` batches, COPY into a per-connection temporary staging table and
  then ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (``DO UPDATE`` for ``final=False``, so that
  a candle that was still forming is overwritten on the next run).

Every call is bounded by ``database.command_timeout_s`` twice: by asyncpg, and from outside by
``asyncio.timeout``, because a COPY can outlive asyncpg's own timeout when the backend dies.
A connection that failed mid-call is terminated, never returned to the pool.

Long because it is the whole PostgreSQL backend: DDL, the COPY write path and the coverage
merge, with each SQL statement beside the code that runs it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from data_collector.errors import (
    ClosedError,
    CollectorError,
    ConfigError,
    PermanentError,
    ServerUnavailableError,
    StoreNotInitializedError,
    TransientError,
)
from data_collector.markets import CODE_TIMEFRAMES, TIMEFRAME_CODES, timeframe_code
from data_collector.storage.base import Candle, CandleBatch, CoverageRange, Instrument, WriteResult
from data_collector.storage.batching import PreparedWrite, Record, prepare
from data_collector.storage.candle_columns import CandleColumns, copy_binary
from data_collector.storage.pg_connect import pg_target
from data_collector.storage.postgres_funding import FUNDING_DDL, PostgresFunding, PostgresOpenInterest
from data_collector.storage.postgres_migrate import next_table
from data_collector.storage.postgres_partitions import (
    PARTITIONED,
    PARTITIONED_TABLES,
    MonthlyPartitions,
    create_partitions,
    lock_partitions,
    relkind,
)
from data_collector.storage.postgres_trades import TRADE_DDL, PostgresTrades
from data_collector.storage.ranges import Span, cut_coverage, merge_spans
from data_collector.storage.store import CandleStore, StoreSettings
from data_collector.storage.url import parse_database_url

log = logging.getLogger(__name__)

T = TypeVar("T")

OHLCV_COLUMNS = ("instrument_id", "timeframe", "ts", "open", "high", "low", "close", "volume")
_DBNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}$")
#: Per-connection staging tables (temporary, emptied at each commit).
_STAGE_KEEP = "dc_ohlcv_stage_keep"
_STAGE_OVERWRITE = "dc_ohlcv_stage_overwrite"
_STAGE_READY = "dc_stage_ready"
#: Slack of the outer bound over asyncpg's own, so that the driver's cleaner cancel wins normally.
_OUTER_SLACK_S = 1.0

# No foreign key to instruments: its per-row trigger would slow COPY down a lot. Monthly
# partitions on ts (ohlcv_pYYYYMM, and ohlcv_default) are made on demand by each write
# (postgres_partitions); a table made before partitioning stays plain until migrate-partitions.
OHLCV_DDL = """CREATE TABLE IF NOT EXISTS {s}.ohlcv (
        instrument_id integer NOT NULL,
        timeframe smallint NOT NULL,
        ts bigint NOT NULL,
        open double precision NOT NULL,
        high double precision NOT NULL,
        low double precision NOT NULL,
        close double precision NOT NULL,
        volume double precision NOT NULL,
        PRIMARY KEY (instrument_id, timeframe, ts)) PARTITION BY RANGE (ts)"""
VIEW_DDL = (
    """CREATE OR REPLACE VIEW {s}.ohlcv_view AS
        SELECT i.exchange, i.symbol, t.name AS timeframe, to_timestamp(o.ts / 1000.0) AS ts,
               o.open, o.high, o.low, o.close, o.volume
        FROM {s}.ohlcv o
        JOIN {s}.instruments i ON i.id = o.instrument_id
        JOIN {s}.timeframes t ON t.code = o.timeframe""",
    # Every price type of candle (mark, index, premium; last as in ohlcv_view): codes are the
    # timeframe's plus 100 per price type (data_collector.markets.PRICE_OFFSETS).
    """CREATE OR REPLACE VIEW {s}.price_ohlcv_view AS
        SELECT i.exchange, i.symbol, p.price, t.name AS timeframe, to_timestamp(o.ts / 1000.0) AS ts,
               o.open, o.high, o.low, o.close, o.volume
        FROM {s}.ohlcv o
        JOIN {s}.instruments i ON i.id = o.instrument_id
        JOIN {s}.timeframes t ON t.code = o.timeframe % 100
        JOIN (VALUES (0, 'last'), (1, 'mark'), (2, 'index'), (3, 'premium')) AS p(n, price)
          ON p.n = o.timeframe / 100""",
)
# Every statement is a constant; ``{s}`` stands for the schema, validated by the config and
# quoted by ``_sql()``, the one place an identifier enters SQL. Values are always bound.
_DDL = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.instruments (
        id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        exchange text NOT NULL,
        symbol text NOT NULL,
        base text NOT NULL,
        quote text NOT NULL,
        market_type text NOT NULL DEFAULT 'spot',
        listing_ms bigint,
        UNIQUE (exchange, symbol))""",
    OHLCV_DDL,
    # No unique key: concurrent writers may each add an overlapping range; reads merge them.
    """CREATE TABLE IF NOT EXISTS {s}.coverage (
        instrument_id integer NOT NULL,
        timeframe smallint NOT NULL,
        kind text NOT NULL CONSTRAINT coverage_kind_check CHECK (kind IN ('data', 'empty', 'archived')),
        start_ms bigint NOT NULL,
        end_ms bigint NOT NULL CHECK (end_ms > start_ms))""",
    "CREATE INDEX IF NOT EXISTS coverage_key ON {s}.coverage (instrument_id, timeframe, start_ms)",
    "CREATE TABLE IF NOT EXISTS {s}.timeframes (code smallint PRIMARY KEY, name text NOT NULL UNIQUE)",
    *VIEW_DDL,
)
_INIT_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
_INSERT_TIMEFRAMES = (
    "INSERT INTO {s}.timeframes (code, name) "
    "SELECT * FROM unnest($1::smallint[], $2::text[]) ON CONFLICT (code) DO NOTHING"
)
_INSERT_INSTRUMENT = (
    "INSERT INTO {s}.instruments (exchange, symbol, base, quote, market_type) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (exchange, symbol) DO NOTHING "
    "RETURNING id, exchange, symbol, base, quote, market_type, listing_ms"
)
_SELECT_INSTRUMENT = (
    "SELECT id, exchange, symbol, base, quote, market_type, listing_ms "
    "FROM {s}.instruments WHERE exchange = $1 AND symbol = $2"
)
_SET_LISTING = "UPDATE {s}.instruments SET listing_ms = $2 WHERE id = $1"
_SELECT_INSTRUMENTS = (
    "SELECT id, exchange, symbol, base, quote, market_type, listing_ms "
    "FROM {s}.instruments WHERE exchange = $1 ORDER BY id"
)
_DELETE_CANDLES = (
    "DELETE FROM {s}.ohlcv WHERE instrument_id = $1 AND timeframe = $2 AND ts = ANY($3::bigint[])"
)
_LOCK_COVERAGE = (
    "SELECT start_ms, end_ms, kind FROM {s}.coverage WHERE instrument_id = $1 AND timeframe = $2 FOR UPDATE"
)
_DELETE_COVERAGE = "DELETE FROM {s}.coverage WHERE instrument_id = $1 AND timeframe = $2"
_STAGE_COLUMNS = (
    "instrument_id integer, timeframe smallint, ts bigint, open double precision, "
    "high double precision, low double precision, close double precision, volume double precision"
)
_CREATE_STAGES = (
    "CREATE TEMP TABLE IF NOT EXISTS dc_ohlcv_stage_keep (" + _STAGE_COLUMNS + ") ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS dc_ohlcv_stage_overwrite (" + _STAGE_COLUMNS + ") ON COMMIT DELETE ROWS",
)
# The open times already stored in each probed span (NULL where none): rows to leave out.
_EXISTING_TS = (
    "SELECT g.n - 1, (SELECT array_agg(o.ts) FROM {s}.ohlcv o "
    "WHERE o.instrument_id = g.i AND o.timeframe = g.t AND o.ts BETWEEN g.lo AND g.hi) "
    "FROM unnest($1::int[], $2::smallint[], $3::bigint[], $4::bigint[]) WITH ORDINALITY AS g(i, t, lo, hi, n)"
)
# ORDER BY: concurrent writers take row locks in one order, which avoids most deadlocks.
_INSERT_KEEP = (
    "INSERT INTO {s}.ohlcv SELECT * FROM pg_temp.dc_ohlcv_stage_keep "
    "ORDER BY instrument_id, timeframe, ts ON CONFLICT (instrument_id, timeframe, ts) DO NOTHING"
)
_INSERT_OVERWRITE = (
    "INSERT INTO {s}.ohlcv AS o SELECT * FROM pg_temp.dc_ohlcv_stage_overwrite "
    "ORDER BY instrument_id, timeframe, ts ON CONFLICT (instrument_id, timeframe, ts) DO UPDATE SET "
    "open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, "
    "volume = EXCLUDED.volume "
    "WHERE (o.open, o.high, o.low, o.close, o.volume) IS DISTINCT FROM "
    "(EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)"
)
_DELETE_TOUCHED_COVERAGE = (
    "DELETE FROM {s}.coverage c "
    "USING unnest($1::int[], $2::smallint[], $3::text[], $4::bigint[], $5::bigint[]) AS n(i, t, k, s, e) "
    "WHERE c.instrument_id = n.i AND c.timeframe = n.t AND c.kind = n.k "
    "AND c.start_ms <= n.e AND c.end_ms >= n.s "
    "RETURNING c.instrument_id, c.timeframe, c.kind, c.start_ms, c.end_ms"
)
_INSERT_COVERAGE = (
    "INSERT INTO {s}.coverage (instrument_id, timeframe, kind, start_ms, end_ms) "
    "SELECT * FROM unnest($1::int[], $2::smallint[], $3::text[], $4::bigint[], $5::bigint[])"
)
_SELECT_COVERAGE = (
    "SELECT start_ms, end_ms, kind FROM {s}.coverage "
    "WHERE instrument_id = $1 AND timeframe = $2 ORDER BY start_ms"
)
_VENUE_COVERAGE = (
    "SELECT c.instrument_id, c.timeframe, c.start_ms, c.end_ms, c.kind FROM {s}.coverage c "
    "JOIN {s}.instruments i ON i.id = c.instrument_id "
    "WHERE i.exchange = $1 AND c.end_ms > $2 AND c.start_ms < $3"
)
_COUNT_PER_CELL = (
    "SELECT (o.ts - $5) / $6, count(*) FROM unnest($3::bigint[], $4::bigint[]) AS g(s, e) "
    "JOIN {s}.ohlcv o ON o.instrument_id = $1 AND o.timeframe = $2 AND o.ts >= g.s AND o.ts < g.e "
    "GROUP BY 1"
)
_COUNT_SPANS = (
    "SELECT (SELECT count(*) FROM {s}.ohlcv o WHERE o.instrument_id = $1 "
    "AND o.timeframe = $2 AND o.ts >= g.s AND o.ts < g.e) "
    "FROM unnest($3::bigint[], $4::bigint[]) WITH ORDINALITY AS g(s, e, n) ORDER BY g.n"
)
_SELECT_TS = (
    "SELECT ts FROM {s}.ohlcv WHERE instrument_id = $1 AND timeframe = $2 "
    "AND ts >= $3 AND ts < $4 ORDER BY ts"
)
_SELECT_CANDLES = (
    "SELECT ts, open, high, low, close, volume FROM {s}.ohlcv "
    "WHERE instrument_id = $1 AND timeframe = $2 AND ts >= $3 AND ts < $4 ORDER BY ts"
)
_LATEST_TS = "SELECT max(ts) FROM {s}.ohlcv WHERE instrument_id = $1 AND timeframe = $2"
# Base tables rather than ohlcv_view: max(ts) per (instrument, timeframe) is one probe of the
# primary key, not a scan through the view's timestamp conversion.
_NEWEST_CANDLES = (
    "SELECT i.symbol, t.code, "
    "(SELECT max(o.ts) FROM {s}.ohlcv o WHERE o.instrument_id = i.id AND o.timeframe = t.code) "
    "FROM {s}.instruments i CROSS JOIN unnest($3::smallint[]) AS t(code) "
    "WHERE i.exchange = $1 AND i.symbol = ANY($2::text[])"
)
# Not asyncpg's get_server_version(): its ServerVersion keeps 15.20's "20" in ``micro``.
_SERVER_VERSION = "SHOW server_version"

# The server or the network failed for now: retrying the whole batch is safe (writes are idempotent).
_TRANSIENT_PG: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: connection lost / refused
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin shutdown, query canceled
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # class 40: deadlock, serialization failure
)
# These leave the connection in an unknown state: it must be terminated, not reused.
BREAKING_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
    asyncio.CancelledError,
)


class _DatabaseMissing(PermanentError):
    """The configured database does not exist (``initialize()`` may create it)."""


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _status_count(status: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 42`` or ``COPY 42``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def _chunks(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    """``parts`` as the async source asyncpg's ``copy_to_table`` takes (a file would go through
    a thread per 512 KB read)."""
    for part in parts:
        yield part


def _root_causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (SQLAlchemy keeps the driver's error in ``orig`` / ``__cause__``)."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        stack += [getattr(item, "orig", None), item.__cause__, item.__context__]
    return seen


class PostgresCandleStore(CandleStore):
    """A :class:`~data_collector.storage.base.CandleStore` on PostgreSQL.

    Use it as ``async with open_store(config) as store:`` (which initialises it) or call
    :meth:`initialize` and :meth:`close` yourself. Whoever opens a store closes it.

    Args:
        settings: the ``postgresql+asyncpg://`` URL, the schema, the timeouts and the pool sizes
            (:meth:`StoreSettings.from_config`).

    Raises:
        ConfigError: the URL is not a PostgreSQL one.
    """

    def __init__(self, settings: StoreSettings) -> None:
        url = parse_database_url(settings.url)
        if url.get_backend_name() != "postgresql":
            raise ConfigError("database.url: PostgresCandleStore needs a postgresql+asyncpg:// URL")
        self._target = pg_target(url)
        self._url: URL = self._target.url
        self._schema = settings.db_schema
        self._connect_timeout_s = settings.connect_timeout_s
        self._timeout_s = settings.command_timeout_s
        self._pool_size = settings.pool_size
        self._max_overflow = settings.max_overflow
        self._pool_recycle = settings.pool_recycle_s
        self._engine: AsyncEngine | None = None
        self._closed = False
        self._quoted_schema = _quote_ident(self._schema)
        self._partitions = MonthlyPartitions(self, "ohlcv")
        self._trade_partitions = MonthlyPartitions(self, "trades")

    def __repr__(self) -> str:
        shown = self._url.render_as_string(hide_password=True)
        return f"PostgresCandleStore(url={shown!r}, schema={self._schema!r})"

    def _sql(self, statement: str) -> str:
        """``statement`` with its ``{s}`` placeholders set to the quoted, validated schema."""
        return statement.replace("{s}", self._quoted_schema)

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def where(self) -> str:
        """``PostgreSQL at host:port/db``: how errors name this server (never with the password)."""
        return self._target.where

    @property
    def connections(self) -> int:
        """The most connections the pool opens at once (its size plus its overflow)."""
        return self._pool_size + self._max_overflow

    async def __aenter__(self) -> PostgresCandleStore:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _make_engine(self) -> AsyncEngine:
        return create_async_engine(
            self._url,
            pool_size=self._pool_size,
            max_overflow=self._max_overflow,
            pool_recycle=self._pool_recycle,
            pool_pre_ping=True,
            # Waiting for a free pooled connection is bounded like any other call.
            pool_timeout=self._timeout_s,
            # asyncpg parses the DSN, TLS parameters included; SQLAlchemy's dialect would pass
            # the URL's query to asyncpg.connect() as keywords it does not take.
            async_creator=self._target.creator(
                connect_timeout_s=self._connect_timeout_s,
                command_timeout=self._timeout_s,
                server_settings={"application_name": "data_collector"},
            ),
        )

    def _require_engine(self) -> AsyncEngine:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    async def close(self) -> None:
        """Dispose of the pool; safe to call twice. Using the store afterwards raises ClosedError."""
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await engine.dispose()
            except TimeoutError:
                # A server gone silent must not hang shutdown; its sockets die with the process.
                log.warning("%s: closing the pool timed out after %g s", self.where, self._timeout_s)

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(self._timeout_s + _OUTER_SLACK_S):
            return await awaitable

    def _translate(self, exc: BaseException) -> CollectorError:
        """Map a driver / pool / network failure to the project's error hierarchy."""
        causes = _root_causes(exc)
        for cause in causes:
            if isinstance(cause, CollectorError):
                return cause
            tls_failure = self._target.tls_failure(cause)
            if tls_failure is not None:
                return tls_failure
            if isinstance(cause, asyncpg.InvalidCatalogNameError):
                return _DatabaseMissing(f"{self.where}: database {self._url.database!r} does not exist")
            if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
                return PermanentError(f"{self.where}: login refused for role {self._url.username!r}: {cause}")
            if isinstance(cause, asyncpg.InsufficientPrivilegeError):
                return PermanentError(f"{self.where}: permission denied: {cause}")
            if isinstance(cause, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
                return StoreNotInitializedError(
                    f"{self.where}: {cause}; call initialize() to create the tables in schema {self._schema!r}"
                )
            if isinstance(cause, _TRANSIENT_PG):
                return TransientError(f"{self.where}: {type(cause).__name__}: {cause}")
            if isinstance(cause, asyncpg.PostgresError):
                return PermanentError(f"{self.where}: {type(cause).__name__}: {cause}")
        for cause in causes:
            if isinstance(cause, ConnectionRefusedError) or "Connect call failed" in str(cause):
                return ServerUnavailableError(self.where, "connection refused")
            if isinstance(cause, TimeoutError):
                return TransientError(f"{self.where}: no answer within {self._timeout_s:g} s")
            if isinstance(cause, OSError):
                return ServerUnavailableError(
                    self.where, cause.strerror or str(cause) or type(cause).__name__
                )
            if isinstance(cause, asyncpg.InterfaceError):
                return TransientError(f"{self.where}: {cause}")
        name = type(exc).__name__
        if name == "TimeoutError":  # SQLAlchemy's pool timeout
            return TransientError(f"{self.where}: no free connection within {self._timeout_s:g} s")
        return TransientError(f"{self.where}: {name}: {exc}")

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[tuple[AsyncConnection, asyncpg.Connection]]:
        """A pooled connection and its asyncpg driver connection, with errors translated.

        A connection that failed in a way that leaves its state unknown is terminated and
        invalidated rather than put back in the pool.
        """
        engine = self._require_engine()
        try:
            async with asyncio.timeout(self._connect_timeout_s + self._timeout_s + _OUTER_SLACK_S):
                sa_conn = await engine.connect()
                raw = await sa_conn.get_raw_connection()
        except CollectorError:
            raise
        except TimeoutError:
            raise ServerUnavailableError(
                self.where, f"no answer within {self._connect_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise self._translate(exc) from None
        driver: asyncpg.Connection = raw.driver_connection
        try:
            yield sa_conn, driver
        except BaseException as exc:
            if isinstance(exc, BREAKING_ERRORS) or not isinstance(
                exc, asyncpg.PostgresError | CollectorError
            ):
                driver.terminate()
                try:
                    await sa_conn.invalidate()
                except Exception:  # the connection is gone either way
                    log.debug("invalidating a broken connection failed", exc_info=True)
            if isinstance(exc, Exception) and not isinstance(exc, CollectorError):
                raise self._translate(exc) from None
            raise
        finally:
            try:
                await sa_conn.close()
            except Exception:
                log.debug("returning a connection to the pool failed", exc_info=True)

    async def initialize(self) -> None:
        """Create the database (when missing and allowed), the schema, tables and view, idempotently.

        Safe when several processes initialise at once: a transaction-scoped advisory lock
        serialises the DDL. Safe beside writers too: the partition locks are taken before any
        table is touched, so a writer making a month's partition meanwhile waits or is waited for,
        never deadlocks with it.

        Raises:
            ServerUnavailableError: the server cannot be reached (one line naming host:port).
            PermanentError: the database is missing and the role may not create it, or the role
                may not create the schema.
        """
        try:
            await self._create_schema()
        except _DatabaseMissing:
            await self._create_database()
            await self._create_schema()

    async def _create_database(self) -> None:
        name = self._url.database or ""
        if not _DBNAME_RE.match(name):
            raise PermanentError(
                f"{self.where}: database {name!r} does not exist, and its name is not one this "
                "program creates (letters, digits, '_' and '-'); create it yourself"
            )
        try:
            conn = await self._target.connect(connect_timeout_s=self._connect_timeout_s, database="postgres")
        except PermanentError:
            raise
        except Exception as exc:
            raise PermanentError(
                f"{self.where}: database {name!r} does not exist and the maintenance database "
                f"'postgres' could not be opened to create it ({type(exc).__name__}); create it with: createdb {name}"
            ) from None
        try:
            # The name was validated above; identifiers cannot be bound parameters.
            await self._bounded(conn.execute(f"CREATE DATABASE {_quote_ident(name)}"))
            log.info("created database %s", name)
        except asyncpg.DuplicateDatabaseError:
            pass  # another process created it first
        except asyncpg.InsufficientPrivilegeError:
            raise PermanentError(
                f"{self.where}: database {name!r} does not exist and role {self._url.username!r} may not "
                f"create it; create it with: createdb {name}"
            ) from None
        finally:
            await conn.close()
        # Connections that failed against the missing database must not linger in the pool.
        if self._engine is not None:
            await self._engine.dispose()

    async def _create_schema(self) -> None:
        codes = sorted(TIMEFRAME_CODES.items(), key=lambda item: item[1])
        async with self._connect() as (_, conn):
            async with conn.transaction():
                await self._bounded(conn.execute(_INIT_LOCK, f"data_collector.initialize:{self._schema}"))
                # The partition locks before the DDL below locks the tables: a writer making a
                # month's partition holds its table's and then locks the parent, so taking it
                # later (in create_partitions) would deadlock with that writer.
                for table in PARTITIONED_TABLES:
                    await self._bounded(lock_partitions(conn, self._schema, table))
                for table in PARTITIONED_TABLES:
                    if await self._bounded(relkind(conn, self._schema, next_table(table))) is not None:
                        raise PermanentError(
                            f"{self.where}: schema {self._schema!r}: a migration of {table} to monthly "
                            "partitions is half done; finish it with: data-collector migrate-partitions"
                        )
                for statement in (*_DDL, *TRADE_DDL, *FUNDING_DDL):
                    await self._bounded(conn.execute(self._sql(statement)))
                for table in PARTITIONED_TABLES:
                    if await self._bounded(relkind(conn, self._schema, table)) == PARTITIONED:
                        await self._bounded(create_partitions(conn, self._schema, table, ()))  # the default
                await self._bounded(
                    conn.execute(
                        self._sql(_INSERT_TIMEFRAMES), [c for _, c in codes], [name for name, _ in codes]
                    )
                )

    async def ensure_instrument(
        self, exchange: str, symbol: str, *, base: str, quote: str, market_type: str = "spot"
    ) -> Instrument:
        """Return the instrument, inserting it on first use. Ids are stable; safe to race."""
        async with self._connect() as (_, conn):
            row = await self._bounded(
                conn.fetchrow(self._sql(_INSERT_INSTRUMENT), exchange, symbol, base, quote, market_type)
            )
            if row is None:  # already there (or inserted meanwhile by a concurrent caller)
                row = await self._bounded(conn.fetchrow(self._sql(_SELECT_INSTRUMENT), exchange, symbol))
        if row is None:
            raise TransientError(f"{self.where}: instrument {exchange} {symbol} vanished while being stored")
        return Instrument(*row)

    async def get_instrument(self, exchange: str, symbol: str) -> Instrument | None:
        """The instrument, or ``None`` when it was never stored."""
        async with self._connect() as (_, conn):
            row = await self._bounded(conn.fetchrow(self._sql(_SELECT_INSTRUMENT), exchange, symbol))
        return Instrument(*row) if row is not None else None

    async def set_listing(self, instrument_id: int, listing_ms: int | None) -> None:
        """Record the first candle time the exchange has for this instrument (``None``: unknown)."""
        async with self._connect() as (_, conn):
            await self._bounded(conn.execute(self._sql(_SET_LISTING), instrument_id, listing_ms))

    async def instruments(self, exchange: str) -> list[Instrument]:
        """Every stored instrument of the venue label ``exchange``, by id."""
        return [Instrument(*r) for r in await self._fetch(_SELECT_INSTRUMENTS, exchange)]

    async def remove_candles(
        self, instrument_id: int, timeframe: str, ts: Sequence[int], uncover: Sequence[CoverageRange]
    ) -> int:
        """Delete the candles opening at ``ts`` and cut ``uncover`` out of the coverage, atomically."""
        code = timeframe_code(timeframe)
        async with self._connect() as (_, conn), conn.transaction():
            status = await self._bounded(
                conn.execute(
                    self._sql(_DELETE_CANDLES), instrument_id, code, list(ts), timeout=self._timeout_s
                )
            )
            if uncover:
                rows = await self._bounded(conn.fetch(self._sql(_LOCK_COVERAGE), instrument_id, code))
                kept = cut_coverage([CoverageRange(r[0], r[1], r[2]) for r in rows], uncover)
                await self._bounded(conn.execute(self._sql(_DELETE_COVERAGE), instrument_id, code))
                await self._bounded(
                    conn.execute(
                        self._sql(_INSERT_COVERAGE),
                        [instrument_id] * len(kept),
                        [code] * len(kept),
                        [r.kind for r in kept],
                        [r.start_ms for r in kept],
                        [r.end_ms for r in kept],
                    )
                )
        return _status_count(status)

    async def write(self, batches: Sequence[CandleBatch]) -> WriteResult:
        """Write batches in one transaction: candles and coverage visible together or not at all.

        Candles are deduplicated (the last of a key wins); rows already stored are skipped, or
        overwritten for ``final=False`` batches. Prefer many batches per call (10k+ rows): a
        call costs a handful of round trips whatever its size.

        Raises:
            TransientError: the connection failed or a call timed out; nothing was written, and
                retrying the same call is safe.
            PermanentError: the server refused the data.
            UsageError: a batch is malformed (unknown timeframe, candles outside their coverage).
        """
        prepared = prepare(batches, columns=True)
        if not prepared.groups and not prepared.column_groups and not prepared.coverage:
            return WriteResult(0, prepared.total)
        spans = [span for g in prepared.groups for span in g.spans] + [g.span for g in prepared.column_groups]
        async with self._write_transaction(_CREATE_STAGES, spans) as conn:
            written = await self._write_rows(conn, prepared)
            await self._write_coverage(conn, prepared)
        return WriteResult(written, prepared.total - written)

    @asynccontextmanager
    async def _write_transaction(
        self, stages: Sequence[str], spans: Sequence[Span] = ()
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in a transaction, its staging tables ready and the ``ohlcv``
        partitions of the months ``spans`` touch made; commits on success."""
        async with self._write_connection(stages, spans) as conn, self._transaction(conn):
            yield conn

    @asynccontextmanager
    async def _write_connection(
        self, stages: Sequence[str], spans: Sequence[Span] = ()
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, its staging tables ready and the ``ohlcv`` partitions of the
        months ``spans`` touch made; outside any transaction."""
        async with self._connect() as (sa_conn, conn):
            await self._ensure_stages(sa_conn, conn, stages)
            if spans:
                await self._partitions.ensure(conn, spans)
            yield conn

    @asynccontextmanager
    async def _transaction(self, conn: asyncpg.Connection) -> AsyncIterator[None]:
        """A transaction on ``conn``, committed on success and rolled back when the server said no."""
        tr = conn.transaction()
        await self._bounded(tr.start())
        try:
            yield
        except asyncpg.PostgresError as exc:
            # The server said no but the connection is fine: roll back, then report.
            if not isinstance(exc, BREAKING_ERRORS):
                await self._bounded(tr.rollback())
            raise
        await self._bounded(tr.commit())

    async def _ensure_stages(
        self, sa_conn: AsyncConnection, conn: asyncpg.Connection, stages: Sequence[str]
    ) -> None:
        # Created once per connection, outside any transaction so that a rollback cannot undo it.
        ready: set[str] = sa_conn.info.setdefault(_STAGE_READY, set())
        for statement in stages:
            if statement not in ready:
                await self._bounded(conn.execute(statement))
                ready.add(statement)

    async def _write_rows(self, conn: asyncpg.Connection, prepared: PreparedWrite) -> int:
        final = [g for g in prepared.groups if g.final]
        columnar = prepared.column_groups
        written = 0
        fresh: list[Record] = []
        fresh_columns: list[tuple[int, int, CandleColumns]] = []
        if final or columnar:
            probes = [(g.instrument_id, g.code, g.spans) for g in final]
            probes += [(g.instrument_id, g.code, [g.span]) for g in columnar]
            existing = await self._existing_ts(conn, probes)
            for n, group in enumerate(final):
                stored = existing.get(n)
                fresh.extend(
                    group.records if not stored else [r for r in group.records if r[2] not in stored]
                )
            for n, cgroup in enumerate(columnar, start=len(final)):
                cols = cgroup.columns.without(existing.get(n, set()))
                if len(cols):
                    fresh_columns.append((cgroup.instrument_id, cgroup.code, cols))
        if fresh or fresh_columns:
            try:
                async with conn.transaction():  # a savepoint
                    written += await self._copy_rows(conn, "ohlcv", self._schema, fresh, fresh_columns)
            except asyncpg.UniqueViolationError:
                # Rows appeared since the probe (a concurrent writer): take the conflict-safe path.
                await self._copy_rows(conn, _STAGE_KEEP, "pg_temp", fresh, fresh_columns)
                status = await self._bounded(conn.execute(self._sql(_INSERT_KEEP), timeout=self._timeout_s))
                written += _status_count(status)
        overwrite = [r for g in prepared.groups if not g.final for r in g.records]
        if overwrite:
            written += await self._stage_insert(conn, _STAGE_OVERWRITE, overwrite, _INSERT_OVERWRITE)
        return written

    async def _copy_rows(
        self,
        conn: asyncpg.Connection,
        table: str,
        schema: str,
        records: list[Record],
        columns: list[tuple[int, int, CandleColumns]],
    ) -> int:
        """COPY tuple rows (asyncpg encodes them) and column groups (one binary buffer): rows copied."""
        copied = 0
        if records:
            status = await self._bounded(
                conn.copy_records_to_table(
                    table, schema_name=schema, records=records, columns=OHLCV_COLUMNS, timeout=self._timeout_s
                )
            )
            copied += _status_count(status)
        if columns:
            status = await self._bounded(
                conn.copy_to_table(
                    table,
                    schema_name=schema,
                    source=_chunks(copy_binary(columns)),
                    columns=OHLCV_COLUMNS,
                    format="binary",
                    timeout=self._timeout_s,
                )
            )
            copied += _status_count(status)
        return copied

    async def _existing_ts(
        self, conn: asyncpg.Connection, groups: Sequence[tuple[int, int, list[Span]]]
    ) -> dict[int, set[int]]:
        """For each ``(instrument_id, code, spans)`` (by index) with rows already in its spans, their open times."""
        probes = [(n, iid, code, span) for n, (iid, code, spans) in enumerate(groups) for span in spans]
        rows = await self._bounded(
            conn.fetch(
                self._sql(_EXISTING_TS),
                [p[1] for p in probes],
                [p[2] for p in probes],
                [p[3][0] for p in probes],
                [p[3][1] for p in probes],
                timeout=self._timeout_s,
            )
        )
        out: dict[int, set[int]] = {}
        for row in rows:
            if row[1]:
                out.setdefault(probes[row[0]][0], set()).update(row[1])
        return out

    async def _stage_insert(
        self, conn: asyncpg.Connection, stage: str, records: list[Record], insert: str
    ) -> int:
        await self._bounded(
            conn.copy_records_to_table(
                stage, schema_name="pg_temp", records=records, columns=OHLCV_COLUMNS, timeout=self._timeout_s
            )
        )
        status = await self._bounded(conn.execute(self._sql(insert), timeout=self._timeout_s))
        return _status_count(status)

    async def _write_coverage(self, conn: asyncpg.Connection, prepared: PreparedWrite) -> None:
        """Merge the new ranges with the stored ones they touch (same key and kind) and store them."""
        if not prepared.coverage:
            return
        flat = [(k, s) for k, spans in prepared.coverage.items() for s in spans]
        touched = await self._bounded(
            conn.fetch(
                self._sql(_DELETE_TOUCHED_COVERAGE),
                [k[0] for k, _ in flat],
                [k[1] for k, _ in flat],
                [k[2] for k, _ in flat],
                [s[0] for _, s in flat],
                [s[1] for _, s in flat],
                timeout=self._timeout_s,
            )
        )
        spans: dict[tuple[int, int, str], list[Span]] = {k: list(v) for k, v in prepared.coverage.items()}
        for r in touched:
            spans.setdefault((r[0], r[1], r[2]), []).append((r[3], r[4]))
        rows = [(*k, s, e) for k, v in spans.items() for s, e in merge_spans(v)]
        await self._bounded(
            conn.execute(
                self._sql(_INSERT_COVERAGE),
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] for r in rows],
                [r[4] for r in rows],
                timeout=self._timeout_s,
            )
        )

    def _trade_tables(self) -> PostgresTrades:
        return PostgresTrades(self)

    def _funding_tables(self) -> PostgresFunding:
        return PostgresFunding(self)

    def _open_interest_tables(self) -> PostgresOpenInterest:
        return PostgresOpenInterest(self)

    async def _fetch(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connect() as (_, conn):
            rows: list[asyncpg.Record] = await self._bounded(conn.fetch(self._sql(statement), *args))
        return rows

    async def _coverage_rows(self, instrument_id: int, code: int) -> list[CoverageRange]:
        rows = await self._fetch(_SELECT_COVERAGE, instrument_id, code)
        return [CoverageRange(r[0], r[1], r[2]) for r in rows]

    async def _venue_coverage_rows(
        self, exchange: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, int, CoverageRange]]:
        rows = await self._fetch(_VENUE_COVERAGE, exchange, start_ms, end_ms)
        return [(r[0], r[1], CoverageRange(r[2], r[3], r[4])) for r in rows]

    async def _count_rows(self, instrument_id: int, code: int, spans: Sequence[Span]) -> list[int]:
        rows = await self._fetch(
            _COUNT_SPANS, instrument_id, code, [s for s, _ in spans], [e for _, e in spans]
        )
        return [int(r[0]) for r in rows]

    async def count_candles_per_cell(
        self, instrument_id: int, timeframe: str, spans: Sequence[Span], first_ms: int, cell_ms: int
    ) -> dict[int, int]:
        """Stored candles inside ``spans`` per cell ``(ts - first_ms) // cell_ms``, in one query."""
        if not spans:
            return {}
        rows = await self._fetch(
            _COUNT_PER_CELL,
            instrument_id,
            timeframe_code(timeframe),
            [s for s, _ in spans],
            [e for _, e in spans],
            first_ms,
            cell_ms,
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def _load_ts(self, instrument_id: int, code: int, start_ms: int, end_ms: int) -> list[int]:
        rows = await self._fetch(_SELECT_TS, instrument_id, code, start_ms, end_ms)
        return [int(r[0]) for r in rows]

    async def load(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Candle]:
        """Candles with ``start_ms <= ts < end_ms``, oldest first."""
        rows = await self._fetch(_SELECT_CANDLES, instrument_id, timeframe_code(timeframe), start_ms, end_ms)
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def latest_ts(self, instrument_id: int, timeframe: str) -> int | None:
        """Open time of the newest stored candle, or ``None``."""
        rows = await self._fetch(_LATEST_TS, instrument_id, timeframe_code(timeframe))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def newest_candles(
        self, exchange: str, symbols: Sequence[str], timeframes: Sequence[str]
    ) -> dict[tuple[str, str], int]:
        """Open time of the newest stored candle per ``(symbol, timeframe)``, in one query.

        Pairs without candles (or whose instrument was never stored) are left out.

        Raises:
            StoreNotInitializedError: the schema or its tables do not exist yet.
        """
        codes = [timeframe_code(tf) for tf in timeframes]
        rows = await self._fetch(_NEWEST_CANDLES, exchange, list(symbols), codes)
        return {(r[0], CODE_TIMEFRAMES[r[1]]): int(r[2]) for r in rows if r[2] is not None}

    async def server_version(self) -> str:
        """``PostgreSQL <server_version>``, e.g. ``PostgreSQL 15.20``; one round trip, so a ping."""
        rows = await self._fetch(_SERVER_VERSION)
        # A distribution's build appends words: "15.20 (Debian 15.20-0+deb12u1)".
        return f"PostgreSQL {str(rows[0][0]).split()[0]}"
