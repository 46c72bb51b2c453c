"""The storage contract shared by the backfill, the streamer and the health check.

Tables (PostgreSQL shown; SQLite mirrors them with ``ts``/times as integers):

* ``instruments(id integer PK, exchange text, symbol text, base text, quote text,
  market_type text, listing_ms bigint NULL, UNIQUE (exchange, symbol))``
* ``ohlcv(instrument_id integer, timeframe smallint, ts bigint, open, high, low, close, volume
  double precision, PRIMARY KEY (instrument_id, timeframe, ts))``; ``ts`` is the candle's open
  time in UTC ms, ``timeframe`` is :data:`data_collector.markets.TIMEFRAME_CODES`.
* ``coverage(instrument_id, timeframe, start_ms, end_ms, kind)``: ranges ``[start_ms, end_ms)``
  that have been fetched and confirmed. ``kind`` is ``'data'`` (candles stored) or ``'empty'``
  (the exchange has none there: before listing, maintenance gaps).
* view ``ohlcv_view(exchange, symbol, timeframe text, ts timestamptz, open, high, low, close,
  volume)`` for people who query in SQL.

A :class:`CandleBatch` is written atomically: its candles and its coverage range become visible
in the same transaction, or neither does. That is what makes a SIGKILL at any moment safe: a
restart re-fetches exactly the ranges with no coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

#: ``(ts_ms, open, high, low, close, volume)``
Candle = tuple[int, float, float, float, float, float]
CoverageKind = Literal["data", "empty"]


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
    written: int = 0
    skipped: int = 0

    def __iadd__(self, other: WriteResult) -> WriteResult:
        self.written += other.written
        self.skipped += other.skipped
        return self


class CandleStore(Protocol):
    """What every backend provides. Whoever opens a store owns it and closes it."""

    async def initialize(self) -> None:
        """Create the database (when allowed), the schema and the tables, idempotently."""

    async def close(self) -> None:
        """Close the pool; safe to call twice."""

    async def ensure_instrument(
        self, exchange: str, symbol: str, *, base: str, quote: str, market_type: str = "spot"
    ) -> Instrument:
        """Return the instrument, inserting it on first use (ids are stable)."""

    async def set_listing(self, instrument_id: int, listing_ms: int) -> None:
        """Record the first candle time the exchange has for this instrument."""

    async def write(self, batches: Sequence[CandleBatch]) -> WriteResult:
        """Write batches atomically (all or nothing): deduplicated, idempotent, with coverage."""

    async def coverage(self, instrument_id: int, timeframe: str) -> list[CoverageRange]:
        """Covered ranges, merged and sorted (adjacent ranges of one kind joined)."""

    async def load(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Candle]:
        """Candles with ``start_ms <= ts < end_ms``, oldest first."""

    async def latest_ts(self, instrument_id: int, timeframe: str) -> int | None:
        """Open time of the newest stored candle, or ``None``."""
