"""Trade planning and page proofs: pure logic over the id-keyed coverage."""

from __future__ import annotations

from data_collector.backfill.trades_plan import (
    TradeSpan,
    id_pages,
    plan_trade_spans,
    trade_page_coverage,
)
from data_collector.storage import Trade, TradeCoverage


def t(i: int, ts: int) -> Trade:
    return (i, ts, 1.0, 1.0, i, i, False)


def test_missing_spans_take_their_ids_from_the_ranges_they_adjoin() -> None:
    covered = [TradeCoverage(100, 200, 1000, 2000), TradeCoverage(300, 400, 3000, 4000)]
    assert plan_trade_spans(500, 5000, covered) == [
        TradeSpan(500, 1000, None, 100),
        TradeSpan(2000, 3000, 200, 300),
        TradeSpan(4000, 5000, 400, None),
    ]
    assert plan_trade_spans(1000, 2000, covered) == []
    assert plan_trade_spans(1500, 2500, covered) == [TradeSpan(2000, 2500, 200, None)]
    assert id_pages(10, 2510, 1000) == [(10, 1010), (1010, 2010), (2010, 2510)]


def test_a_whole_page_proves_its_ids_and_the_span_edges() -> None:
    span, ids = TradeSpan(1000, 9000), (10, 30)
    first = trade_page_coverage(span, ids, (10, 20), [t(i, 1000 + 100 * i) for i in range(10, 20)], 10)
    assert first.coverage == TradeCoverage(10, 20, 1000, 2900) and first.rest is None
    last = trade_page_coverage(span, ids, (20, 30), [t(i, 1000 + 100 * i) for i in range(20, 30)], 10)
    # The page's first trade may share its millisecond with the previous page's last.
    assert last.coverage == TradeCoverage(20, 30, 3001, 9000) and len(last.trades) == 10


def test_a_full_answer_that_stops_short_proves_only_up_to_its_last_trade() -> None:
    span, ids = TradeSpan(1000, 9000), (10, 40)
    # Sparse ids: ten trades reach only id 28 of the page [10, 40).
    answer = [t(i, 1000 + 10 * i) for i in range(10, 30, 2)]
    result = trade_page_coverage(span, ids, (10, 40), answer, 10)
    assert result.coverage == TradeCoverage(10, 29, 1000, 1280) and result.rest == (29, 40)


def test_a_short_answer_proves_the_whole_page_and_trades_past_it_are_dropped() -> None:
    span, ids = TradeSpan(1000, 9000), (10, 15)
    answer = [t(i, 1000 + 10 * i) for i in range(10, 20)]
    result = trade_page_coverage(span, ids, (10, 15), answer, 1000)
    assert [x[0] for x in result.trades] == [10, 11, 12, 13, 14]
    assert result.coverage == TradeCoverage(10, 15, 1000, 9000) and result.rest is None
