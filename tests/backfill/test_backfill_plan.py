"""Backfill planning and page validation: pure logic."""

from __future__ import annotations

import math

import pytest

from data_collector.backfill.plan import (
    align_range,
    page_coverage,
    pages,
    plan_backfill,
    subtract,
    unproven_rest,
)
from data_collector.backfill.validate import MalformedPageError, validate_page
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS, candle_opens
from data_collector.storage.base import CoverageRange

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def test_align_range_counts_candles_that_open_inside() -> None:
    assert align_range(T0 + 1, T0 + 3 * MINUTE_MS, "1m") == (T0 + MINUTE_MS, T0 + 3 * MINUTE_MS)
    assert align_range(T0, T0 + 3 * MINUTE_MS + 1, "1m") == (T0, T0 + 4 * MINUTE_MS)


def test_subtract() -> None:
    covered = [CoverageRange(10, 20, "data"), CoverageRange(30, 40, "empty"), CoverageRange(35, 50, "data")]
    assert subtract((0, 60), covered) == [(0, 10), (20, 30), (50, 60)]
    assert subtract((12, 18), covered) == []
    assert subtract((0, 5), []) == [(0, 5)]
    assert subtract((0, 60), [CoverageRange(35, 50, "data"), CoverageRange(10, 20, "data")]) == [
        (0, 10),
        (20, 35),
        (50, 60),
    ]


