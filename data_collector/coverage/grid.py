"""The coverage map's model: a grid of time cells per (venue, symbol, data type, timeframe) row.

Pure arithmetic on the merged coverage record (no I/O): :mod:`data_collector.coverage.build`
reads the store and fills it, :mod:`data_collector.coverage.render` draws it. Each cell holds how
many milliseconds of it are stored, an exchange-side gap (covered as empty) or missing (never
fetched), and how many candles are stored or absent inside stored ranges (holes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from data_collector.errors import UsageError
from data_collector.markets import (
    DAY_MS,
    HOUR_MS,
    TIMEFRAME_MS,
    WEEK_MS,
    WEEK_OFFSET_MS,
    candle_opens,
)
from data_collector.storage.base import CoverageRange
from data_collector.storage.ranges import clip, subtract_spans

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CellSize = Literal["hour", "day", "week"]
#: Cell states, best to worst; a cell takes the worst state found in it, so a problem is never
#: hidden by the stored part around it. ``outside``: the cell lies outside the map's range.
STATES = ("outside", "stored", "exchange", "missing", "hole")
OUTSIDE, STORED, EXCHANGE, MISSING, HOLE = range(len(STATES))
STATE_LABELS = {
    "outside": "outside the range",
    "stored": "stored",
    "exchange": "exchange-side gap",
    "missing": "missing (never fetched)",
    "hole": "hole (fetched, rows absent)",
}
CELL_MS: dict[str, int] = {"hour": HOUR_MS, "day": DAY_MS, "week": WEEK_MS}
#: Cells are aligned like the exchange's candles: weeks start on Monday.
CELL_ORIGIN_MS: dict[str, int] = {"hour": 0, "day": 0, "week": WEEK_OFFSET_MS}
#: ``auto`` picks hours up to this span, then days up to the next, then weeks.
AUTO_HOURS_UP_TO_MS = 4 * DAY_MS
AUTO_DAYS_UP_TO_MS = 400 * DAY_MS
#: Nominal length of a calendar-month candle, for the percentage only.
_MONTH_MS = 30 * DAY_MS


def choose_cell(start_ms: int, end_ms: int, cell: str = "auto") -> CellSize:
    """``cell`` checked, or for ``auto`` hours (spans up to 4 days), days (up to 400) or weeks."""
    if cell == "auto":
        span = end_ms - start_ms
        return "hour" if span <= AUTO_HOURS_UP_TO_MS else "day" if span <= AUTO_DAYS_UP_TO_MS else "week"
    if cell not in CELL_MS:
        raise UsageError(f"cell must be auto, hour, day or week, not {cell!r}")
    return cell  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class CellGrid:
    """Cells ``[first_ms + i * cell_ms, ...)`` for ``i < count``, cut to ``[start_ms, end_ms)``."""

    cell: CellSize
    start_ms: int
    end_ms: int
    first_ms: int
    cell_ms: int
    count: int

    @classmethod
    def make(cls, start_ms: int, end_ms: int, cell: str = "auto") -> CellGrid:
        if end_ms <= start_ms:
            raise UsageError(f"the map's start ({iso(start_ms)}) must be before its end ({iso(end_ms)})")
        size = choose_cell(start_ms, end_ms, cell)
        width, origin = CELL_MS[size], CELL_ORIGIN_MS[size]
        first = start_ms - (start_ms - origin) % width
        return cls(size, start_ms, end_ms, first, width, -(-(end_ms - first) // width))

    def bounds(self) -> np.ndarray:
        """The ``count + 1`` cell boundaries, cut to the map's range."""
        raw = self.first_ms + self.cell_ms * np.arange(self.count + 1, dtype=np.int64)
        return np.clip(raw, self.start_ms, self.end_ms)

    def cell_start_ms(self, index: int) -> int:
        return max(self.start_ms, self.first_ms + index * self.cell_ms)

    def cell_end_ms(self, index: int) -> int:
        return min(self.end_ms, self.first_ms + (index + 1) * self.cell_ms)


