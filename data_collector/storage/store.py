"""The one storage contract: :class:`CandleStore`, an abstract base every backend subclasses.

The backends (:mod:`~data_collector.storage.postgres`, :mod:`~data_collector.storage.sqlite`)
implement a few queries; coverage reading, gap finding and DataFrames are shared here on top of
them. The records it reads and writes, and the tables, are in :mod:`data_collector.storage.base`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Self

from data_collector.errors import PermanentError
from data_collector.markets import CODE_TIMEFRAMES, candle_opens, count_candles, timeframe_code
from data_collector.storage.base import Candle, CandleBatch, CoverageRange, Gap, Instrument, WriteResult
from data_collector.storage.funding import FundingBatch, FundingRate, FundingTables, funding_frame
from data_collector.storage.open_interest import (
    OpenInterest,
    OpenInterestBatch,
    OpenInterestTables,
    open_interest_frame,
)
from data_collector.storage.trades import (
    TRADE_FRAME_COLUMNS,
    Trade,
    TradeBatch,
    TradeCoverage,
    merge_trade_coverage,
)

if TYPE_CHECKING:
    import pandas as pd

    from data_collector.config import Config

from data_collector.picking import pick
from data_collector.storage.ranges import (
    Span,
    clip,
    gaps_from_coverage,
    hole_spans,
    merge_coverage,
    subtract_spans,
)

FRAME_COLUMNS = ["open", "high", "low", "close", "volume"]


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """What a store uses: the ``database`` section and the pool keys of ``performance``.

    Build it with :meth:`from_config`, or directly in a test (only ``url`` is required). SQLite
    uses ``url`` and ``command_timeout_s`` only.
    """

    #: ``postgresql+asyncpg://…`` or ``sqlite+aiosqlite:///path``; kept out of ``repr`` (password).
    url: str = field(repr=False)
    #: PostgreSQL schema of the tables.
    db_schema: str = "public"
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 60.0
    pool_size: int = 20
    max_overflow: int = 40
    pool_recycle_s: int = 3600

    @classmethod
    def from_config(cls, config: Config) -> StoreSettings:
        db, perf = config.database, config.performance
        pool = {
            "pool_size": "db_pool_size",
            "max_overflow": "db_max_overflow",
            "pool_recycle_s": "db_pool_recycle",
        }
        return cls(
            url=db.url.get_secret_value(),
            **pick(db, "db_schema", "connect_timeout_s", "command_timeout_s"),
            **pick(perf, **pool),
        )


class TradeTables(Protocol):
    """What a backend provides for trades (:mod:`~data_collector.storage.postgres_trades`,
    :mod:`~data_collector.storage.sqlite_trades`)."""

    async def write(self, batches: Sequence[TradeBatch]) -> WriteResult: ...

    async def coverage_rows(self, instrument_id: int) -> list[TradeCoverage]: ...

    async def load(self, instrument_id: int, start_ms: int, end_ms: int) -> list[Trade]: ...


class CandleStore(ABC):
    """What every backend provides. Whoever opens a store owns it and closes it."""

    @abstractmethod
    async def initialize(self) -> None:
        """Create the database (when allowed), the schema and the tables, idempotently."""

    async def __aenter__(self) -> Self:
        """``async with open_store(config) as store:`` initialises the store, and closes it after."""
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abstractmethod
    async def close(self) -> None:
        """Close the pool; safe to call twice."""

    @abstractmethod
    async def ensure_instrument(
        self, exchange: str, symbol: str, *, base: str, quote: str, market_type: str = "spot"
    ) -> Instrument:
        """Return the instrument, inserting it on first use (ids are stable)."""

    @abstractmethod
    async def get_instrument(self, exchange: str, symbol: str) -> Instrument | None:
        """The instrument, or ``None`` when it was never stored."""

    @abstractmethod
    async def set_listing(self, instrument_id: int, listing_ms: int | None) -> None:
        """Record the first candle time the exchange has for this instrument (``None``: unknown)."""

    @abstractmethod
    async def instruments(self, exchange: str) -> list[Instrument]:
        """Every stored instrument of the venue label ``exchange``, by id."""

    @abstractmethod
    async def remove_candles(
        self, instrument_id: int, timeframe: str, ts: Sequence[int], uncover: Sequence[CoverageRange]
    ) -> int:
        """Delete the candles opening at ``ts`` and take ``uncover`` out of the coverage of its
        kind, in one transaction; return the rows deleted. For repairs such as removing demo rows:
        uncovered ranges are fetched again by the next run."""

    @abstractmethod
    async def write(self, batches: Sequence[CandleBatch]) -> WriteResult:
        """Write batches atomically (all or nothing): deduplicated, idempotent, with coverage."""

    @abstractmethod
    async def latest_ts(self, instrument_id: int, timeframe: str) -> int | None:
        """Open time of the newest stored candle, or ``None``."""

    @abstractmethod
    async def newest_candles(
        self, exchange: str, symbols: Sequence[str], timeframes: Sequence[str]
    ) -> dict[tuple[str, str], int]:
        """Open time of the newest stored candle per ``(symbol, timeframe)``, in one round trip.

        Pairs without candles (or whose instrument was never stored) are left out.

        Raises:
            StoreNotInitializedError: the tables do not exist yet.
        """

    @abstractmethod
    async def server_version(self) -> str:
        """The database's product and version, e.g. ``PostgreSQL 15.20``; one round trip, so a ping."""

    @abstractmethod
    async def _coverage_rows(self, instrument_id: int, code: int) -> list[CoverageRange]:
        """Every stored coverage row of (instrument, timeframe code), unmerged."""

    @abstractmethod
    async def _venue_coverage_rows(
        self, exchange: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, int, CoverageRange]]:
        """``(instrument_id, timeframe code, range)`` of every coverage row of the venue label
        ``exchange`` that overlaps ``[start_ms, end_ms)``, unmerged, in one query."""

    @abstractmethod
    async def _count_rows(self, instrument_id: int, code: int, spans: Sequence[Span]) -> list[int]:
        """How many candles each span holds."""

    @abstractmethod
    async def _load_ts(self, instrument_id: int, code: int, start_ms: int, end_ms: int) -> list[int]:
        """Open times of the stored candles in ``[start_ms, end_ms)``."""

    @abstractmethod
    async def load(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Candle]:
        """Candles with ``start_ms <= ts < end_ms``, oldest first."""

    def _trade_tables(self) -> TradeTables:
        """The backend's trades tables; a store without them refuses trades with one line."""
        raise PermanentError(f"{type(self).__name__} does not store trades")

    async def write_trades(self, batches: Sequence[TradeBatch]) -> WriteResult:
        """Write trade batches atomically (all or nothing): deduplicated by ``(instrument, id)``,
        idempotent, together with their id-keyed coverage (:mod:`data_collector.storage.trades`).

        Raises:
            TransientError: the connection failed; nothing was written, retrying is safe.
            UsageError: a trade lies outside its batch's coverage.
        """
        return await self._trade_tables().write(batches)

    async def load_trades(self, instrument_id: int, start_ms: int, end_ms: int) -> list[Trade]:
        """Trades with ``start_ms <= ts < end_ms``, by id."""
        return await self._trade_tables().load(instrument_id, start_ms, end_ms)

    async def trade_coverage(self, instrument_id: int) -> list[TradeCoverage]:
        """The instrument's trade coverage, merged (rows whose ids touch joined) and sorted by id."""
        return merge_trade_coverage(await self._trade_tables().coverage_rows(instrument_id))

    async def load_trades_frame(self, instrument_id: int, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Trades in ``[start_ms, end_ms)`` as a DataFrame (see :func:`trades_frame`)."""
        return trades_frame(await self.load_trades(instrument_id, start_ms, end_ms))

    def _funding_tables(self) -> FundingTables:
        """The backend's funding table; a store without it refuses funding rates with one line."""
        raise PermanentError(f"{type(self).__name__} does not store funding rates")

    async def write_funding(self, batches: Sequence[FundingBatch]) -> WriteResult:
        """Write funding batches atomically with their coverage (coverage key ``"funding"``),
        deduplicated by ``(instrument, ts)``, idempotent."""
        return await self._funding_tables().write(batches)

    async def load_funding(self, instrument_id: int, start_ms: int, end_ms: int) -> list[FundingRate]:
        """Funding rates with ``start_ms <= ts < end_ms``, oldest first."""
        return await self._funding_tables().load(instrument_id, start_ms, end_ms)

    async def load_funding_frame(self, instrument_id: int, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Funding rates in ``[start_ms, end_ms)`` as a DataFrame (see :func:`funding_frame`)."""
        return funding_frame(await self.load_funding(instrument_id, start_ms, end_ms))

    def _open_interest_tables(self) -> OpenInterestTables:
        """The backend's open interest table; a store without it refuses them with one line."""
        raise PermanentError(f"{type(self).__name__} does not store open interest")

    async def write_open_interest(self, batches: Sequence[OpenInterestBatch]) -> WriteResult:
        """Write open interest batches atomically with their coverage (key ``"oi:<period>"``),
        deduplicated by ``(instrument, period, ts)``, idempotent."""
        return await self._open_interest_tables().write(batches)

    async def load_open_interest(
        self, instrument_id: int, period: str, start_ms: int, end_ms: int
    ) -> list[OpenInterest]:
        """Open interest points of ``period`` with ``start_ms <= ts < end_ms``, oldest first."""
        return await self._open_interest_tables().load(instrument_id, period, start_ms, end_ms)

    async def load_open_interest_frame(
        self, instrument_id: int, period: str, start_ms: int, end_ms: int
    ) -> pd.DataFrame:
        """Open interest in ``[start_ms, end_ms)`` as a DataFrame (see :func:`open_interest_frame`)."""
        return open_interest_frame(await self.load_open_interest(instrument_id, period, start_ms, end_ms))

    async def coverage(self, instrument_id: int, timeframe: str) -> list[CoverageRange]:
        """Covered ranges, merged and sorted (adjacent ranges of one kind joined).

        Where a ``'data'`` range overlaps an ``'empty'`` one, the overlap counts as ``'data'``.
        """
        return merge_coverage(await self._coverage_rows(instrument_id, timeframe_code(timeframe)))

    async def venue_coverage(
        self, exchange: str, start_ms: int, end_ms: int
    ) -> dict[tuple[int, str], list[CoverageRange]]:
        """The coverage record of a whole venue in one query: merged ranges per
        ``(instrument_id, timeframe)`` that overlap ``[start_ms, end_ms)`` (unclipped)."""
        grouped: dict[tuple[int, int], list[CoverageRange]] = {}
        for instrument_id, code, row in await self._venue_coverage_rows(exchange, start_ms, end_ms):
            grouped.setdefault((instrument_id, code), []).append(row)
        # Only traded-price candles make the map; other series (mark, funding) have codes of their own.
        return {
            (i, CODE_TIMEFRAMES[code]): merge_coverage(rows)
            for (i, code), rows in grouped.items()
            if code in CODE_TIMEFRAMES
        }

    async def count_candles(self, instrument_id: int, timeframe: str, spans: Sequence[Span]) -> list[int]:
        """How many stored candles each ``[start_ms, end_ms)`` span holds, in one round trip
        (PostgreSQL; one index range count per span on SQLite)."""
        if not spans:
            return []
        return await self._count_rows(instrument_id, timeframe_code(timeframe), spans)

    async def count_candles_per_cell(
        self, instrument_id: int, timeframe: str, spans: Sequence[Span], first_ms: int, cell_ms: int
    ) -> dict[int, int]:
        """Stored candles inside ``spans`` per cell ``(ts - first_ms) // cell_ms`` (cells with none
        are left out). One grouped query on the backends; here, one count per piece of a span."""
        pieces = [
            (cell, max(s, first_ms + cell * cell_ms), min(e, first_ms + (cell + 1) * cell_ms))
            for s, e in spans
            for cell in range((s - first_ms) // cell_ms, (e - 1 - first_ms) // cell_ms + 1)
        ]
        counts = await self.count_candles(instrument_id, timeframe, [(a, b) for _, a, b in pieces])
        out: dict[int, int] = {}
        for (cell, _, _), n in zip(pieces, counts, strict=True):
            if n:
                out[cell] = out.get(cell, 0) + n
        return out

    async def missing_ranges(
        self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, int]]:
        """Parts of ``[start_ms, end_ms)`` that no coverage range covers (what to fetch), sorted."""
        covered = await self.coverage(instrument_id, timeframe)
        return subtract_spans(start_ms, end_ms, ((r.start_ms, r.end_ms) for r in covered))

    async def find_gaps(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Gap]:
        """Gaps in ``[start_ms, end_ms)``, sorted by start.

        * ``'exchange'``: covered as empty; the exchange has no candles there (not refetched).
        * ``'missing'``: not covered at all; never fetched (or the fetch never committed).
        * ``'hole'``: covered as data, yet candles are absent. Found by comparing each covered
          range's row count with the candles its timeframe implies, so it costs one count per
          covered range; the missing candles are located only where a count falls short.
        """
        code = timeframe_code(timeframe)
        merged = merge_coverage(await self._coverage_rows(instrument_id, code))
        gaps = gaps_from_coverage(merged, start_ms, end_ms)
        data = [(r.start_ms, r.end_ms) for r in clip(merged, start_ms, end_ms) if r.kind == "data"]
        if data:
            counts = await self._count_rows(instrument_id, code, data)
            for (s, e), n in zip(data, counts, strict=True):
                if n < count_candles(s, e, timeframe):
                    present = await self._load_ts(instrument_id, code, s, e)
                    opens = candle_opens(s, e, timeframe)
                    gaps += [Gap(a, b, "hole") for a, b in hole_spans(opens, present, e)]
        gaps.sort(key=lambda g: g.start_ms)
        return gaps

    async def load_frame(
        self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int
    ) -> pd.DataFrame:
        """Candles in ``[start_ms, end_ms)`` as a DataFrame for notebooks.

        Returns:
            A DataFrame indexed by a UTC ``DatetimeIndex`` named ``time`` (the candle's open
            time) with float columns ``open high low close volume``, oldest first.
        """
        return candles_frame(await self.load(instrument_id, timeframe, start_ms, end_ms))


def candles_frame(candles: Sequence[Candle]) -> pd.DataFrame:
    """Candles as a DataFrame indexed by UTC open time (see :meth:`CandleStore.load_frame`)."""
    # pandas costs ~44 MB of RSS: only notebook reads pay for it, not backfills or streams.
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime([c[0] for c in candles], unit="ms", utc=True), name="time")
    frame = pd.DataFrame([c[1:] for c in candles], columns=FRAME_COLUMNS, index=index, dtype="float64")
    return frame


def trades_frame(trades: Sequence[Trade]) -> pd.DataFrame:
    """Trades as a DataFrame indexed by their UTC time, oldest first.

    Columns: ``id`` (int64, the aggregate trade id), ``price`` and ``qty`` (float64),
    ``first_trade_id`` and ``last_trade_id`` (int64), ``buyer_maker`` (bool); the index is a UTC
    ``DatetimeIndex`` named ``time``.
    """
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime([t[1] for t in trades], unit="ms", utc=True), name="time")
    frame = pd.DataFrame(
        {
            "id": pd.array([t[0] for t in trades], dtype="int64"),
            "price": pd.array([t[2] for t in trades], dtype="float64"),
            "qty": pd.array([t[3] for t in trades], dtype="float64"),
            "first_trade_id": pd.array([t[4] for t in trades], dtype="int64"),
            "last_trade_id": pd.array([t[5] for t in trades], dtype="int64"),
            "buyer_maker": pd.array([bool(t[6]) for t in trades], dtype="bool"),
        },
        index=index,
        columns=TRADE_FRAME_COLUMNS,
    )
    return frame
