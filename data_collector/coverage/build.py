"""Build a :class:`~data_collector.coverage.grid.CoverageMap` from a store, through its API.

Cost: one coverage query per venue (:meth:`CandleStore.venue_coverage`), then per pair one
grouped count of its stored candles per cell (:meth:`CandleStore.count_candles_per_cell`, an
index-only range scan), compared with the candles its stored ranges imply. No query runs per
cell, and none reads candles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import date, datetime

import numpy as np

from data_collector.config import to_ms
from data_collector.coverage.grid import (
    CellGrid,
    CoverageMap,
    CoverageRow,
    expected_candles,
    row_from_record,
    split_by_cells,
)
from data_collector.markets import TIMEFRAME_MS, normalize_symbol, validate_timeframe
from data_collector.storage.base import CoverageRange
from data_collector.storage.ranges import clip
from data_collector.storage.store import CandleStore

#: Pairs whose candles are counted at once (each holds one pooled connection for a moment).
COUNTS_IN_FLIGHT = 8
TimeLike = datetime | date | int | float | str


async def build_coverage_map(
    store: CandleStore,
    venues: Sequence[str],
    *,
    symbols: Sequence[str] | None = None,
    timeframes: Sequence[str] | None = None,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    cell: str = "auto",
    check_holes: bool = True,
) -> CoverageMap:
    """The coverage map of ``venues`` (venue labels, e.g. ``binance`` or ``sim-binance``).

    Args:
        store: an initialised store; the caller owns it.
        symbols, timeframes: only these (default: every one with coverage).
        since, until: the range (default: from the oldest to the newest coverage recorded).
        cell: ``auto`` (hours up to 4 days, days up to 400, then weeks), ``hour``, ``day``, ``week``.
        check_holes: count candles to find holes (covered ranges whose rows are absent); off,
            the map reads the coverage record alone.
    """
    wanted_symbols = {normalize_symbol(s) for s in symbols} if symbols else None
    wanted_tfs = {validate_timeframe(tf) for tf in timeframes} if timeframes else None
    start_ms = to_ms(since) if since is not None else 0
    end_ms = to_ms(until) if until is not None else int(time.time() * 1000)
    pairs: list[tuple[str, str, int, str, list[CoverageRange]]] = []
    for venue in dict.fromkeys(venues):
        names = {i.id: i.symbol for i in await store.instruments(venue)}
        record = await store.venue_coverage(venue, start_ms, end_ms)
        for (instrument_id, timeframe), ranges in record.items():
            symbol = names.get(instrument_id)
            if symbol is None or (wanted_symbols is not None and symbol not in wanted_symbols):
                continue
            if wanted_tfs is not None and timeframe not in wanted_tfs:
                continue
            pairs.append((venue, symbol, instrument_id, timeframe, ranges))
    if since is None and pairs:
        start_ms = max(start_ms, min(r[0].start_ms for *_, r in pairs if r))
    if until is None and pairs:
        end_ms = min(end_ms, max(r[-1].end_ms for *_, r in pairs if r))
    grid = CellGrid.make(start_ms, end_ms, cell)
    pairs.sort(key=lambda p: (p[0], p[1], TIMEFRAME_MS.get(p[3], 31 * 86_400_000)))
    limit = asyncio.Semaphore(COUNTS_IN_FLIGHT)

    async def one(
        venue: str, symbol: str, instrument_id: int, timeframe: str, ranges: list[CoverageRange]
    ) -> CoverageRow:
        holes: list[tuple[int, int]] = []
        if check_holes:
            async with limit:
                holes = await find_hole_cells(store, grid, instrument_id, timeframe, ranges)
        return row_from_record(grid, venue, symbol, timeframe, ranges, holes)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(*pair)) for pair in pairs]
    return CoverageMap(grid, [t.result() for t in tasks])


async def find_hole_cells(
    store: CandleStore, grid: CellGrid, instrument_id: int, timeframe: str, merged: Sequence[CoverageRange]
) -> list[tuple[int, int]]:
    """``(cell index, absent candles)`` of every cell where a stored range lacks candles.

    One grouped count per pair (:meth:`CandleStore.count_candles_per_cell`) against the candles
    the stored ranges imply, cell by cell.
    """
    data = [(r.start_ms, r.end_ms) for r in clip(merged, grid.start_ms, grid.end_ms) if r.kind == "data"]
    if not data:
        return []
    present = await store.count_candles_per_cell(instrument_id, timeframe, data, grid.first_ms, grid.cell_ms)
    pieces = [p for s, e in data for p in split_by_cells(grid, s, e)]
    expected = np.zeros(grid.count, dtype=np.int64)
    np.add.at(expected, [cell for cell, _, _ in pieces], expected_candles(pieces, timeframe))
    return [
        (int(cell), int(expected[cell] - present.get(int(cell), 0)))
        for cell in np.flatnonzero(expected)
        if present.get(int(cell), 0) < expected[cell]
    ]
