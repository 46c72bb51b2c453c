"""Acceptance 1 and 2: the real ccxt (REST and pro) against the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
import pytest

from data_collector.markets import DAY_MS, MINUTE_MS, TIMEFRAMES, next_open_ms
from data_collector.simulator import SimulatedExchange

SYMBOLS = ["SOL/USDT", "BTC/USDT"]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=SYMBOLS, seed=42, gaps={}) as s:
        yield s


@pytest.fixture
async def rest(sim: SimulatedExchange) -> AsyncIterator[Any]:
    ex = ccxt.binance(sim.ccxt_config())
    try:
        yield ex
    finally:
        await ex.close()


@pytest.fixture
async def pro(sim: SimulatedExchange) -> AsyncIterator[Any]:
    ex = ccxtpro.binance(sim.ccxt_config())
    try:
        yield ex
    finally:
        await ex.close()


def _floats(kline: list[Any]) -> list[float]:
    return [float(kline[0])] + [float(x) for x in kline[1:6]]


async def test_load_markets_is_one_request(sim: SimulatedExchange, rest: Any) -> None:
    markets = await rest.load_markets()
    assert set(SYMBOLS) <= set(markets)
    stats = sim.stats()
    assert stats["requests"] == 1
    assert stats["endpoints"] == {"exchangeInfo": 1}
    sol = markets["SOL/USDT"]
    assert sol["spot"] and sol["active"] and sol["precision"]["price"] > 0


@pytest.mark.parametrize("timeframe", TIMEFRAMES)
async def test_fetch_ohlcv_equals_generator(sim: SimulatedExchange, rest: Any, timeframe: str) -> None:
    now = sim.clock.now_ms()
    since = now - 40 * (30 * DAY_MS if timeframe == "1M" else (next_open_ms(0, timeframe)))
    got = await rest.fetch_ohlcv("BTC/USDT", timeframe, since, 7)
    truth = sim.klines("BTC/USDT", timeframe, since, now + 1)[:7]
    assert len(got) == 7
    assert got == [_floats(k) for k in truth]
    assert all(int(k[0]) >= since for k in got)


async def test_paginate_three_days_of_1m(sim: SimulatedExchange, rest: Any) -> None:
    now = sim.clock.now_ms()
    since = (now - 10 * DAY_MS) // DAY_MS * DAY_MS
    until = since + 3 * DAY_MS
    got = await rest.fetch_ohlcv(
        "SOL/USDT", "1m", since, None, params={"paginate": True, "until": until - 1, "paginationCalls": 10}
    )
    got = [c for c in got if c[0] < until]
    opens = [c[0] for c in got]
    assert len(opens) == 4320
    assert len(set(opens)) == 4320
    assert opens == list(range(since, until, MINUTE_MS))
    assert got == [_floats(k) for k in sim.klines("SOL/USDT", "1m", since, until)]


async def test_rest_endpoints_parse(sim: SimulatedExchange, rest: Any) -> None:
    await rest.load_markets()
    server_time = await rest.fetch_time()
    assert abs(server_time - sim.clock.now_ms()) < 5000
    trades = await rest.fetch_trades("BTC/USDT", limit=20)
    assert len(trades) == 20
    assert all(t["price"] > 0 and t["amount"] > 0 for t in trades)
    ids = [int(t["id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + 20))
    book = await rest.fetch_order_book("BTC/USDT", 100)
    assert len(book["bids"]) == 100 and len(book["asks"]) == 100
    assert book["bids"][0][0] < book["asks"][0][0]
    assert isinstance(book["nonce"], int)
    ticker = await rest.fetch_ticker("SOL/USDT")
    assert ticker["symbol"] == "SOL/USDT"
    assert ticker["low"] <= ticker["last"] <= ticker["high"]
    assert ticker["bid"] < ticker["ask"]
    tickers = await rest.fetch_tickers()
    assert set(tickers) == set(SYMBOLS)
    with pytest.raises(ccxt.BadSymbol):
        await rest.public_get_klines({"symbol": "NOPEUSDT", "interval": "1m"})


async def test_pro_watchers_deliver(sim: SimulatedExchange, pro: Any) -> None:
    trades = await asyncio.wait_for(pro.watch_trades("SOL/USDT"), 10)
    assert trades and trades[0]["symbol"] == "SOL/USDT" and trades[0]["price"] > 0
    ohlcv = await asyncio.wait_for(pro.watch_ohlcv("SOL/USDT", "1m"), 10)
    assert ohlcv and ohlcv[-1][0] % MINUTE_MS == 0
    bids_asks = await asyncio.wait_for(pro.watch_bids_asks(["SOL/USDT"]), 10)
    assert bids_asks["SOL/USDT"]["bid"] < bids_asks["SOL/USDT"]["ask"]
    book = await asyncio.wait_for(pro.watch_order_book("SOL/USDT"), 10)
    assert book["bids"][0][0] < book["asks"][0][0]
    ticker = await asyncio.wait_for(pro.watch_ticker("SOL/USDT"), 10)
    assert ticker["symbol"] == "SOL/USDT" and ticker["low"] <= ticker["last"] <= ticker["high"]


async def _maintain_book(sim: SimulatedExchange, pro: Any, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    updates = 0
    book = await asyncio.wait_for(pro.watch_order_book("BTC/USDT"), 10)
    while loop.time() < deadline:
        book = await asyncio.wait_for(pro.watch_order_book("BTC/USDT"), 10)
        updates += 1
    # The client's book equals the server's at the same update id (checked on a quiet moment).
    truth = sim.order_book("BTC/USDT")
    if truth["lastUpdateId"] == book["nonce"]:
        assert book["bids"][:50] == truth["bids"][:50]
        assert book["asks"][:50] == truth["asks"][:50]
    return updates


async def test_watch_order_book_short(sim: SimulatedExchange, pro: Any) -> None:
    assert await _maintain_book(sim, pro, 5) >= 20


@pytest.mark.slow
async def test_watch_order_book_30s(sim: SimulatedExchange, pro: Any) -> None:
    assert await _maintain_book(sim, pro, 30) >= 200


async def test_exchange_config_loads_into_our_config(sim: SimulatedExchange) -> None:
    from data_collector.config import load_config

    config = load_config({"exchange": sim.exchange_config(), "symbols": SYMBOLS})
    assert config.exchange.ws_url == sim.ws_url
    assert config.exchange.urls["api"]["public"] == sim.rest_url + "/api/v3"
    ex = ccxt.binance({"options": config.exchange.options, "urls": config.exchange.urls})
    try:
        await ex.load_markets()
        assert sim.stats()["requests"] == 1
    finally:
        await ex.close()
