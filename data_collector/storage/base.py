"""The records every store reads and writes, and the tables they live in.

The contract itself is :class:`data_collector.storage.store.CandleStore` (one abstract base).

Tables (PostgreSQL shown; SQLite mirrors them with ``ts``/times as integers):

* ``instruments(id integer PK, exchange text, symbol text, base text, quote text,
  market_type text, listing_ms bigint NULL, UNIQUE (exchange, symbol))``
* ``ohlcv(instrument_id integer, timeframe smallint, ts bigint, open, high, low, close, volume
  double precision, PRIMARY KEY (instrument_id, timeframe, ts))``; ``ts`` is the candle's open
  time in UTC ms, ``timeframe`` is :data:`data_collector.markets.TIMEFRAME_CODES`.
* ``coverage(instrument_id, timeframe, start_ms, end_ms, kind)``: ranges ``[start_ms, end_ms)``
  that have been fetched and confirmed. ``kind`` is ``'data'`` (candles stored) or ``'empty'``
  (the exchange has none there: before listing, maintenance gaps) or ``'archived'`` (moved to the
  Parquet tier after a verified copy; only the archive writes it).
* view ``ohlcv_view(exchange, symbol, timeframe text, ts timestamptz, open, high, low, close,
  volume)`` for people who query in SQL.

A :class:`CandleBatch` is written atomically: its candles and its coverage range become visible
in the same transaction, or neither does. That is what makes a SIGKILL at any moment safe: a
restart re-fetches exactly the ranges with no coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

#: ``(ts_ms, open, high, low, close, volume)``
Candle = tuple[int, float, float, float, float, float]
#: ``'archived'``: the candles were moved to the Parquet tier (:mod:`data_collector.storage.archive`)
#: after a verified copy; covered, never refetched, read back from Parquet.
CoverageKind = Literal["data", "empty", "archived"]
#: ``'exchange'``: covered as empty (the exchange has no candles there); ``'missing'``: not covered
#: at all (never fetched); ``'hole'``: covered as data, yet candles are absent (lost or corrupt);
#: ``'archived'``: not in the database because the candles live in the Parquet tier.
GapKind = Literal["exchange", "missing", "hole", "archived"]


@dataclass(frozen=True, slots=True)
class Instrument:
    id: int
    exchange: str
    symbol: str
    base: str
    quote: str
    market_type: str = "spot"
    listing_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CoverageRange:
    start_ms: int
    end_ms: int
    kind: CoverageKind


@dataclass(frozen=True, slots=True)
class Gap:
    """A range ``[start_ms, end_ms)`` without candles, and why (see :data:`GapKind`)."""

    start_ms: int
    end_ms: int
    kind: GapKind


@dataclass(slots=True)
class CandleBatch:
    """Candles of one (instrument, timeframe) plus the ranges they prove covered.

    ``coverage`` lists ``[start_ms, end_ms)`` ranges confirmed by this batch: ``'data'`` where
    the candles are, ``'empty'`` where the exchange returned nothing. Candles must lie inside the
    ``'data'`` ranges. ``final=False`` marks a batch whose last candle may still be forming; the
    store then overwrites rows it already has instead of skipping them.
    """

    instrument_id: int
    timeframe: str
    candles: Sequence[Candle]
    coverage: list[CoverageRange] = field(default_factory=list)
    final: bool = True


@dataclass(slots=True)
class WriteResult:
    """Rows written and rows skipped; ``written + skipped`` is the number of candles passed in.

    Skipped rows were already stored (or repeated within the call). For ``final=False`` batches a
    row that changed an existing candle counts as written.
    """

    written: int = 0
    skipped: int = 0

    def __iadd__(self, other: WriteResult) -> WriteResult:
        self.written += other.written
        self.skipped += other.skipped
        return self
