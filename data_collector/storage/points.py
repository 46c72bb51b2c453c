"""Tables of time points that are not candles (funding rates, open interest): one write policy.

A backend's table of points is a :class:`PointTables` subclass that names its SQL; a write
deduplicates the batches (:func:`prepared_points`), inserts the rows that are new (``ON CONFLICT
DO NOTHING``) and merges their coverage into the shared ``coverage`` table (the candles' merge,
under the series' code), all in one transaction: a run killed at any moment leaves whole pages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from data_collector.errors import UsageError
from data_collector.storage.base import CoverageRange, WriteResult
from data_collector.storage.batching import PreparedWrite
from data_collector.storage.ranges import Span, merge_spans

#: A row: the key first (``instrument_id``, then the rest of the key), then the values.
PointRecord = tuple[Any, ...]


@dataclass(slots=True)
class PreparedPoints:
    """One write: rows sorted by key (the last of a key wins), coverage merged."""

    records: list[PointRecord]
    coverage: PreparedWrite
    total: int


def prepared_points(
    items: Iterable[tuple[list[PointRecord], int, int, list[CoverageRange]]], key_len: int
) -> PreparedPoints:
    """Deduplicate and check ``(records, instrument_id, code, coverage)`` per batch.

    Each record's time (the last key column) must lie inside its batch's ``data`` coverage.

    Raises:
        UsageError: a point outside its batch's data coverage, or an empty or inverted range.
    """
    rows: dict[tuple[Any, ...], PointRecord] = {}
    spans: dict[tuple[int, int, str], list[Span]] = {}
    total = 0
    for records, instrument_id, code, coverage in items:
        for r in coverage:
            if r.end_ms <= r.start_ms or r.kind not in ("data", "empty"):
                raise UsageError(f"bad coverage [{r.start_ms}, {r.end_ms}) {r.kind!r}")
            spans.setdefault((instrument_id, code, r.kind), []).append((r.start_ms, r.end_ms))
        data = merge_spans((r.start_ms, r.end_ms) for r in coverage if r.kind == "data")
        for record in records:
            ts = record[key_len - 1]
            if not any(s <= ts < e for s, e in data):
                raise UsageError(f"a point at {ts} of instrument {instrument_id} lies outside its coverage")
            rows[record[:key_len]] = record
        total += len(records)
    merged = PreparedWrite(coverage={k: merge_spans(v) for k, v in sorted(spans.items())})
    return PreparedPoints([rows[k] for k in sorted(rows)], merged, total)


class PointTables(ABC):
    """One backend's table of points, owned by ``store`` (its connection or pool)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def write_prepared(self, prepared: PreparedPoints) -> WriteResult:
        """Rows and coverage in one transaction; ``written + skipped`` is the points passed in."""
        if not prepared.records and not prepared.coverage.coverage:
            return WriteResult(0, prepared.total)
        written = await self._write(prepared)
        return WriteResult(written, prepared.total - written)

    @abstractmethod
    async def _write(self, prepared: PreparedPoints) -> int:
        """Write the rows and the coverage atomically; the rows written."""

    @abstractmethod
    async def select(self, *key_and_range: Any) -> list[Any]:
        """The rows of one key in a time range, oldest first."""


class PostgresPoints(PointTables):
    """A table of points on PostgreSQL: rows by ``INSERT … SELECT unnest(…)`` (a few a day per
    instrument: COPY would buy nothing), coverage by :meth:`PostgresCandleStore._write_coverage`."""

    INSERT: str
    SELECT: str

    async def _write(self, prepared: PreparedPoints) -> int:
        store = self._store
        written = 0
        async with store._write_transaction(()) as conn:
            if prepared.records:
                columns = [list(c) for c in zip(*prepared.records, strict=True)]
                status = await store._bounded(
                    conn.execute(store._sql(self.INSERT), *columns, timeout=store._timeout_s)
                )
                written = int(str(status).rsplit(" ", 1)[-1])
            await store._write_coverage(conn, prepared.coverage)
        return written

    async def select(self, *key_and_range: Any) -> list[Any]:
        return list(await self._store._fetch(self.SELECT, *key_and_range))


class SqlitePoints(PointTables):
    """A table of points on SQLite: ``executemany`` and the store's coverage merge, one transaction."""

    INSERT: str
    SELECT: str

    async def _write(self, prepared: PreparedPoints) -> int:
        store = self._store
        async with store._transaction() as conn:
            before = conn.total_changes
            await store._bounded(conn.executemany(self.INSERT, prepared.records))
            written: int = conn.total_changes - before
            await store._write_coverage(conn, prepared.coverage)
        return written

    async def select(self, *key_and_range: Any) -> list[Any]:
        return list(await self._store._fetchall(self.SELECT, key_and_range))