def test_pages_fit_the_limit_and_cover_exactly() -> None:
    got = pages((T0, T0 + 2500 * MINUTE_MS), "1m", 1000)
    assert [(e - s) // MINUTE_MS for s, e in got] == [1000, 1000, 500]
    assert got[0][0] == T0 and got[-1][1] == T0 + 2500 * MINUTE_MS
    months = pages(align_range(T0, T0 + 400 * DAY_MS, "1M"), "1M", 5)
    opens = candle_opens(T0, T0 + 400 * DAY_MS, "1M")
    assert months[0][0] == opens[0] and len(months) == math.ceil(len(opens) / 5)


def test_page_coverage_marks_holes_empty() -> None:
    candles = [(T0 + i * MINUTE_MS, 1.0, 1.0, 1.0, 1.0, 0.0) for i in (2, 3, 6)]
    cov = page_coverage((T0, T0 + 8 * MINUTE_MS), candles, "1m", cap=1000)
    assert cov == [
        CoverageRange(T0, T0 + 2 * MINUTE_MS, "empty"),
        CoverageRange(T0 + 2 * MINUTE_MS, T0 + 4 * MINUTE_MS, "data"),
        CoverageRange(T0 + 4 * MINUTE_MS, T0 + 6 * MINUTE_MS, "empty"),
        CoverageRange(T0 + 6 * MINUTE_MS, T0 + 7 * MINUTE_MS, "data"),
        CoverageRange(T0 + 7 * MINUTE_MS, T0 + 8 * MINUTE_MS, "empty"),
    ]
    assert unproven_rest((T0, T0 + 8 * MINUTE_MS), cov) is None
    assert page_coverage((T0, T0 + MINUTE_MS), [], "1m", cap=0) == [
        CoverageRange(T0, T0 + MINUTE_MS, "empty")
    ]
    full = [(T0 + i * MINUTE_MS, 1.0, 1.0, 1.0, 1.0, 0.0) for i in range(5)]
    assert page_coverage((T0, T0 + 5 * MINUTE_MS), full, "1m", cap=5) == [
        CoverageRange(T0, T0 + 5 * MINUTE_MS, "data")
    ]
    assert page_coverage((T0, T0 + 6 * MINUTE_MS), full, "1m", cap=1000)[-1] == CoverageRange(
        T0 + 5 * MINUTE_MS, T0 + 6 * MINUTE_MS, "empty"
    )


def test_an_answer_at_the_cap_proves_nothing_after_its_last_candle() -> None:
    page = (T0, T0 + 10 * MINUTE_MS)
    first = [(T0 + i * MINUTE_MS, 1.0, 1.0, 1.0, 1.0, 0.0) for i in (1, 2, 4)]
    # Three candles, and no answer has held more: the server may have cut it at three.
    cov = page_coverage(page, first, "1m", cap=3)
    assert cov == [
        CoverageRange(T0, T0 + MINUTE_MS, "empty"),
        CoverageRange(T0 + MINUTE_MS, T0 + 3 * MINUTE_MS, "data"),
        CoverageRange(T0 + 3 * MINUTE_MS, T0 + 4 * MINUTE_MS, "empty"),
        CoverageRange(T0 + 4 * MINUTE_MS, T0 + 5 * MINUTE_MS, "data"),
    ]
    assert unproven_rest(page, cov) == (T0 + 5 * MINUTE_MS, T0 + 10 * MINUTE_MS)
    # Once an answer has held four, three candles were not cut: the tail is the exchange's gap.
    assert page_coverage(page, first, "1m", cap=4)[-1] == CoverageRange(
        T0 + 5 * MINUTE_MS, T0 + 10 * MINUTE_MS, "empty"
    )


def test_plan_skips_the_forming_candle_and_covered_ranges() -> None:
    now = T0 + 10 * HOUR_MS + 30 * MINUTE_MS
    plan = plan_backfill(
        "SOL/USDT",
        "1h",
        T0,
        T0 + DAY_MS,
        covered=[CoverageRange(T0 + 2 * HOUR_MS, T0 + 4 * HOUR_MS, "data")],
        listing_ms=None,
        server_now_ms=now,
    )
    assert plan.target == (T0, T0 + 10 * HOUR_MS)
    assert plan.missing == [(T0, T0 + 2 * HOUR_MS), (T0 + 4 * HOUR_MS, T0 + 10 * HOUR_MS)]
    assert plan.holes == 0  # the first is before any coverage, the second the new edge
    plan = plan_backfill(
        "SOL/USDT",
        "1h",
        T0,
        T0 + 10 * HOUR_MS,
        covered=[
            CoverageRange(T0, T0 + 2 * HOUR_MS, "data"),
            CoverageRange(T0 + 4 * HOUR_MS, T0 + 10 * HOUR_MS, "data"),
        ],
        listing_ms=None,
        server_now_ms=now,
    )
    assert plan.missing == [(T0 + 2 * HOUR_MS, T0 + 4 * HOUR_MS)] and plan.holes == 1
    assert plan.expected_candles == 2


def test_plan_before_listing_needs_no_request() -> None:
    listing = T0 + 5 * DAY_MS + 7 * HOUR_MS
    plan = plan_backfill(
        "SOL/USDT",
        "1d",
        T0,
        T0 + 10 * DAY_MS,
        covered=[],
        listing_ms=listing,
        server_now_ms=T0 + 100 * DAY_MS,
    )
    assert plan.before_listing == (T0, T0 + 5 * DAY_MS)
    assert plan.missing == [(T0 + 5 * DAY_MS, T0 + 10 * DAY_MS)]
    again = plan_backfill(
        "SOL/USDT",
        "1d",
        T0,
        T0 + 10 * DAY_MS,
        covered=[CoverageRange(T0, T0 + 10 * DAY_MS, "data")],
        listing_ms=listing,
        server_now_ms=T0 + 100 * DAY_MS,
    )
    assert again.before_listing is None and again.pages == []


def test_plan_after_a_delisting_needs_no_request() -> None:
    delisted = T0 + 5 * DAY_MS + 7 * HOUR_MS + 20 * MINUTE_MS
    last_end = T0 + 5 * DAY_MS + 8 * HOUR_MS
    covered = [CoverageRange(T0 + DAY_MS, T0 + 2 * DAY_MS, "data")]
    plan = plan_backfill(
        "LUNA/USDT:USDT",
        "1h",
        T0,
        T0 + 10 * DAY_MS,
        covered=covered,
        listing_ms=None,
        server_now_ms=T0 + 100 * DAY_MS,
        delisting_ms=delisted,
    )
    # The hour holding the delisting is asked for; everything after it is 'empty' unasked.
    assert plan.after_delisting == (last_end, T0 + 10 * DAY_MS)
    assert plan.missing == [(T0, T0 + DAY_MS), (T0 + 2 * DAY_MS, last_end)]
    assert max(p[1] for p in plan.pages) == last_end and plan.holes == 0  # the new edge, not a hole
    later = plan_backfill(
        "LUNA/USDT:USDT",
        "1h",
        last_end + DAY_MS,
        T0 + 10 * DAY_MS,
        covered=[],
        listing_ms=None,
        server_now_ms=T0 + 100 * DAY_MS,
        delisting_ms=delisted,
    )
    assert later.pages == [] and later.after_delisting == (last_end + DAY_MS, T0 + 10 * DAY_MS)


def test_validate_page_accepts_good_and_rejects_bad() -> None:
    good = [[T0, 1.0, 2.0, 0.5, 1.5, 10.0], [T0 + MINUTE_MS, "1.5", "1.6", "1.4", "1.5", "0"]]
    assert validate_page(good, "1m", T0, T0 + 2 * MINUTE_MS)[1] == (T0 + MINUTE_MS, 1.5, 1.6, 1.4, 1.5, 0.0)
    bad_pages = [
        "not json",
        [[T0, 1, 2, 0.5]],
        [[T0 + 1, 1, 2, 0.5, 1.5, 1]],  # not aligned
        [[T0 + MINUTE_MS, 1, 2, 0.5, 1.5, 1], [T0, 1, 2, 0.5, 1.5, 1]],  # out of order
        [[T0, 1, 2, 0.5, 1.5, 1], [T0, 1, 2, 0.5, 1.5, 1]],  # duplicate
        [[T0, 1, 2, 3, 1.5, 1]],  # low > high
        [[T0, float("nan"), 2, 0.5, 1.5, 1]],
        [[T0, -1, 2, 0.5, 1.5, 1]],
        [[T0, 1, 2, 0.5, 1.5, -1]],
        [[T0 + 5 * MINUTE_MS, 1, 2, 0.5, 1.5, 1]],  # after the page
        [[T0 - MINUTE_MS, 1, 2, 0.5, 1.5, 1]],  # before the page
        [[None, 1, 2, 0.5, 1.5, 1]],
        [[T0, "x", 2, 0.5, 1.5, 1]],
    ]
    for bad in bad_pages:
        with pytest.raises(MalformedPageError):
            validate_page(bad, "1m", T0, T0 + 2 * MINUTE_MS)
