"""The PostgreSQL side of the Parquet tier: read a month by binary COPY, and prune it verified.

Reading goes through ``COPY (SELECT …) TO STDOUT (FORMAT binary)``: every row of
``(ts, open, high, low, close, volume)`` has the same 74-byte layout there, so numpy parses a
whole month in one ``frombuffer`` instead of building a Python tuple per row.

Pruning is one transaction: lock the key's coverage rows, read the range again, compare its rows
and content hash with the file's, delete the range, and turn its ``'data'`` coverage into
``'archived'``. If anything differs (a row written meanwhile, a file that does not match) the
transaction rolls back and the rows stay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import numpy as np

from data_collector.errors import PermanentError
from data_collector.storage.base import CoverageRange
from data_collector.storage.parquet_files import CANDLE_FIELDS, CandleColumns, StepHook
from data_collector.storage.ranges import clip, cut_coverage

if TYPE_CHECKING:
    from data_collector.storage.postgres import PostgresCandleStore

_COPY_RANGE = (
    "SELECT ts, open, high, low, close, volume FROM {s}.ohlcv WHERE instrument_id = $1 "
    "AND timeframe = $2 AND ts >= $3 AND ts < $4 ORDER BY ts"
)
_DELETE_RANGE = "DELETE FROM {s}.ohlcv WHERE instrument_id = $1 AND timeframe = $2 AND ts >= $3 AND ts < $4"
_LOCK_COVERAGE = (
    "SELECT start_ms, end_ms, kind FROM {s}.coverage WHERE instrument_id = $1 AND timeframe = $2 FOR UPDATE"
)
_DELETE_COVERAGE = "DELETE FROM {s}.coverage WHERE instrument_id = $1 AND timeframe = $2"
_INSERT_COVERAGE = (
    "INSERT INTO {s}.coverage (instrument_id, timeframe, kind, start_ms, end_ms) "
    "SELECT $1, $2, * FROM unnest($3::text[], $4::bigint[], $5::bigint[])"
)
_KIND_CHECK = (
    "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
    "JOIN pg_namespace n ON n.oid = r.relnamespace "
    "WHERE n.nspname = $1 AND r.relname = 'coverage' AND c.contype = 'c' AND c.conname = 'coverage_kind_check'"
)
# Tables made before the Parquet tier allow 'data' and 'empty' only.
_WIDEN_KIND = (
    "ALTER TABLE {s}.coverage DROP CONSTRAINT IF EXISTS coverage_kind_check, "
    "ADD CONSTRAINT coverage_kind_check CHECK (kind IN ('data', 'empty', 'archived'))"
)

#: Binary COPY: 11-byte signature, flags, header extension length; each row: field count, then
#: length and big-endian value per field; the trailer is a field count of -1.
_HEADER = 19
_ROW = np.dtype(
    [("n", ">i2"), ("l0", ">i4"), ("ts", ">i8")]
    + [x for i, name in enumerate(CANDLE_FIELDS, 1) for x in ((f"l{i}", ">i4"), (name, ">f8"))]
)


class MoveMismatch(PermanentError):
    """The database's rows of a range differ from the archive file's: the range is not pruned."""


def parse_binary_copy(data: bytes) -> CandleColumns:
    """Candle columns from the bytes of a binary COPY of ``ts, open, high, low, close, volume``."""
    body = memoryview(data)[_HEADER : len(data) - 2]
    rows = np.frombuffer(body, dtype=_ROW)
    return CandleColumns(
        rows["ts"].astype(np.int64), {name: rows[name].astype(np.float64) for name in CANDLE_FIELDS}
    )


class PostgresArchiveSide:
    """What the archive asks of a :class:`PostgresCandleStore` (it borrows the store's pool)."""

    def __init__(self, store: PostgresCandleStore) -> None:
        self._store = store

    async def ensure_archived_kind(self) -> None:
        """Let the coverage table take ``'archived'`` (tables created before it existed)."""
        store = self._store
        async with store._connect() as (_, conn):
            definition = await store._bounded(conn.fetchval(_KIND_CHECK, store.schema))
            if definition is None or "archived" not in definition:
                await store._bounded(conn.execute(store._sql(_WIDEN_KIND)))

    async def _copy(
        self, conn: asyncpg.Connection, iid: int, code: int, start_ms: int, end_ms: int
    ) -> CandleColumns:
        chunks: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            chunks.append(chunk)

        await self._store._bounded(
            conn.copy_from_query(
                self._store._sql(_COPY_RANGE),
                iid,
                code,
                start_ms,
                end_ms,
                output=sink,
                format="binary",
                timeout=self._store._timeout_s,
            )
        )
        data = b"".join(chunks)
        if len(data) <= _HEADER + 2:
            return CandleColumns.empty()
        return parse_binary_copy(data)

    async def read_range(self, iid: int, code: int, start_ms: int, end_ms: int) -> CandleColumns:
        """The stored candles of ``[start_ms, end_ms)``, sorted by time."""
        async with self._store._connect() as (_, conn):
            return await self._copy(conn, iid, code, start_ms, end_ms)

    async def prune(
        self,
        iid: int,
        code: int,
        start_ms: int,
        end_ms: int,
        archived: CandleColumns,
        hook: StepHook | None = None,
    ) -> int:
        """Delete ``[start_ms, end_ms)`` and mark its data coverage archived, in one transaction,
        if every row there is in ``archived`` (the file as read back) with the same values.

        Raises:
            MoveMismatch: the rows differ (nothing was deleted).
        """
        store = self._store
        async with store._connect() as (_, conn), conn.transaction():
            rows = await store._bounded(conn.fetch(store._sql(_LOCK_COVERAGE), iid, code))
            held = await self._copy(conn, iid, code, start_ms, end_ms)
            same = archived.take(np.isin(archived.ts, held.ts))
            if len(same) != len(held) or same.content_hash() != held.content_hash():
                raise MoveMismatch(
                    f"rows {start_ms}..{end_ms} of instrument {iid}: the database holds {len(held)} "
                    f"rows, the archive file matches {len(same)} of them with other values or times"
                )
            status = await store._bounded(
                conn.execute(store._sql(_DELETE_RANGE), iid, code, start_ms, end_ms, timeout=store._timeout_s)
            )
            deleted = int(status.rsplit(" ", 1)[-1])
            if deleted != len(held):  # rows written since the read: keep everything
                raise MoveMismatch(f"rows of instrument {iid} changed during the move; run again")
            old = [CoverageRange(r[0], r[1], r[2]) for r in rows]
            moved = [
                CoverageRange(r.start_ms, r.end_ms, "archived")
                for r in clip(old, start_ms, end_ms)
                if r.kind == "data"
            ]
            kept = cut_coverage(old, [CoverageRange(start_ms, end_ms, "data")]) + moved
            await store._bounded(conn.execute(store._sql(_DELETE_COVERAGE), iid, code))
            await store._bounded(
                conn.execute(
                    store._sql(_INSERT_COVERAGE),
                    iid,
                    code,
                    [r.kind for r in kept],
                    [r.start_ms for r in kept],
                    [r.end_ms for r in kept],
                )
            )
            if hook is not None:
                hook("drop", "")
        return deleted