def covered_per_cell(bounds: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Milliseconds of each cell ``[bounds[i], bounds[i + 1])`` inside the sorted, disjoint ``spans``."""
    if not spans:
        return np.zeros(len(bounds) - 1, dtype=np.int64)
    starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
    ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
    lengths = ends - starts
    before = np.concatenate(([0], np.cumsum(lengths)))
    # k: how many spans start at or before each boundary; all but the last of them end before it.
    k = np.searchsorted(starts, bounds, side="right")
    last = np.maximum(k - 1, 0)
    partial = np.where(k > 0, np.clip(bounds - starts[last], 0, lengths[last]), 0)
    upto = before[last] + partial
    return np.diff(upto)


def split_by_cells(grid: CellGrid, start_ms: int, end_ms: int) -> list[tuple[int, int, int]]:
    """``(cell index, piece start, piece end)`` of ``[start_ms, end_ms)`` cut at cell boundaries."""
    first = (start_ms - grid.first_ms) // grid.cell_ms
    last = (end_ms - 1 - grid.first_ms) // grid.cell_ms
    return [
        (
            i,
            max(start_ms, grid.first_ms + i * grid.cell_ms),
            min(end_ms, grid.first_ms + (i + 1) * grid.cell_ms),
        )
        for i in range(first, last + 1)
    ]


def expected_candles(pieces: Sequence[tuple[int, int, int]], timeframe: str) -> np.ndarray:
    """How many candles of ``timeframe`` open in each ``(cell, start, end)`` piece."""
    if not pieces:
        return np.zeros(0, dtype=np.int64)
    if timeframe == "1M":
        return np.array([len(candle_opens(s, e, timeframe)) for _, s, e in pieces], dtype=np.int64)
    step = TIMEFRAME_MS[timeframe]
    offset = WEEK_OFFSET_MS if timeframe == "1w" else 0
    a = np.fromiter((s for _, s, _ in pieces), dtype=np.int64, count=len(pieces)) - offset
    b = np.fromiter((e for _, _, e in pieces), dtype=np.int64, count=len(pieces)) - offset
    # Opens are the multiples of step in [a, b): ceil(b / step) - ceil(a / step).
    return np.asarray(-(-b // step) - -(-a // step), dtype=np.int64)


@dataclass(slots=True)
class CoverageRow:
    """One row of the map: a (venue, symbol, data type, timeframe) and its cells."""

    venue: str
    symbol: str
    data_type: str
    timeframe: str
    #: Per cell, milliseconds covered as data, covered as empty (exchange gap), not covered.
    stored_ms: np.ndarray
    exchange_ms: np.ndarray
    missing_ms: np.ndarray
    #: Per cell, candles present inside data ranges, and candles absent there (holes).
    stored_candles: np.ndarray
    hole_candles: np.ndarray
    #: Gaps by kind over the whole row: exchange-side ranges, never-fetched ranges.
    exchange_gaps: int = 0
    missing_gaps: int = 0
    states: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        inside = self.stored_ms + self.exchange_ms + self.missing_ms
        states = np.full(len(inside), OUTSIDE, dtype=np.int8)
        states[inside > 0] = STORED
        states[self.exchange_ms > 0] = EXCHANGE
        states[self.missing_ms > 0] = MISSING
        states[self.hole_candles > 0] = HOLE
        self.states = states

    @property
    def label(self) -> str:
        return f"{self.venue} {self.symbol} {self.data_type} {self.timeframe}"

    @property
    def hole_cells(self) -> int:
        return int(np.count_nonzero(self.hole_candles))

    @property
    def percent_complete(self) -> float:
        """Share of the range that is stored or known empty at the exchange (holes count against)."""
        total = int(self.stored_ms.sum() + self.exchange_ms.sum() + self.missing_ms.sum())
        if total == 0:
            return 0.0
        hole_ms = int(self.hole_candles.sum()) * TIMEFRAME_MS.get(self.timeframe, _MONTH_MS)
        done = max(0, int(self.stored_ms.sum() + self.exchange_ms.sum()) - hole_ms)
        return 100.0 * done / total

    def summary(self) -> str:
        """``99.2% complete · exchange 1 · missing 1 · holes 12 candles in 1 cell``."""
        holes = int(self.hole_candles.sum())
        cells = self.hole_cells
        return (
            f"{self.percent_complete:.1f}% complete · exchange {self.exchange_gaps} · "
            f"missing {self.missing_gaps} · holes {holes} candles in {cells} cell{'s' if cells != 1 else ''}"
        )


def row_from_record(
    grid: CellGrid,
    venue: str,
    symbol: str,
    timeframe: str,
    merged: Sequence[CoverageRange],
    hole_pieces: Sequence[tuple[int, int]] = (),
    data_type: str = "ohlcv",
) -> CoverageRow:
    """A row from the merged coverage record of one pair and its holes as ``(cell, candles)``."""
    inside = clip(merged, grid.start_ms, grid.end_ms)
    # Archived candles are stored too (in the Parquet tier); holes are looked for in 'data' only.
    data = [(r.start_ms, r.end_ms) for r in inside if r.kind in ("data", "archived")]
    empty = [(r.start_ms, r.end_ms) for r in inside if r.kind == "empty"]
    bounds = grid.bounds()
    stored_ms = covered_per_cell(bounds, data)
    exchange_ms = covered_per_cell(bounds, empty)
    missing_ms = np.diff(bounds) - stored_ms - exchange_ms
    pieces = [p for s, e in data for p in split_by_cells(grid, s, e)]
    stored_candles = np.zeros(grid.count, dtype=np.int64)
    np.add.at(stored_candles, [p[0] for p in pieces], expected_candles(pieces, timeframe))
    hole_candles = np.zeros(grid.count, dtype=np.int64)
    for cell, n in hole_pieces:
        hole_candles[cell] += n
    stored_candles -= hole_candles
    missing = subtract_spans(grid.start_ms, grid.end_ms, [(r.start_ms, r.end_ms) for r in inside])
    return CoverageRow(
        venue,
        symbol,
        data_type,
        timeframe,
        stored_ms,
        exchange_ms,
        missing_ms,
        stored_candles,
        hole_candles,
        exchange_gaps=len(empty),
        missing_gaps=len(missing),
    )


@dataclass(slots=True)
class CoverageMap:
    """What is stored, per row and time cell. Show it with :meth:`save_png`, :meth:`save_html`
    or inline in Jupyter (its HTML form); :meth:`summary` is the plain-text form."""

    grid: CellGrid
    rows: list[CoverageRow]

    def summary(self) -> str:
        """One line per row: its label, then its percentage and gaps by kind."""
        width = max((len(r.label) for r in self.rows), default=0)
        head = f"coverage {iso(self.grid.start_ms)} .. {iso(self.grid.end_ms)}, one cell per {self.grid.cell}"
        if not self.rows:
            return f"{head}: no coverage recorded"
        return "\n".join([head, *(f"{r.label:<{width}}  {r.summary()}" for r in self.rows)])

    def to_html(self, *, standalone: bool = True) -> str:
        """A self-contained page (or, with ``standalone=False``, an embeddable fragment)."""
        from data_collector.coverage.render import render_html

        return render_html(self, standalone=standalone)

    def save_html(self, path: str | Path) -> Path:
        """Write :meth:`to_html` to ``path``; return it."""
        target = Path(path)
        target.write_text(self.to_html(), encoding="utf-8")
        return target

    def figure(self) -> Figure:
        """The map as a matplotlib ``Figure`` (needs the ``coverage`` extra: matplotlib)."""
        from data_collector.coverage.render import render_figure

        return render_figure(self)

    def save_png(self, path: str | Path) -> Path:
        """Draw the map into a PNG at ``path`` (needs matplotlib); return it."""
        from data_collector.coverage.render import save_png

        return save_png(self, Path(path))

    def _repr_html_(self) -> str:
        return self.to_html(standalone=False)


def iso(ts_ms: int) -> str:
    """``2024-01-01`` at midnight UTC, else ``2024-01-01 13:00``."""
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%d") if ts_ms % DAY_MS == 0 else dt.strftime("%Y-%m-%d %H:%M")
