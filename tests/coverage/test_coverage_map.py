"""The coverage map read from the real stores (PostgreSQL and SQLite), and its pure arithmetic."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_collector.config import load_config
from data_collector.coverage import build_coverage_map
from data_collector.coverage.grid import (
    EXCHANGE,
    HOLE,
    MISSING,
    STORED,
    CellGrid,
    covered_per_cell,
    expected_candles,
    row_from_record,
    split_by_cells,
)
from data_collector.errors import MissingExtraError
from data_collector.markets import HOUR_MS, MINUTE_MS, count_candles
from data_collector.storage import CandleBatch, CandleStore, CoverageRange, StoreSettings, open_store
from data_collector.storage.ranges import merge_spans
from tests.support.candles import batch
from tests.support.services import PG_URL


@pytest.fixture(params=["postgres", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, pg_schema: str) -> AsyncIterator[CandleStore]:
    if request.param == "postgres":
        opened = open_store(
            load_config({"database": {"url": PG_URL, "schema": pg_schema}, "logging": {"file": None}})
        )
    else:
        opened = open_store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"))
    async with opened:
        yield opened


async def delete_candles(store: CandleStore, instrument_id: int, start_ms: int, end_ms: int) -> None:
    """Lose candles behind the coverage record's back (what a hand-made DELETE does)."""
    ts = list(range(start_ms, end_ms, MINUTE_MS))
    # remove_candles with nothing to uncover is exactly a DELETE of those rows.
    assert await store.remove_candles(instrument_id, "1m", ts, []) == len(ts)


async def test_map_shows_stored_hole_exchange_and_missing_cells(store: CandleStore) -> None:
    iid = (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id
    await store.write([batch(iid, 0, 150), batch(iid, 180, 60)])
    await store.write(
        [CandleBatch(iid, "1m", [], [CoverageRange(150 * MINUTE_MS, 180 * MINUTE_MS, "empty")])]
    )
    await delete_candles(store, iid, 70 * MINUTE_MS, 73 * MINUTE_MS)

    cover = await build_coverage_map(store, ["binance"], since=0, until=6 * HOUR_MS)

    assert cover.grid.cell == "hour" and cover.grid.count == 6
    [row] = cover.rows
    assert row.label == "binance SOL/USDT ohlcv 1m"
    assert row.states.tolist() == [STORED, HOLE, EXCHANGE, STORED, MISSING, MISSING]
    assert row.hole_candles.tolist() == [0, 3, 0, 0, 0, 0]
    assert row.stored_candles.tolist() == [60, 57, 30, 60, 0, 0]
    assert row.summary() == "65.8% complete · exchange 1 · missing 1 · holes 3 candles in 1 cell"
    # Without the candle counts, the record alone: the hole is not seen.
    record_only = await build_coverage_map(store, ["binance"], since=0, until=6 * HOUR_MS, check_holes=False)
    assert record_only.rows[0].states.tolist() == [STORED, STORED, EXCHANGE, STORED, MISSING, MISSING]
    # Default range: the oldest to the newest coverage recorded.
    assert (await build_coverage_map(store, ["binance"])).grid.end_ms == 4 * HOUR_MS
    assert (await build_coverage_map(store, ["kraken"])).rows == []
    html = cover.to_html()
    assert (
        html.count('class="row"') == 1
        and 'data-state="hole"' in html
        and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )


def test_png_without_matplotlib_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from data_collector.coverage import CoverageMap

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import` sees when it is absent
    with pytest.raises(MissingExtraError, match=r"pip install 'data-collector\[coverage\]'"):
        CoverageMap(CellGrid.make(0, HOUR_MS), []).save_png(tmp_path / "x.png")


spans_strategy = st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 800)), max_size=8).map(
    lambda raw: merge_spans((s * 7919, (s + n) * 7919) for s, n in raw)
)


@given(spans=spans_strategy, start=st.integers(0, 10_000_000), length=st.integers(1, 40_000_000))
def test_covered_per_cell_matches_brute_force(spans: list[tuple[int, int]], start: int, length: int) -> None:
    grid = CellGrid.make(start, start + length, "hour")
    bounds = grid.bounds()
    got = covered_per_cell(bounds, spans)
    want = [
        sum(max(0, min(e, b) - max(s, a)) for s, e in spans)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    assert got.tolist() == want


@given(
    start=st.integers(0, 2_000_000_000_000),
    length=st.integers(1, 90 * 86_400_000),
    tf=st.sampled_from(["1m", "1h", "4h", "1d", "1w", "1M"]),
)
def test_expected_candles_matches_count_candles(start: int, length: int, tf: str) -> None:
    grid = CellGrid.make(start, start + length, "day")
    pieces = split_by_cells(grid, start, start + length)
    got = expected_candles(pieces, tf)
    assert got.tolist() == [count_candles(s, e, tf) for _, s, e in pieces]
    assert int(np.sum(got)) == count_candles(start, start + length, tf)


def test_archived_ranges_show_as_stored_not_missing() -> None:
    grid = CellGrid.make(0, 4 * HOUR_MS, "hour")
    merged = [CoverageRange(0, 2 * HOUR_MS, "archived"), CoverageRange(2 * HOUR_MS, 3 * HOUR_MS, "data")]
    row = row_from_record(grid, "binance", "SOL/USDT", "1m", merged)
    assert list(row.states) == [STORED, STORED, STORED, MISSING]
    assert row.missing_gaps == 1
