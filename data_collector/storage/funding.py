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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from data_collector.markets import FUNDING_SERIES, SERIES_CODES
from data_collector.storage.base import CoverageRange, WriteResult
from data_collector.storage.points import PointTables, PreparedPoints, prepared_points
from data_collector.storage.ranges import Span

if TYPE_CHECKING:
    import pandas as pd

#: ``(ts_ms, rate, mark_price)``; ``mark_price`` is ``None`` where the exchange gives none.
FundingRate = tuple[int, float, float | None]
FUNDING_CODE = SERIES_CODES[FUNDING_SERIES]


@dataclass(slots=True)
class FundingBatch:
    """Funding rates of one instrument plus the ``[start_ms, end_ms)`` spans they prove whole."""

    instrument_id: int
    rates: Sequence[FundingRate]
    coverage: list[Span] = field(default_factory=list)


def prepare_funding(batches: Sequence[FundingBatch]) -> PreparedPoints:
    """Deduplicate (the last of a key wins) and check the batches of one write.

    Raises:
        UsageError: a rate outside its batch's coverage, or an empty or inverted span.
    """
    items = (
        (
            [(b.instrument_id, *r) for r in b.rates],
            b.instrument_id,
            FUNDING_CODE,
            [CoverageRange(s, e, "data") for s, e in b.coverage],
        )
        for b in batches
    )
    return prepared_points(items, key_len=2)


class FundingTables(PointTables):
    """One backend's ``funding`` table (see :mod:`data_collector.storage.points`)."""

    async def write(self, batches: Sequence[FundingBatch]) -> WriteResult:
        return await self.write_prepared(prepare_funding(batches))

    async def load(self, instrument_id: int, start_ms: int, end_ms: int) -> list[FundingRate]:
        rows = await self.select(instrument_id, start_ms, end_ms)
        return [(int(r[0]), float(r[1]), None if r[2] is None else float(r[2])) for r in rows]


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
