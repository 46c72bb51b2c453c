"""The pure parts of the streamed trades' store path: runs of contiguous ids, what a run's
coverage claims, and which ids of a hole are left to the backfill."""

from __future__ import annotations

from data_collector.storage.trades import TradeCoverage, merge_trade_coverage
from data_collector.streaming.trades_store import id_runs, run_coverage, subtract_ids


def _t(i: int, ms: int) -> tuple[int, int, float, float, int, int, bool]:
    return (i, ms, 1.0, 1.0, 10 * i, 10 * i + 1, False)


def test_runs_are_cut_where_an_id_is_missing_each_id_once() -> None:
    runs = id_runs([_t(5, 100), _t(3, 90), _t(4, 95), _t(4, 95), _t(8, 120)])
    assert [[t[0] for t in r] for r in runs] == [[3, 4, 5], [8]]


def test_a_runs_coverage_claims_only_what_its_trades_prove() -> None:
    # Ids below 3 came at or before 90 ms, so before 91; ids past 5 at or after 100.
    assert run_coverage([_t(3, 90), _t(4, 95), _t(5, 100)]) == TradeCoverage(3, 6, 91, 100)
    # One trade proves no time span, only its id.
    one = run_coverage([_t(7, 50)])
    assert (one.first_id, one.end_id, one.end_ms) == (7, 8, 50) and one.start_ms == 50


def test_runs_that_follow_each_other_merge_into_one_row() -> None:
    a = run_coverage([_t(1, 10), _t(2, 20)])
    b = run_coverage([_t(3, 20), _t(4, 30)])
    merged = merge_trade_coverage([a, b])
    assert [(c.first_id, c.end_id, c.start_ms, c.end_ms) for c in merged] == [(1, 5, 11, 30)]


def test_the_ids_the_rest_repair_fetches_are_not_handed_to_the_backfill() -> None:
    assert subtract_ids(10, 20, []) == [(10, 20)]
    assert subtract_ids(10, 20, [(12, 15)]) == [(10, 12), (15, 20)]
    assert subtract_ids(10, 20, [(5, 25)]) == []
    assert subtract_ids(10, 20, [(15, 30), (0, 11)]) == [(11, 15)]
