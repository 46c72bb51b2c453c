"""Pure logic of the streamer: event shapes, entry ids, bad payloads, URLs and backoff."""

from __future__ import annotations

import pytest

from data_collector.backoff import backoff_delay
from data_collector.errors import UsageError
from data_collector.streaming.normalize import (
    MalformedEvent,
    kline_entry_id,
    validate_channel,
)
from data_collector.streaming.order_book import OrderBook
from data_collector.venues.binance.connection import split_for_url, ws_base
from data_collector.venues.binance.normalize import make_normalizer

NOW = 1_700_000_000_000


def trade(**over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "e": "trade",
        "E": NOW,
        "s": "SOLUSDT",
        "t": 12345,
        "p": "101.5",
        "q": "2.25",
        "T": NOW - 1,
        "m": True,
        "M": True,
    }
    data.update(over)
    return data


def kline(closed: bool, event_ms: int, **k_over: object) -> dict[str, object]:
    k: dict[str, object] = {
        "t": NOW - NOW % 60_000,
        "T": NOW - NOW % 60_000 + 59_999,
        "s": "SOLUSDT",
        "i": "1m",
        "f": 1,
        "L": 9,
        "o": "100",
        "c": "101",
        "h": "102",
        "l": "99",
        "v": "10",
        "n": 9,
        "x": closed,
        "q": "1000",
        "V": "5",
        "Q": "500",
        "B": "0",
    }
    k.update(k_over)
    return {"e": "kline", "E": event_ms, "s": "SOLUSDT", "k": k}


def test_trade_is_typed_and_its_id_comes_from_the_trade() -> None:
    entry_id, event = make_normalizer("binance", "SOL/USDT", "trade")(trade(), NOW + 2)
    assert entry_id == f"{NOW - 1}-12345"
    assert event == {
        "exchange": "binance",
        "symbol": "SOL/USDT",
        "channel": "trade",
        "event_ms": NOW,
        "recv_ms": NOW + 2,
        "id": 12345,
        "trade_ms": NOW - 1,
        "price": 101.5,
        "amount": 2.25,
        "side": "sell",
    }


def test_agg_trade_carries_its_trade_id_range() -> None:
    data = trade(e="aggTrade", a=77, f=100, l=105, m=False)
    del data["t"]
    entry_id, event = make_normalizer("binance", "SOL/USDT", "aggTrade")(data, NOW)
    assert entry_id == f"{NOW - 1}-77"
    assert (event["id"], event["first_id"], event["last_id"], event["side"]) == (77, 100, 105, "buy")


def test_book_ticker_ids_increase_even_when_the_exchange_repeats_an_update_id() -> None:
    norm = make_normalizer("binance", "SOL/USDT", "bookTicker")
    data = {"u": 400900217, "s": "SOLUSDT", "b": "25.35", "B": "31.2", "a": "25.36", "A": "40.66"}
    ids = [norm(data, NOW)[0], norm(data, NOW)[0], norm(data, NOW + 1)[0], norm(data, NOW)[0]]
    assert ids == [f"{NOW}-0", f"{NOW}-1", f"{NOW + 1}-0", f"{NOW + 1}-1"]
    event = norm(data, NOW + 5)[1]
    assert (event["bid"], event["bid_qty"], event["ask"], event["ask_qty"]) == (25.35, 31.2, 25.36, 40.66)
    assert event["update_id"] == 400900217


def test_depth_diff_levels_are_floats_and_zero_quantities_survive() -> None:
    data = {
        "e": "depthUpdate",
        "E": NOW,
        "s": "SOLUSDT",
        "U": 157,
        "u": 160,
        "b": [["0.0024", "10"]],
        "a": [["0.0026", "0"]],
    }
    entry_id, event = make_normalizer("binance", "SOL/USDT", "depth")(data, NOW)
    assert entry_id == f"{NOW}-160"
    assert event["bids"] == [[0.0024, 10.0]] and event["asks"] == [[0.0026, 0.0]]
    assert (event["first_update_id"], event["update_id"]) == (157, 160)


