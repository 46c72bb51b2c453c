"""Open interest history through the futures client: one validated page, and the 30-day window.

ccxt's ``fetch_open_interest_history(symbol, period, since, limit, params={"until": ...})`` maps to
Binance's ``/futures/data/openInterestHist`` (``startTime``, ``endTime`` inclusive, at most 500
points). The points are aligned to their period as candles are, so their pages are planned,
proven and written as candle pages are (:mod:`data_collector.backfill.plan`), under the series key
``"oi:<period>"``.

Binance serves only the last 30 days and refuses a window reaching further back; a run asked for
more is refused before anything is fetched (:func:`check_open_interest_window`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from data_collector.backfill.plan import Range
from data_collector.backfill.validate import MalformedPageError
from data_collector.errors import UsageError
from data_collector.markets import DAY_MS, HOUR_MS, TIMEFRAME_MS
from data_collector.storage.open_interest import OpenInterest

if TYPE_CHECKING:
    from data_collector.backfill.exchange import ExchangeClient

#: Binance's most points per ``openInterestHist`` answer.
OPEN_INTEREST_PAGE_LIMIT = 500
#: ccxt's cost of ``openInterestHist`` (Binance documents no weight for ``/futures/data``; its own
#: limit there is 1,000 requests per 5 minutes per IP, far above this collector's pace).
OPEN_INTEREST_WEIGHT = 1
#: How far back the exchange serves open interest.
OPEN_INTEREST_HISTORY_MS = 30 * DAY_MS
#: Slack for the run's length: a window that starts this close to the limit may be past it by the
#: time its page is asked for.
_SLACK_MS = HOUR_MS


def check_open_interest_window(start_ms: int, server_now_ms: int) -> None:
    """Refuse a start the exchange's open interest history does not reach, with what is possible.

    Raises:
        UsageError: ``start_ms`` is more than 30 days (less an hour of slack) before now.
    """
    earliest = server_now_ms - OPEN_INTEREST_HISTORY_MS + _SLACK_MS
    if start_ms < earliest:
        asked = datetime.fromtimestamp(start_ms / 1000, tz=UTC).isoformat(timespec="minutes")
        possible = datetime.fromtimestamp(earliest / 1000, tz=UTC).isoformat(timespec="minutes")
        raise UsageError(
            f"open_interest: the exchange serves only the last 30 days, and start is {asked}; "
            f"start at {possible} or later (e.g. start: 29d), or drop open_interest from data_types"
        )


def validate_open_interest(rows: object, period: str, start_ms: int, end_ms: int) -> list[OpenInterest]:
    """ccxt's open interest history as ``(ts, amount, value)``, or :class:`MalformedPageError`.

    Valid: times aligned to ``period`` inside ``[start_ms, end_ms)``, strictly increasing, amounts
    and values finite and not negative.
    """
    if not isinstance(rows, list):
        raise MalformedPageError(f"expected a list of open interest points, got {type(rows).__name__}")
    step = TIMEFRAME_MS[period]
    out: list[OpenInterest] = []
    for row in rows:
        ts = row.get("timestamp") if isinstance(row, dict) else None
        amount = row.get("openInterestAmount") if isinstance(row, dict) else None
        value = row.get("openInterestValue") if isinstance(row, dict) else None
        if not isinstance(ts, int) or not all(isinstance(v, (int, float)) for v in (amount, value)):
            raise MalformedPageError(f"an open interest point lacks a time or a number: {row!r:.80}")
        numbers = (float(amount), float(value))  # type: ignore[arg-type]
        if not all(math.isfinite(v) and v >= 0 for v in numbers):
            raise MalformedPageError(f"an open interest point is negative or not finite: {row!r:.80}")
        if ts % step or not start_ms <= ts < end_ms or (out and ts <= out[-1][0]):
            raise MalformedPageError(f"open interest at {ts} is unaligned, outside the page or out of order")
        out.append((ts, *numbers))
    return out


async def fetch_open_interest_page(
    client: ExchangeClient, symbol: str, period: str, page: Range, limit: int
) -> list[OpenInterest]:
    """The first ``limit`` points of ``period`` of ``symbol`` in ``page``, validated."""
    start, end = page

    async def fetch() -> list[OpenInterest]:
        try:
            rows = await client.exchange.fetch_open_interest_history(
                symbol, period, since=start, limit=limit, params={"until": end - 1}
            )
            return validate_open_interest(rows, period, start, end)
        except (TypeError, ValueError, KeyError, IndexError, MalformedPageError) as exc:
            client.stats.malformed += 1
            raise MalformedPageError(f"unusable open interest page: {exc}") from None

    return await client.call(fetch, weight=OPEN_INTEREST_WEIGHT)
