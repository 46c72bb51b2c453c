"""Monthly partitions of ``ohlcv`` and ``trades`` (native declarative partitioning on ``ts``),
made on demand: the one owner of the partitioning policy, for both tables.

``ohlcv`` and ``trades`` are ``PARTITION BY RANGE (ts)`` (the DDL is in
:mod:`~data_collector.storage.postgres` and :mod:`~data_collector.storage.postgres_trades`)
with one partition per calendar month (UTC), named ``ohlcv_pYYYYMM`` and ``trades_pYYYYMM``. A write creates the
partitions of the months it touches before its COPY, in a short transaction of its own (under
an advisory lock, ``CREATE TABLE IF NOT EXISTS``, so concurrent writers race safely); the months
already made are remembered per store, so a steady stream of writes costs no extra round trip.

A default partition (``ohlcv_default``, ``trades_default``) is the safety net: rows whose month has no partition (a
tool that writes into ``ohlcv`` directly, or a store that had not seen a month retired by another
process) land there, readable as any other; the next time a write makes that month's partition,
they are moved into it in the same transaction.

Retiring a month moves its rows out of PostgreSQL: after the month's files are verified, one
transaction detaches and drops the partition (:meth:`PostgresArchiveSide.retire_month`).
A table created before partitioning (plain ``ohlcv`` or ``trades``) keeps working;
:mod:`.postgres_migrate` moves it to the partitioned layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from data_collector.storage.ranges import Span

if TYPE_CHECKING:
    from data_collector.storage.postgres import PostgresCandleStore

#: relkind of a partitioned table in pg_class.
PARTITIONED = "p"
_RELKIND = (
    "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = $1 AND c.relname = $2"
)
_PARTITION_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
# The months (partition names) the table has now.
_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
    "WHERE n.nspname = $1 AND p.relname = $2"
)

# Rows of a month in the default partition ({d}), and moving them into the month's new table ({p}).
_STRAY = "SELECT EXISTS (SELECT 1 FROM {s}.{d} WHERE ts >= $1 AND ts < $2)"
_MOVE_STRAY = (
    "WITH moved AS (DELETE FROM {s}.{d} WHERE ts >= $1 AND ts < $2 RETURNING *) "
    "INSERT INTO {s}.{p} SELECT * FROM moved"
)


def month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def month_of(ts_ms: int) -> tuple[int, int]:
    when = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return when.year, when.month


def months_of_spans(spans: Iterable[Span]) -> set[tuple[int, int]]:
    """The calendar months that inclusive ``[first_ts, last_ts]`` spans touch."""
    out: set[tuple[int, int]] = set()
    for first, last in spans:
        ym, end = month_of(first), month_of(last)
        while ym <= end:
            out.add(ym)
            ym = next_month(*ym)
    return out


def partition_name(table: str, year: int, month: int) -> str:
    return f"{table}_p{year:04d}{month:02d}"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def relkind(conn: asyncpg.Connection, schema: str, table: str) -> str | None:
    """``'p'`` (partitioned), ``'r'`` (plain) or ``None`` (no such table)."""
    kind = await conn.fetchval(_RELKIND, schema, table)
    if kind is None:
        return None
    return kind.decode() if isinstance(kind, bytes) else str(kind)  # asyncpg gives "char" as bytes


async def existing_months(conn: asyncpg.Connection, schema: str, table: str) -> set[tuple[int, int]]:
    """The months that have a partition of ``schema.table`` now."""
    out = set()
    for row in await conn.fetch(_PARTITIONS, schema, table):
        name = str(row[0])
        digits = name.rsplit("_p", 1)[-1]
        if name.startswith(f"{table}_p") and len(digits) == 6 and digits.isdigit():
            out.add((int(digits[:4]), int(digits[4:])))
    return out


async def lock_partitions(conn: asyncpg.Connection, schema: str, table: str) -> None:
    """Take the advisory lock that serialises making partitions of ``schema.table``, until the
    end of ``conn``'s transaction. A maker takes it before any lock on the table (it then locks
    the parent), so whoever takes it inside a transaction must hold no lock on the table yet, or
    the two deadlock (``initialize`` takes it first thing)."""
    await conn.execute(_PARTITION_LOCK, f"data_collector.partitions:{schema}:{table}")


async def create_partitions(
    conn: asyncpg.Connection,
    schema: str,
    table: str,
    months: Iterable[tuple[int, int]],
    *,
    prefix: str | None = None,
) -> None:
    """Make the monthly partitions of ``schema.table`` that do not exist, in the caller's
    transaction (or one of their own), serialised per table by an advisory lock so racing writers do not collide.

    Rows of such a month already in the default partition (written by something that did not
    make the partition first) are moved into the new one in the same transaction. The
    partitions are named after ``prefix`` (default: the table).
    """
    if not conn.is_in_transaction():  # a caller without one (a tool, a test) gets its own
        async with conn.transaction():
            await create_partitions(conn, schema, table, months, prefix=prefix)
        return
    prefix = prefix or table
    await lock_partitions(conn, schema, table)
    schema_q, table_ident = quote_ident(schema), quote_ident(table)
    default_ident = quote_ident(f"{prefix}_default")
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema_q}.{default_ident} PARTITION OF {schema_q}.{table_ident} DEFAULT"
    )
    missing = [
        ym for ym in sorted(months) if await relkind(conn, schema, partition_name(prefix, *ym)) is None
    ]
    if missing:
        # The parent first, in the mode CREATE ... PARTITION OF takes anyway: the default partition
        # is read below, and a transaction that retires a month locks the parent and then every
        # partition; reading the default first would deadlock with it.
        await conn.execute(f"LOCK TABLE ONLY {schema_q}.{table_ident} IN ACCESS EXCLUSIVE MODE")
    for year, month in missing:
        name = partition_name(prefix, year, month)
        # Bounds cannot be bound parameters in DDL; they are integers computed here.
        lo, hi = month_start_ms(year, month), month_start_ms(*next_month(year, month))
        stray = _STRAY.replace("{d}", default_ident).replace("{s}", schema_q)
        if not await conn.fetchval(stray, lo, hi):
            await conn.execute(
                f'CREATE TABLE {schema_q}."{name}" PARTITION OF {schema_q}.{table_ident} '
                f"FOR VALUES FROM ({int(lo)}) TO ({int(hi)})"
            )
            continue
        await conn.execute(f'CREATE TABLE {schema_q}."{name}" (LIKE {schema_q}.{table_ident} INCLUDING ALL)')
        move = (
            _MOVE_STRAY.replace("{d}", default_ident)
            .replace("{s}", schema_q)
            .replace("{p}", quote_ident(name))
        )
        await conn.execute(move, lo, hi)
        await conn.execute(
            f'ALTER TABLE {schema_q}.{table_ident} ATTACH PARTITION {schema_q}."{name}" '
            f"FOR VALUES FROM ({int(lo)}) TO ({int(hi)})"
        )


#: The tables partitioned by month on ``ts``.
PARTITIONED_TABLES = ("ohlcv", "trades")


class MonthlyPartitions:
    """The months of one table a store knows to have a partition, and making the missing ones.

    Args:
        store: the store whose pool and schema are used.
        table: ``ohlcv`` or ``trades``.
    """

    def __init__(self, store: PostgresCandleStore, table: str) -> None:
        self._store = store
        self.table = table
        #: None until looked up: whether the table is partitioned (a table made before is not).
        self._partitioned: bool | None = None
        self._known: set[tuple[int, int]] = set()

    def forget(self) -> None:
        """Look again next time (a partition was dropped, or the table was migrated)."""
        self._partitioned = None
        self._known.clear()

    async def ensure(self, conn: asyncpg.Connection, spans: Iterable[Span]) -> None:
        """Make sure every month the inclusive ``spans`` touch has a partition (outside any
        transaction of ``conn``: the DDL commits on its own). No round trip when all are known."""
        wanted = months_of_spans(spans)
        if self._partitioned is False or wanted <= self._known:
            return
        store = self._store
        if self._partitioned is None:
            kind = await store._bounded(relkind(conn, store.schema, self.table))
            self._partitioned = kind == PARTITIONED
            if not self._partitioned:
                return
            self._known = await store._bounded(existing_months(conn, store.schema, self.table))
        missing = wanted - self._known
        if missing:
            async with conn.transaction():
                await store._bounded(create_partitions(conn, store.schema, self.table, missing))
            self._known |= missing