def test_kline_ids_forming_below_closed_and_closed_equal_to_the_rest_repair_id() -> None:
    norm = make_normalizer("binance", "SOL/USDT", "kline_1m")
    open_ms = NOW - NOW % 60_000
    forming_id, forming = norm(kline(False, open_ms + 2000), NOW)
    later_id, _ = norm(kline(False, open_ms + 4000), NOW)
    closed_id, closed = norm(kline(True, open_ms + 60_003), NOW)
    assert forming_id == f"{open_ms}-2000" and later_id == f"{open_ms}-4000"
    assert closed_id == f"{open_ms}-60000" == kline_entry_id(open_ms, "1m", 0, True)
    assert closed["closed"] and not forming["closed"]
    assert (closed["open"], closed["high"], closed["low"], closed["close"], closed["trades"]) == (
        100.0,
        102.0,
        99.0,
        101.0,
        9,
    )
    assert closed["close_ms"] == open_ms + 59_999


@pytest.mark.parametrize(
    "bad",
    [
        trade(p="nan"),
        trade(p="inf"),
        trade(p="1e400"),
        trade(p="-1"),
        trade(p="0"),
        trade(p="abc"),
        trade(q="-2"),
        trade(t="12345"),
        trade(t=-1),
        trade(m="yes"),
        trade(T=1_000),
        trade(T=NOW + 3 * 86_400_000),
        trade(E=True),
        trade(p=True),
        trade(q=False),
        trade(p=10**400),
        trade(s="BTCUSDT"),
        {"e": "trade"},
        [],
    ],
)
def test_bad_trades_are_refused(bad: object) -> None:
    norm = make_normalizer("binance", "SOL/USDT", "trade")
    with pytest.raises((MalformedEvent, KeyError, TypeError, ValueError)):
        norm(bad, NOW)  # type: ignore[arg-type]


def test_bad_klines_and_depth_are_refused() -> None:
    knorm = make_normalizer("binance", "SOL/USDT", "kline_1m")
    with pytest.raises(MalformedEvent):
        knorm(kline(True, NOW, h="98"), NOW)  # high below open/close
    with pytest.raises(MalformedEvent):
        knorm(kline(True, NOW, i="5m"), NOW)
    with pytest.raises(MalformedEvent):
        knorm(kline(True, NOW, t=NOW - NOW % 60_000 + 7), NOW)  # off the minute grid
    with pytest.raises(MalformedEvent):
        knorm(kline(False, NOW, v=True), NOW)
    bnorm = make_normalizer("binance", "SOL/USDT", "bookTicker")
    with pytest.raises(MalformedEvent):
        bnorm({"u": 1, "s": "SOLUSDT", "b": True, "B": "1", "a": "2", "A": "1"}, NOW)
    dnorm = make_normalizer("binance", "SOL/USDT", "depth")
    with pytest.raises(MalformedEvent):
        dnorm({"E": NOW, "s": "SOLUSDT", "U": 10, "u": 9, "b": [], "a": []}, NOW)
    with pytest.raises(MalformedEvent):
        dnorm({"E": NOW, "s": "SOLUSDT", "U": 1, "u": 2, "b": [["1", "nan"]], "a": []}, NOW)
    with pytest.raises(MalformedEvent):
        dnorm({"E": NOW, "s": "SOLUSDT", "U": 1, "u": 2, "b": [["1"]], "a": []}, NOW)
    with pytest.raises(MalformedEvent):
        dnorm({"E": NOW, "s": "SOLUSDT", "U": 1, "u": 2, "b": [["1", True]], "a": []}, NOW)


def test_channels_are_validated() -> None:
    assert validate_channel("kline_1h") == "kline_1h"
    for bad in ("kline_7m", "ticker", "depth20", ""):
        with pytest.raises(UsageError):
            validate_channel(bad)


