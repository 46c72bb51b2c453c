"""Open interest of perpetual swaps: the records, a write's batch, and the frame.

Tables (PostgreSQL shown; SQLite mirrors them with ``ts`` as an integer):

* ``open_interest(instrument_id integer, period smallint, ts bigint, amount double precision,
  value double precision, PRIMARY KEY (instrument_id, period, ts))``: Binance's
  ``openInterestHist`` points, ``period`` a timeframe code (``5m`` … ``1d``), ``ts`` the point's
  time in UTC ms, ``amount`` the open interest in contracts (base units), ``value`` in the quote.
* Coverage: in the shared ``coverage`` table under the code of ``"oi:<period>"`` (2000 + the
  period's timeframe code), ``data`` and ``empty`` ranges as for candles.
* view ``open_interest_view(exchange, symbol, period text, ts timestamptz, amount, value)``.

The exchange serves only the last 30 days of these points: a collector that runs on a schedule
keeps more history in its database than the exchange has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from data_collector.markets import SERIES_CODES, TIMEFRAME_CODES
from data_collector.storage.base import CoverageRange, WriteResult
from data_collector.storage.points import PointTables, PreparedPoints, prepared_points

if TYPE_CHECKING:
    import pandas as pd

#: ``(ts_ms, amount, value)``
OpenInterest = tuple[int, float, float]


@dataclass(slots=True)
class OpenInterestBatch:
    """Open interest points of one (instrument, period) plus the ranges they prove."""

    instrument_id: int
    period: str
    points: Sequence[OpenInterest]
    coverage: list[CoverageRange] = field(default_factory=list)


def prepare_open_interest(batches: Sequence[OpenInterestBatch]) -> PreparedPoints:
    """Deduplicate (the last of a key wins) and check the batches of one write.

    Raises:
        UsageError: a point outside its batch's data coverage, or a bad coverage range.
    """
    items = (
        (
            [(b.instrument_id, TIMEFRAME_CODES[b.period], *p) for p in b.points],
            b.instrument_id,
            SERIES_CODES[f"oi:{b.period}"],
            b.coverage,
        )
        for b in batches
    )
    return prepared_points(items, key_len=3)


class OpenInterestTables(PointTables):
    """One backend's ``open_interest`` table (see :mod:`data_collector.storage.points`)."""

    async def write(self, batches: Sequence[OpenInterestBatch]) -> WriteResult:
        return await self.write_prepared(prepare_open_interest(batches))

    async def load(self, instrument_id: int, period: str, start_ms: int, end_ms: int) -> list[OpenInterest]:
        rows = await self.select(instrument_id, TIMEFRAME_CODES[period], start_ms, end_ms)
        return [(int(r[0]), float(r[1]), float(r[2])) for r in rows]


def open_interest_frame(points: Sequence[OpenInterest]) -> pd.DataFrame:
    """Open interest as a DataFrame: ``amount`` and ``value`` (float64), indexed by UTC time (``time``)."""
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime([p[0] for p in points], unit="ms", utc=True), name="time")
    return pd.DataFrame(
        {
            "amount": pd.array([p[1] for p in points], dtype="float64"),
            "value": pd.array([p[2] for p in points], dtype="float64"),
        },
        index=index,
    )
