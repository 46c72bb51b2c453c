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
from typing import TYPE_CHECKING, Literal, Protocol, Self

if TYPE_CHECKING:
    import pandas as pd

#: ``(ts_ms, open, high, low, close, volume)``
Candle = tuple[int, float, float, float, float, float]
CoverageKind = Literal["data", "empty"]
#: ``'exchange'``: covered as empty (the exchange has no candles there); ``'missing'``: not covered
#: at all (never fetched); ``'hole'``: covered as data, yet candles are absent (lost or corrupt).
GapKind = Literal["exchange", "missing", "hole"]


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


class CandleStore(Protocol):
    """What every backend provides. Whoever opens a store owns it and closes it."""

    async def initialize(self) -> None:
        """Create the database (when allowed), the schema and the tables, idempotently."""

    async def __aenter__(self) -> Self:
        """``async with open_store(config) as store:`` initialises the store, and closes it after."""

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def close(self) -> None:
        """Close the pool; safe to call twice."""

    async def ensure_instrument(
        self, exchange: str, symbol: str, *, base: str, quote: str, market_type: str = "spot"
    ) -> Instrument:
        """Return the instrument, inserting it on first use (ids are stable)."""

    async def set_listing(self, instrument_id: int, listing_ms: int | None) -> None:
        """Record the first candle time the exchange has for this instrument (``None``: unknown)."""

    async def instruments(self, exchange: str) -> list[Instrument]:
        """Every stored instrument of the venue label ``exchange``, by id."""

    async def remove_candles(
        self, instrument_id: int, timeframe: str, ts: Sequence[int], uncover: Sequence[CoverageRange]
    ) -> int:
        """Delete the candles opening at ``ts`` and take ``uncover`` out of the coverage of its
        kind, in one transaction; return the rows deleted. For repairs such as removing demo rows:
        uncovered ranges are fetched again by the next run."""

    async def write(self, batches: Sequence[CandleBatch]) -> WriteResult:
        """Write batches atomically (all or nothing): deduplicated, idempotent, with coverage."""

    async def coverage(self, instrument_id: int, timeframe: str) -> list[CoverageRange]:
        """Covered ranges, merged and sorted (adjacent ranges of one kind joined)."""

    async def load(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Candle]:
        """Candles with ``start_ms <= ts < end_ms``, oldest first."""

    async def latest_ts(self, instrument_id: int, timeframe: str) -> int | None:
        """Open time of the newest stored candle, or ``None``."""

    async def newest_candles(
        self, exchange: str, symbols: Sequence[str], timeframes: Sequence[str]
    ) -> dict[tuple[str, str], int]:
        """Open time of the newest stored candle per ``(symbol, timeframe)``, in one round trip.

        Pairs without candles (or whose instrument was never stored) are left out.

        Raises:
            StoreNotInitializedError: the tables do not exist yet.
        """

    async def server_version(self) -> str:
        """The database's product and version, e.g. ``PostgreSQL 15.20``; one round trip, so a ping."""

    async def get_instrument(self, exchange: str, symbol: str) -> Instrument | None:
        """The instrument, or ``None`` when it was never stored."""

    async def missing_ranges(
        self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, int]]:
        """Parts of ``[start_ms, end_ms)`` that no coverage range covers (what to fetch), sorted."""

    async def find_gaps(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Gap]:
        """Gaps in ``[start_ms, end_ms)``: exchange-side, missing (never fetched) and holes."""

    async def load_frame(
        self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int
    ) -> pd.DataFrame:
        """Candles as a DataFrame indexed by UTC time, columns open high low close volume."""
