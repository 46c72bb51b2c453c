"""OKX's backfill rules as pure logic: the endpoint limits read from ccxt, newest-first funding
pages, and the validation of a history-trades answer."""

from __future__ import annotations

from typing import Any

import ccxt
import pytest

from data_collector.backfill.validate import MalformedPageError
from data_collector.venues.okx import rules as okx
from data_collector.venues.okx.trades import okx_trades


def test_endpoint_limits_stay_under_okxs_documented_ones() -> None:
    """ccxt's cost table at its 110 ms rateLimit: 10 % under OKX's N per 2 s (40, 20, 10, 100)."""
    limits = okx.endpoint_limits(ccxt.okx())
    documented = {
        "market/candles": 40,
        "market/history-candles": 20,
        "public/funding-rate-history": 10,
        "market/trades": 100,
        "public/instruments": 20,
    }
    for endpoint, n in documented.items():
        assert 0.8 * n <= limits[endpoint] < n, endpoint


def test_a_full_newest_first_funding_page_proves_from_its_oldest_settlement() -> None:
    page = (1_000, 10_000)
    assert okx.funding_page_span(page, [5_000, 6_000], limit=3) == (page, None)
    assert okx.funding_page_span(page, [4_000, 5_000, 6_000], limit=3) == ((4_000, 10_000), (1_000, 4_000))
    assert okx.funding_page_span(page, [1_000, 5_000, 6_000], limit=3) == ((1_000, 10_000), None)


def trade(tid: int, ts: int, side: str = "buy", **extra: Any) -> dict[str, Any]:
    return {"id": str(tid), "timestamp": ts, "price": 10.5, "amount": 2.0, "side": side, **extra}


def test_history_trades_become_rows_sorted_by_id() -> None:
    rows = [trade(7, 100, "sell"), trade(5, 100), trade(6, 100)]  # ccxt's order: by time, ties kept
    got = okx_trades(rows, below=8, by_time=False)
    assert [r[0] for r in got] == [5, 6, 7]
    assert got[-1] == (7, 100, 10.5, 2.0, 7, 7, True)  # the taker sold: the buyer made the price


@pytest.mark.parametrize(
    ("rows", "below", "by_time"),
    [
        ("not a list", 10, False),
        ([trade(5, 100), trade(5, 100)], 10, False),  # an id twice
        ([trade(10, 100)], 10, False),  # not below the page's upper id
        ([trade(5, 200)], 200, True),  # not before the page's time
        ([trade(5, 100, price="nan")], 10, False),
        ([trade(5, 100, amount=0)], 10, False),
        ([{"id": "x", "timestamp": 1, "price": 1, "amount": 1}], 10, False),
        ([trade(5, 100, timestamp=None)], 10, False),
    ],
)
def test_a_bad_history_trades_answer_is_malformed(rows: Any, below: int, by_time: bool) -> None:
    with pytest.raises(MalformedPageError):
        okx_trades(rows, below=below, by_time=by_time)
