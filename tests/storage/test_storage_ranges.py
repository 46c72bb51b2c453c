"""Pure logic of the storage layer: range merging, gap classification, batch preparation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_collector.errors import InvalidTimeframeError, UsageError
from data_collector.storage.base import CandleBatch, CoverageRange, Gap
from data_collector.storage.batching import prepare
from data_collector.storage.ranges import (
    gaps_from_coverage,
    hole_spans,
    merge_coverage,
    merge_spans,
    subtract_spans,
)

spans_st = st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])), max_size=20
)
ranges_st = st.lists(
    st.tuples(st.integers(0, 200), st.integers(1, 40), st.sampled_from(["data", "empty"])).map(
        lambda t: CoverageRange(t[0], t[0] + t[1], t[2])  # type: ignore[arg-type]
    ),
    max_size=20,
)


def _points(spans: list[tuple[int, int]]) -> set[int]:
    return {p for s, e in spans for p in range(s, e)}


def test_merge_spans_joins_overlapping_and_adjacent() -> None:
    assert merge_spans([(5, 7), (0, 2), (2, 4), (6, 9), (10, 10)]) == [(0, 4), (5, 9)]


@given(spans_st)
def test_merge_spans_keeps_the_points_and_leaves_no_touching_spans(spans: list[tuple[int, int]]) -> None:
    merged = merge_spans(spans)
    assert _points(merged) == _points(spans)
    assert all(a[1] < b[0] for a, b in zip(merged, merged[1:], strict=False))
    assert all(s < e for s, e in merged)


@given(spans_st, st.integers(0, 100), st.integers(0, 150))
def test_subtract_spans_is_the_complement(spans: list[tuple[int, int]], start: int, length: int) -> None:
    end = start + length
    missing = subtract_spans(start, end, spans)
    assert _points(missing) == set(range(start, end)) - _points(spans)
    assert missing == merge_spans(missing)


def test_data_wins_where_kinds_overlap() -> None:
    merged = merge_coverage(
        [CoverageRange(0, 10, "empty"), CoverageRange(5, 15, "data"), CoverageRange(15, 20, "data")]
    )
    assert merged == [CoverageRange(0, 5, "empty"), CoverageRange(5, 20, "data")]


archived_st = st.lists(
    st.tuples(st.integers(0, 200), st.integers(1, 40), st.sampled_from(["data", "empty", "archived"])).map(
        lambda t: CoverageRange(t[0], t[0] + t[1], t[2])  # type: ignore[arg-type]
    ),
    max_size=20,
)


@given(archived_st, st.integers(0, 100), st.integers(0, 150))
def test_archived_is_covered_weaker_than_data_stronger_than_empty(
    ranges: list[CoverageRange], start: int, length: int
) -> None:
    def points(*kinds: str) -> set[int]:
        return _points([(r.start_ms, r.end_ms) for r in ranges if r.kind in kinds])

    merged = merge_coverage(ranges)
    by_kind = {
        k: _points([(r.start_ms, r.end_ms) for r in merged if r.kind == k])
        for k in ("data", "archived", "empty")
    }
    assert by_kind["data"] == points("data")
    assert by_kind["archived"] == points("archived") - points("data")
    assert by_kind["empty"] == points("empty") - points("data", "archived")
    end = start + length
    gaps = gaps_from_coverage(merged, start, end)
    window = set(range(start, end))
    assert (
        _points([(g.start_ms, g.end_ms) for g in gaps if g.kind == "archived"])
        == window & by_kind["archived"]
    )
    assert _points([(g.start_ms, g.end_ms) for g in gaps if g.kind == "missing"]) == window - points(
        "data", "empty", "archived"
    )


@given(ranges_st)
def test_merge_coverage_partitions_the_covered_points(ranges: list[CoverageRange]) -> None:
    merged = merge_coverage(ranges)
    data = _points([(r.start_ms, r.end_ms) for r in ranges if r.kind == "data"])
    every = _points([(r.start_ms, r.end_ms) for r in ranges])
    assert _points([(r.start_ms, r.end_ms) for r in merged if r.kind == "data"]) == data
    assert _points([(r.start_ms, r.end_ms) for r in merged if r.kind == "empty"]) == every - data
    for a, b in zip(merged, merged[1:], strict=False):
        assert a.end_ms <= b.start_ms  # sorted, no overlap
        assert not (a.end_ms == b.start_ms and a.kind == b.kind)  # same-kind neighbours joined


@given(ranges_st, st.integers(0, 100), st.integers(0, 150))
def test_gaps_cover_exactly_what_is_not_data(ranges: list[CoverageRange], start: int, length: int) -> None:
    end = start + length
    gaps = gaps_from_coverage(merge_coverage(ranges), start, end)
    data = _points([(r.start_ms, r.end_ms) for r in ranges if r.kind == "data"])
    every = _points([(r.start_ms, r.end_ms) for r in ranges])
    window = set(range(start, end))
    assert _points([(g.start_ms, g.end_ms) for g in gaps if g.kind == "missing"]) == window - every
    assert _points([(g.start_ms, g.end_ms) for g in gaps if g.kind == "exchange"]) == (window & every) - data


def test_gap_kinds_in_order() -> None:
    merged = merge_coverage([CoverageRange(10, 20, "data"), CoverageRange(20, 30, "empty")])
    assert gaps_from_coverage(merged, 0, 40) == [
        Gap(0, 10, "missing"),
        Gap(20, 30, "exchange"),
        Gap(30, 40, "missing"),
    ]


def test_hole_spans_join_consecutive_missing_candles() -> None:
    opens = [0, 10, 20, 30, 40, 50]
    assert hole_spans(opens, [0, 30, 40], 60) == [(10, 30), (50, 60)]
    assert hole_spans(opens, opens, 60) == []


def _batch(candles: list[tuple[int, float]], *, final: bool = True, tf: str = "1m") -> CandleBatch:
    return CandleBatch(1, tf, [(ts, c, c, c, c, 1.0) for ts, c in candles], final=final)


def test_prepare_deduplicates_last_wins_and_sorts() -> None:
    out = prepare([_batch([(120_000, 1.0), (0, 1.0), (60_000, 1.0), (0, 2.0)]), _batch([(60_000, 3.0)])])
    assert out.total == 5
    assert len(out.groups) == 1
    assert [(r[2], r[3]) for r in out.groups[0].records] == [(0, 2.0), (60_000, 3.0), (120_000, 1.0)]
    assert out.groups[0].records[0][:2] == (1, 1)  # instrument id, timeframe code of 1m


def test_prepare_splits_forming_rows_and_a_later_batch_decides() -> None:
    out = prepare([_batch([(0, 1.0), (60_000, 1.0)], final=False), _batch([(0, 2.0)])])
    by_final = {g.final: [r[2] for r in g.records] for g in out.groups}
    assert by_final == {True: [0], False: [60_000]}


def test_prepare_merges_coverage_per_kind() -> None:
    batch = _batch([(0, 1.0)])
    batch.coverage = [CoverageRange(0, 60_000, "data"), CoverageRange(60_000, 120_000, "data")]
    other = CandleBatch(1, "1m", [], [CoverageRange(120_000, 180_000, "empty")])
    out = prepare([batch, other])
    assert out.coverage == {(1, 1, "data"): [(0, 120_000)], (1, 1, "empty"): [(120_000, 180_000)]}


@pytest.mark.parametrize(
    "batch",
    [
        CandleBatch(1, "7m", []),
        CandleBatch(1, "1m", [], [CoverageRange(10, 10, "data")]),
        CandleBatch(1, "1m", [], [CoverageRange(0, 10, "full")]),  # type: ignore[arg-type]
        CandleBatch(1, "1m", [(120_000, 1, 1, 1, 1, 1)], [CoverageRange(0, 120_000, "data")]),
    ],
)
def test_prepare_refuses_malformed_batches(batch: CandleBatch) -> None:
    with pytest.raises(UsageError):
        prepare([batch])


def test_unknown_timeframe_is_the_timeframe_error() -> None:
    with pytest.raises(InvalidTimeframeError):
        prepare([CandleBatch(1, "7m", [])])
