"""The pure parts of the streamed trades' store path: runs of contiguous ids, what a run's
coverage claims, which ids of a hole are left to the backfill, and how OKX's hole-closing job and
REST repair share ``history-trades``' rate-limit window."""

from __future__ import annotations

import math

import pytest

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


@pytest.mark.parametrize("symbol", ["SOL/USDT", "SOL/USDT:USDT"])
def test_okx_hole_job_and_rest_repair_share_history_trades_window(symbol: str) -> None:
    """The hole-closing job runs OKX's own trade backfill (one client, spot and swaps) within
    ``trade_job_limits``; with the REST repair's spacing, the two never pass OKX's 20 requests
    per 2 s on ``history-trades``, even when the job's fixed windows straddle OKX's."""
    from data_collector.config import load_config
    from data_collector.streaming.candles import CandleSink
    from data_collector.streaming.metrics import StreamMetrics
    from data_collector.streaming.trades_store import trade_store_sink
    from data_collector.venues import stream_venue
    from data_collector.venues.okx.trade_source import OkxHistoryTrades

    config = load_config(
        {
            "exchange": {"id": "okx", "name": "sim-okx", "endpoint_limits": {"market/candles": 5}},
            "database": {"url": "sqlite+aiosqlite:///unused.db"},
            "logging": {"file": None},
        }
    )
    venue = stream_venue("okx")
    market_type = "swap" if ":" in symbol else "spot"
    candles = CandleSink("sim-okx", StreamMetrics(), store=object(), market_type=market_type)
    sink = trade_store_sink(config, venue, "sim-okx", [symbol], market_type, candles, StreamMetrics())
    assert sink.closer is not None
    job = sink.closer._config
    assert job.exchange.name == "sim-okx" and job.futures_exchange is None and job.data_types == ["trades"]
    assert job.exchange.endpoint_limits == {"market/candles": 5, "market/history-trades": 2}
    assert venue.trade_sources is not None
    (repair,) = venue.trade_sources(None)  # type: ignore[arg-type]  # what the streamer builds (no request here)
    assert isinstance(repair, OkxHistoryTrades)
    spacing_s = repair._spacing_s
    repair_per_2s = math.floor(2.0 / spacing_s + 1e-9) + 1  # requests one 2 s window can hold
    assert repair_per_2s + 2 * job.exchange.endpoint_limits["market/history-trades"] <= 20
