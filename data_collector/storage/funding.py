"""Funding rates of perpetual swaps: the records, a write's batch, and the frame.

Tables (PostgreSQL shown; SQLite mirrors them with ``ts`` as an integer):

* ``funding(instrument_id integer, ts bigint, rate double precision, mark_price double precision
  NULL, PRIMARY KEY (instrument_id, ts))``: one row per settlement, ``ts`` the funding time in
  UTC ms as the exchange reports it, ``rate`` the rate settled then.
* Coverage: time ranges ``[start_ms, end_ms)`` whose settlements are all stored, in the shared
  ``coverage`` table under the code of :data:`~data_collector.markets.FUNDING_SERIES` (1000),
  merged as candle coverage is.
* view ``funding_view(exchange, symbol, ts timestamptz, rate, mark_price)``.

A :class:`FundingBatch` is written atomically with its coverage, so a run killed at any moment
leaves whole pages behind, and a restart fetches exactly the ranges without coverage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from data_collector.errors import UsageError
from data_collector.markets import FUNDING_SERIES, SERIES_CODES
from data_collector.storage.base import WriteResult
from data_collector.storage.batching import PreparedWrite
from data_collector.storage.ranges import Span, merge_spans

if TYPE_CHECKING:
    import pandas as pd

#: ``(ts_ms, rate, mark_price)``; ``mark_price`` is ``None`` where the exchange gives none.
FundingRate = tuple[int, float, float | None]
#: ``(instrument_id, ts_ms, rate, mark_price)``: one row.
FundingRecord = tuple[int, int, float, float | None]
FUNDING_CODE = SERIES_CODES[FUNDING_SERIES]


@dataclass(slots=True)
class FundingBatch:
    """Funding rates of one instrument plus the ``[start_ms, end_ms)`` spans they prove whole."""

    instrument_id: int
    rates: Sequence[FundingRate]
    coverage: list[Span] = field(default_factory=list)


@dataclass(slots=True)
class PreparedFunding:
    records: list[FundingRecord]
    #: The coverage part, in the candle write's shape (one merge policy for both).
    coverage: PreparedWrite
    total: int


def prepare_funding(batches: Sequence[FundingBatch]) -> PreparedFunding:
    """Deduplicate (the last of a key wins) and check the batches of one write.

    Raises:
        UsageError: a rate outside its batch's coverage, or an empty or inverted span.
    """
    rows: dict[tuple[int, int], FundingRecord] = {}
    spans: dict[tuple[int, int, str], list[Span]] = {}
    total = 0
    for b in batches:
        for s, e in b.coverage:
            if e <= s:
                raise UsageError(f"empty funding coverage [{s}, {e})")
        covered = merge_spans(b.coverage)
        for ts, rate, mark in b.rates:
            if not any(s <= ts < e for s, e in covered):
                raise UsageError(f"funding at {ts} of instrument {b.instrument_id} lies outside its coverage")
            rows[(b.instrument_id, ts)] = (b.instrument_id, ts, rate, mark)
        total += len(b.rates)
        if covered:
            spans.setdefault((b.instrument_id, FUNDING_CODE, "data"), []).extend(covered)
    coverage = PreparedWrite(coverage={k: merge_spans(v) for k, v in sorted(spans.items())})
    return PreparedFunding([rows[k] for k in sorted(rows)], coverage, total)


class FundingTablesBase(ABC):
    """One backend's funding table; the store that owns the connection is ``store``."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def write(self, batches: Sequence[FundingBatch]) -> WriteResult:
        """Rows and coverage in one transaction; see :meth:`CandleStore.write_funding`."""
        prepared = prepare_funding(batches)
        if not prepared.records and not prepared.coverage.coverage:
            return WriteResult(0, prepared.total)
        written = await self._write(prepared)
        return WriteResult(written, prepared.total - written)

    @abstractmethod
    async def _write(self, prepared: PreparedFunding) -> int:
        """Write the rows and the coverage atomically; the rows written."""

    @abstractmethod
    async def load(self, instrument_id: int, start_ms: int, end_ms: int) -> list[FundingRate]:
        """Funding rates with ``start_ms <= ts < end_ms``, oldest first."""


def funding_frame(rates: Sequence[FundingRate]) -> pd.DataFrame:
    """Funding rates as a DataFrame: ``rate`` and ``mark_price`` (float64, NaN where unknown),
    indexed by the UTC funding time (``time``)."""
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rates], unit="ms", utc=True), name="time")
    return pd.DataFrame(
        {
            "rate": pd.array([r[1] for r in rates], dtype="float64"),
            "mark_price": pd.array([float("nan") if r[2] is None else r[2] for r in rates], dtype="float64"),
        },
        index=index,
    )
