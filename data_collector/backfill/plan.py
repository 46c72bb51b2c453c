"""Backfill planning: which pages to fetch for one (symbol, timeframe), from what is covered.

Pure functions over millisecond ranges ``[start_ms, end_ms)``; the collector runs the plan.

* The requested range is aligned to candle opens: a candle belongs to ``[start, end)`` when it
  *opens* there.
* The candle still forming is never planned: the range is clipped at the open of the current
  candle (by the exchange's clock), so nothing unfinished is stored. The next run fetches it once
  it has closed.
* What the coverage record already holds (``'data'`` or ``'empty'``) is never fetched again.
* Before the listing, the exchange has nothing: that part becomes ``'empty'`` coverage without a
  request. On each timeframe that part ends at the open of the candle containing the listing
  (the 13:00 hour of a 13:37 listing), which the exchange has.
* Each missing range is cut into pages of at most ``limit`` candles.
* An answer proves only the span it covers (:func:`page_coverage`): one that may have been cut
  at the server's cap proves nothing after its last candle, and the rest of its page is fetched
  again (:func:`unproven_rest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from data_collector.markets import TIMEFRAME_MS, candle_open_ms, next_open_ms, series_key
from data_collector.storage.base import CoverageRange
from data_collector.storage.ranges import subtract_spans

DEFAULT_PAGE_LIMIT = 1000

Range = tuple[int, int]


def align_up(ts_ms: int, timeframe: str) -> int:
    """The first candle open at or after ``ts_ms``."""
    opened = candle_open_ms(ts_ms, timeframe)
    return opened if opened == ts_ms else next_open_ms(opened, timeframe)


def align_range(start_ms: int, end_ms: int, timeframe: str) -> Range:
    """``[start, end)`` as candle opens: the candles that open in the range."""
    start = align_up(start_ms, timeframe)
    end = max(start, align_up(end_ms, timeframe))
    return start, end


def subtract(target: Range, covered: Sequence[CoverageRange]) -> list[Range]:
    """Parts of ``target`` not inside any of ``covered``."""
    return subtract_spans(target[0], target[1], ((r.start_ms, r.end_ms) for r in covered))


def pages(missing: Range, timeframe: str, limit: int = DEFAULT_PAGE_LIMIT) -> list[Range]:
    """Cut ``missing`` (aligned) into ranges of at most ``limit`` candles."""
    start, end = missing
    out: list[Range] = []
    if timeframe in TIMEFRAME_MS:
        span = TIMEFRAME_MS[timeframe] * limit
        for s in range(start, end, span):
            out.append((s, min(s + span, end)))
        return out
    s = start
    while s < end:
        e, count = s, 0
        while e < end and count < limit:
            e = next_open_ms(e, timeframe)
            count += 1
        out.append((s, e))
        s = e
    return out


def page_coverage(
    page: Range, candles: Sequence[tuple[Any, ...]], timeframe: str, *, cap: int
) -> list[CoverageRange]:
    """What one answer proves: ``'data'`` where candles are, ``'empty'`` in the holes it spans.

    The exchange answers with the first candles from the page's start, at most as many as its cap
    per answer. So holes before and between the candles are the exchange's own gaps (maintenance,
    before listing), even one candle wide, and are recorded as such so they are not fetched
    again. After the last candle the answer proves nothing when it may have been cut short: when
    it holds ``cap`` candles or more, where ``cap`` is the most candles one answer of this exchange
    has been seen to hold (the server's real cap is at least that; an answer below it was not cut).
    That part of the page is left without coverage: :func:`unproven_rest` gives it to fetch again.

    Args:
        page: the range asked for, ``[start, end)``.
        candles: the answer, validated (sorted, aligned, inside ``page``); only each row's first
            field, its time, is read (open interest points pass too).
        timeframe: the candles' timeframe.
        cap: the most candles one answer has been seen to hold, this one included.
    """
    start, end = page
    if candles and timeframe in TIMEFRAME_MS:
        step = TIMEFRAME_MS[timeframe]
        # Validated candles are aligned and strictly increasing: n of them spanning exactly
        # [start, end) leave no hole, so the page is one data range.
        if candles[0][0] == start and candles[-1][0] == end - step and len(candles) == (end - start) // step:
            return [CoverageRange(start, end, "data")]
    out: list[CoverageRange] = []
    cursor = start
    run_start: int | None = None
    for candle in candles:
        ts = candle[0]
        if ts != cursor:
            if run_start is not None:
                out.append(CoverageRange(run_start, cursor, "data"))
                run_start = None
            out.append(CoverageRange(cursor, ts, "empty"))
        if run_start is None:
            run_start = ts
        cursor = next_open_ms(ts, timeframe)
    if run_start is not None:
        out.append(CoverageRange(run_start, cursor, "data"))
    if cursor < end and len(candles) < max(cap, 1):
        out.append(CoverageRange(cursor, end, "empty"))
    return out


def unproven_rest(page: Range, coverage: Sequence[CoverageRange]) -> Range | None:
    """The end of ``page`` that ``coverage`` (from :func:`page_coverage`) leaves unproven, if any."""
    proven_to = coverage[-1].end_ms if coverage else page[0]
    return (proven_to, page[1]) if proven_to < page[1] else None


@dataclass(slots=True)
class BackfillPlan:
    """What one (symbol, timeframe) needs.

    ``target`` is the aligned range asked for (clipped before the forming candle); ``missing`` the
    parts with no coverage; ``before_listing`` and ``after_delisting`` the parts to mark
    ``'empty'`` without asking;
    ``pages`` the requests to make; ``holes`` how many missing ranges lie between covered ones
    (gaps found, as opposed to the new edge of the range).
    """

    symbol: str
    timeframe: str
    target: Range
    missing: list[Range] = field(default_factory=list)
    before_listing: Range | None = None
    #: The part after a known delisting, also marked ``'empty'`` without asking.
    after_delisting: Range | None = None
    pages: list[Range] = field(default_factory=list)
    holes: int = 0
    #: The candles' price type: ``last`` (traded), ``mark``, ``index`` or ``premium``.
    price: str = "last"

    @property
    def key(self) -> str:
        """The series key (``"1h"``, ``"mark:1h"``): the report's pair key and the store's."""
        return series_key(self.timeframe, self.price)

    @property
    def expected_candles(self) -> int:
        """Upper bound of candles the pages can return."""
        return sum(_count(p, self.timeframe) for p in self.pages)


def _count(r: Range, timeframe: str) -> int:
    if timeframe in TIMEFRAME_MS:
        return (r[1] - r[0]) // TIMEFRAME_MS[timeframe]
    n, t = 0, r[0]
    while t < r[1]:
        t = next_open_ms(t, timeframe)
        n += 1
    return n


def plan_backfill(
    symbol: str,
    timeframe: str,
    start_ms: int,
    end_ms: int,
    *,
    covered: Sequence[CoverageRange],
    listing_ms: int | None,
    server_now_ms: int,
    limit: int = DEFAULT_PAGE_LIMIT,
    delisting_ms: int | None = None,
) -> BackfillPlan:
    """Plan the pages for one pair.

    Args:
        start_ms, end_ms: the range asked for; candles opening in ``[start_ms, end_ms)``.
        covered: the pair's coverage record.
        listing_ms: the exchange's first candle time, if known.
        server_now_ms: the exchange's clock; the candle containing it is still forming.
        limit: candles per page (the exchange's maximum).
        delisting_ms: when the exchange says trading ended (a delisted perpetual's
            ``deliveryDate``), if known: nothing opens after the candle holding it.
    """
    forming_open = candle_open_ms(server_now_ms, timeframe)
    start, end = align_range(start_ms, min(end_ms, forming_open), timeframe)
    plan = BackfillPlan(symbol, timeframe, (start, end))
    if end <= start:
        return plan
    missing = subtract((start, end), covered)
    if listing_ms is not None:
        listing_open = candle_open_ms(listing_ms, timeframe)
        if start < listing_open:
            before = (start, min(listing_open, end))
            if subtract(before, covered):
                plan.before_listing = before
            missing = subtract((max(start, listing_open), end), covered) if listing_open < end else []
    edge = end
    if delisting_ms is not None and align_up(delisting_ms, timeframe) < end:
        edge = align_up(delisting_ms, timeframe)
        after = (max(start, edge), end)
        if subtract(after, covered):
            plan.after_delisting = after
        missing = [(s, min(e, edge)) for s, e in missing if s < edge]
    plan.missing = missing
    spans = sorted((r.start_ms, r.end_ms) for r in covered)
    plan.holes = sum(1 for s, e in missing if any(c_end <= s for _, c_end in spans) and e < edge)
    plan.pages = [p for m in missing for p in pages(m, timeframe, limit)]
    return plan
