"""Property test of the page planner and ``page_coverage`` against a model exchange (pure logic).

The model exchange is a listing minute, maintenance windows and a cap per answer: a candle exists
when any minute inside it traded, and an answer holds the first ``min(limit, cap)`` candles from
the page's start. The collector's loop is run against it (plan, fetch pages in any order, learn
the cap from the answers, fetch the rest of every page cut short) and must end with every candle
of the range stored once, and ``'empty'`` coverage over no candle the exchange has.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from data_collector.backfill.plan import Range, page_coverage, pages, plan_backfill, unproven_rest
from data_collector.markets import MINUTE_MS, candle_open_ms, next_open_ms
from data_collector.storage.base import Candle, CoverageRange

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
TIMEFRAMES = ["1m", "3m", "5m", "15m", "1h", "4h", "1d", "3d", "1w", "1M"]


class ModelExchange:
    """Which candles exist, and what one kline request answers."""

    def __init__(self, listing_ms: int, gaps: Sequence[Range], now_ms: int, cap: int) -> None:
        self.listing_ms = listing_ms
        self.gaps = sorted(gaps)
        self.now_ms = now_ms
        self.cap = cap

    def has(self, open_ms: int, timeframe: str) -> bool:
        """A candle exists when a minute inside it is after the listing, before now, and in no gap."""
        cursor = max(open_ms, self.listing_ms)
        end = min(next_open_ms(open_ms, timeframe), self.now_ms - self.now_ms % MINUTE_MS + MINUTE_MS)
        for gap_start, gap_end in self.gaps:
            if cursor >= end:
                return False
            if gap_start <= cursor < gap_end:
                cursor = gap_end
        return cursor < end

    def first_minute(self) -> int:
        """What the collector learns as the listing: the first 1m candle."""
        minute = self.listing_ms
        while not self.has(minute, "1m"):
            minute += MINUTE_MS
        return minute

    def answer(self, page: Range, timeframe: str, limit: int) -> list[Candle]:
        out: list[Candle] = []
        t = candle_open_ms(page[0], timeframe)
        if t < page[0]:
            t = next_open_ms(t, timeframe)
        while t < page[1] and len(out) < min(limit, self.cap):
            if self.has(t, timeframe):
                out.append((t, 1.0, 1.0, 1.0, 1.0, 0.0))
            t = next_open_ms(t, timeframe)
        return out


@st.composite
def worlds(draw: st.DrawFn) -> tuple[str, int, int, ModelExchange, int, random.Random]:
    timeframe = draw(st.sampled_from(TIMEFRAMES))
    start = T0 + draw(st.integers(0, 400 * 24 * 60)) * MINUTE_MS
    end = start
    for _ in range(draw(st.integers(1, 120))):
        end = next_open_ms(candle_open_ms(end, timeframe), timeframe)
    span_min = (end - start) // MINUTE_MS
    # The listing: before the range, or anywhere inside it (mostly not at a candle's open).
    listing = start + draw(st.integers(-span_min, span_min)) * MINUTE_MS
    gaps: list[Range] = []
    for _ in range(draw(st.integers(0, 4))):
        gap_start = start + draw(st.integers(0, span_min)) * MINUTE_MS
        gap_len = draw(st.sampled_from([1, 2, 7, 60, 61, 300, 1440, 4000, 50_000]))
        gaps.append((gap_start, gap_start + gap_len * MINUTE_MS))
    now = end + draw(st.sampled_from([0, 1, MINUTE_MS, 10**10])) - draw(st.integers(0, span_min)) * MINUTE_MS
    # The exchange must have traded at least one minute before now for a listing to be learned.
    exchange = ModelExchange(listing, gaps, max(now, listing + MINUTE_MS * 2), draw(st.integers(1, 40)))
    if not exchange.has(exchange.listing_ms, "1m"):
        exchange.gaps = [g for g in exchange.gaps if not g[0] <= listing < g[1]]
    limit = draw(st.integers(1, 40))
    return timeframe, start, end, exchange, limit, draw(st.randoms(use_true_random=False))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(worlds())
def test_empty_coverage_never_covers_a_candle_the_exchange_has(
    world: tuple[str, int, int, ModelExchange, int, random.Random],
) -> None:
    timeframe, start, end, exchange, limit, order = world
    plan = plan_backfill(
        "NEW/USDT",
        timeframe,
        start,
        end,
        covered=[],
        listing_ms=exchange.first_minute(),
        server_now_ms=exchange.now_ms,
        limit=limit,
    )
    coverage: list[CoverageRange] = []
    if plan.before_listing is not None:
        coverage.append(CoverageRange(*plan.before_listing, "empty"))
    stored: list[int] = []
    most_seen = 0
    todo = list(plan.pages)
    for _ in range(10_000):
        if not todo:
            break
        page = todo.pop(order.randrange(len(todo)))  # pages in flight answer in any order
        candles = exchange.answer(page, timeframe, limit)
        most_seen = max(most_seen, len(candles))
        proven = page_coverage(page, candles, timeframe, cap=most_seen)
        rest = unproven_rest(page, proven)
        if rest is not None:
            todo.extend(pages(rest, timeframe, limit))
        coverage.extend(proven)
        stored.extend(c[0] for c in candles)
    assert not todo, "the run never ends"

    for r in coverage:
        t = r.start_ms
        while t < r.end_ms:
            assert exchange.has(t, timeframe) == (r.kind == "data"), (r, t)
            t = next_open_ms(t, timeframe)
    # The coverage is the whole target, once: nothing is left to fetch and nothing overlaps.
    spans = sorted((r.start_ms, r.end_ms) for r in coverage)
    cursor = plan.target[0]
    for s, e in spans:
        assert s == cursor, (spans, plan.target)
        cursor = e
    assert cursor == plan.target[1]
    # 0 lost, 0 duplicated.
    want = []
    t = plan.target[0]
    while t < plan.target[1]:
        if exchange.has(t, timeframe):
            want.append(t)
        t = next_open_ms(t, timeframe)
    assert sorted(stored) == want