def test_urls_hold_what_fits_and_the_rest_is_subscribed() -> None:
    assert ws_base("ws://h:1/stream/ws/") == "ws://h:1"
    assert ws_base("wss://stream.binance.com:9443") == "wss://stream.binance.com:9443"
    streams = [f"sym{i}usdt@trade" for i in range(50)]
    url, rest = split_for_url("ws://h:1/ws", streams, 200)
    assert url.startswith("ws://h:1/stream?streams=sym0usdt@trade/") and len(url) <= 200
    assert url.split("=", 1)[1].split("/") + rest == streams and rest
    url, rest = split_for_url("ws://h:1", streams[:2], 4000)
    assert rest == [] and url == "ws://h:1/stream?streams=sym0usdt@trade/sym1usdt@trade"


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(a, 0.5, 30.0) for a in range(12) for _ in range(20)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert all(0.25 <= backoff_delay(0, 0.5, 30.0) <= 0.5 for _ in range(50))
    assert max(delays) > 15.0 and len(set(delays)) > 100


def test_order_book_applies_diffs_and_removes_zero_levels() -> None:
    book = OrderBook("SOL/USDT")
    book.load_snapshot(10, [[100.0, 1.0], [99.0, 2.0]], [[101.0, 1.0], [102.0, 0.0]])
    assert book.asks == {101.0: 1.0}
    book.apply(
        {"update_id": 12, "event_ms": NOW, "bids": [[100.0, 0.0], [98.5, 4.0]], "asks": [[101.5, 3.0]]}
    )
    assert book.last_update_id == 12
    assert book.top(2) == ([[99.0, 2.0], [98.5, 4.0]], [[101.0, 1.0], [101.5, 3.0]])


def test_mark_price_and_liquidations_of_a_perpetual() -> None:
    now = 1_700_000_000_000
    mark = make_normalizer("binanceusdm", "BTC/USDT:USDT", "markPrice@1s")
    payload = {"e": "markPriceUpdate", "E": now, "s": "BTCUSDT", "p": "100.5", "i": "100.4"}
    entry_id, event = mark({**payload, "P": "100.45", "r": "-0.00012", "T": now + 3_600_000}, now)
    assert entry_id == f"{now}-0" and event["funding_rate"] == -0.00012
    assert (event["mark_price"], event["index_price"], event["next_funding_ms"]) == (
        100.5,
        100.4,
        now + 3_600_000,
    )
    with pytest.raises(MalformedEvent):
        mark({**payload, "P": "1", "r": "nan", "T": now}, now)
    liq = make_normalizer("binanceusdm", "BTC/USDT:USDT", "forceOrder")
    order = {"s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "2", "p": "99", "ap": "99.5"}
    order |= {"X": "FILLED", "l": "2", "z": "2", "T": now - 5}
    ids = [liq({"e": "forceOrder", "E": now, "o": order}, now)[0] for _ in range(2)]
    assert ids == [f"{now - 5}-0", f"{now - 5}-1"]  # no id of their own: made strictly increasing
    event = liq({"e": "forceOrder", "E": now, "o": order}, now)[1]
    assert (event["side"], event["price"], event["avg_price"], event["amount"]) == ("sell", 99.0, 99.5, 2.0)
    with pytest.raises(MalformedEvent):
        liq({"e": "forceOrder", "E": now, "o": {**order, "s": "ETHUSDT"}}, now)


def test_venues_refuse_the_other_markets_kind_in_one_line() -> None:
    from data_collector.venues import stream_venue
    from data_collector.venues.binance.venue import SPOT, USDM

    assert USDM.check_symbol("BTC/USDT:USDT") == "BTC/USDT:USDT"
    with pytest.raises(UsageError, match="is a perpetual: stream it with exchange.id 'binanceusdm'"):
        SPOT.check_symbol("BTC/USDT:USDT")
    with pytest.raises(UsageError, match="write BTC/USDT:USDT"):
        USDM.check_symbol("BTC/USDT")
    # Binance and OKX natively; any other ccxt.pro exchange through the generic adapter.
    assert stream_venue("okx").kind == "okx" and stream_venue("kraken").kind == "ccxt"
    assert stream_venue("binance", "ccxt").kind == "ccxt"
    with pytest.raises(UsageError, match="unknown exchange.id 'nosuchvenue'"):
        stream_venue("nosuchvenue")
    with pytest.raises(UsageError, match="unknown channel"):
        validate_channel("markPrice")  # spot has no mark price
    assert validate_channel("forceOrder", USDM.channels) == "forceOrder"
    assert [USDM.snapshot_limit(n) for n in (5, 101, 1000, 5000)] == [5, 500, 1000, 1000]
