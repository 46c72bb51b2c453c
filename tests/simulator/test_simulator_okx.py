"""Issue 14, acceptance 1 (REST): the real ``ccxt.okx`` against the simulator's OKX venue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt
import ccxt.async_support as ccxt_async
import numpy as np
import pytest

from data_collector.simulator import OkxSettings, SimulatedExchange
from data_collector.simulator.okx.formats import OKX_TIMEFRAMES, approx_ms
from data_collector.simulator.okx.rest import EndpointLimiter
from tests.support.ccxt_clients import ccxt_client
from tests.support.okx_truth import model_candles, model_trades

SPOT = ["BTC/USDT", "SOL/USDT"]
SWAP = "BTC/USDT:USDT"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    settings = OkxSettings(swaps=["BTC/USDT"])
    async with SimulatedExchange(symbols=SPOT, seed=42, gaps={}, okx=settings) as s:
        s.clock.freeze()
        yield s


@pytest.fixture
async def rest(sim: SimulatedExchange) -> AsyncIterator[Any]:
    async with ccxt_client(ccxt_async.okx, sim.okx_ccxt_config()) as ex:
        yield ex


async def test_okx_load_markets(sim: SimulatedExchange, rest: Any) -> None:
    markets = await rest.load_markets()
    assert set(markets) == {*SPOT, SWAP}
    btc, swap = markets["BTC/USDT"], markets[SWAP]
    assert btc["spot"] and btc["id"] == "BTC-USDT" and btc["active"]
    assert swap["swap"] and swap["linear"] and swap["id"] == "BTC-USDT-SWAP" and swap["settle"] == "USDT"
    model = sim.okx.venue.instrument("BTC-USDT").market
    assert btc["precision"]["price"] == 10.0**-model.price_decimals
    assert swap["contractSize"] == 10.0**-model.qty_decimals
    assert sim.okx.requests()["endpoints"] == {"public/instruments": 2}


def test_okx_timeframes_are_cctxs() -> None:
    """The simulator serves every timeframe ccxt okx offers (the parametrisation below uses ours)."""
    assert set(ccxt.okx().timeframes) == set(OKX_TIMEFRAMES)


@pytest.mark.parametrize("symbol", ["BTC/USDT", SWAP])
@pytest.mark.parametrize("timeframe", OKX_TIMEFRAMES)
async def test_okx_fetch_ohlcv_equals_generator(
    sim: SimulatedExchange, rest: Any, timeframe: str, symbol: str
) -> None:
    venue = sim.okx.venue
    now = sim.clock.now_ms()
    step = approx_ms(timeframe)
    # Recent (/market/candles), the forming candle included: the last 30.
    recent = venue.ohlcv(symbol, timeframe, now - 40 * step, now + 1)[-30:]
    got = await rest.fetch_ohlcv(symbol, timeframe, since=int(recent[0][0]), limit=30)
    assert got == model_candles(sim, symbol, timeframe, int(recent[0][0]), now + 1)
    assert recent[-1][8] == "0" and all(c[8] == "1" for c in recent[:-1])
    # Older than the latest 1,440 (ccxt switches to /market/history-candles): 100 from there.
    listing = venue.instrument(symbol).market.listing_ms
    old_from = now - 1600 * step
    if old_from > listing and timeframe not in ("1w", "1M", "3M"):
        old = venue.ohlcv(symbol, timeframe, old_from, old_from + 150 * step)[:100]
        before = sim.okx.requests()["endpoints"].get("market/history-candles", 0)
        got = await rest.fetch_ohlcv(symbol, timeframe, since=int(old[0][0]), limit=100)
        assert got == model_candles(sim, symbol, timeframe, int(old[0][0]), int(old[-1][0]) + 1)
        assert sim.okx.requests()["endpoints"]["market/history-candles"] == before + 1


async def test_okx_fetch_ohlcv_pages_back_with_since(sim: SimulatedExchange, rest: Any) -> None:
    """Paging forward from a since in history-candles territory, 100 a page, joins up exactly."""
    now = sim.clock.now_ms()
    truth = sim.okx.venue.ohlcv("SOL/USDT", "1m", now - 3000 * 60_000, now - 2700 * 60_000)
    since = int(truth[0][0])
    got: list[list[float]] = []
    while since < int(truth[-1][0]):
        page = await rest.fetch_ohlcv("SOL/USDT", "1m", since=since)
        assert page, f"empty page at {since}"
        got += page
        since = int(page[-1][0]) + 60_000
    assert got[: len(truth)] == model_candles(sim, "SOL/USDT", "1m", int(truth[0][0]), int(truth[-1][0]) + 1)


async def test_okx_candles_endpoints_follow_okx_paging(sim: SimulatedExchange) -> None:
    """Raw answers: newest first, strings, ``after``/``before`` exclusive, caps 300 and 100."""
    now = sim.clock.now_ms()
    truth = sim.okx.venue.ohlcv("BTC/USDT", "1m", now - 1000 * 60_000, now + 1)
    url = sim.okx_rest_url + "/api/v5/market/"
    async with aiohttp.ClientSession() as http:

        async def get(path: str, **params: Any) -> list[list[str]]:
            async with http.get(url + path, params={"instId": "BTC-USDT", "bar": "1m", **params}) as r:
                body = await r.json()
                assert r.status == 200 and body["code"] == "0", body
                data: list[list[str]] = body["data"]
                return data

        latest = await get("candles")
        assert latest == truth[::-1][:100]
        assert await get("candles", limit=500) == truth[::-1][:300]
        after = int(truth[500][0])
        assert await get("candles", after=after, limit=5) == truth[495:500][::-1]
        assert await get("history-candles", after=after, limit=300) == truth[400:500][::-1]
        both = await get("history-candles", after=after, before=int(truth[497][0]))
        assert both == truth[498:500][::-1]
        assert await get("candles", before=int(truth[10][0]), limit=3) == truth[::-1][:3]
        far = now - 5000 * 60_000
        assert await get("candles", after=far) == []
        assert await get("history-candles", after=far, limit=1) != []


async def test_okx_fetch_trades(sim: SimulatedExchange, rest: Any) -> None:
    now = sim.clock.now_ms()
    truth = model_trades(sim, "BTC/USDT", now - 30 * 60_000, now + 1)[-100:]
    got = await rest.fetch_trades("BTC/USDT", limit=100)
    shape = [
        {"id": t["id"], "price": t["price"], "amount": t["amount"], "ts": t["timestamp"], "side": t["side"]}
        for t in got
    ]
    assert shape == truth
    # history-trades, paged by trade id: the 100 before the oldest we hold.
    oldest = int(got[0]["id"])
    older = await rest.fetch_trades(
        "BTC/USDT", params={"method": "publicGetMarketHistoryTrades", "after": oldest}
    )
    assert [t["id"] for t in older] == [str(i) for i in range(oldest - 100, oldest)]


async def test_okx_fetch_order_book(sim: SimulatedExchange, rest: Any) -> None:
    book = await rest.fetch_order_book("BTC/USDT", 50)
    venue = sim.okx.venue
    bids, asks = venue.levels(venue.instrument("BTC-USDT"), 50)
    assert book["bids"] == [[float(p), float(q), 0] for p, q, *_ in bids]
    assert book["asks"] == [[float(p), float(q), 0] for p, q, *_ in asks]
    assert len(book["bids"]) == 50 and book["bids"][0][0] < book["asks"][0][0]


async def test_okx_fetch_funding_rate_history(sim: SimulatedExchange, rest: Any) -> None:
    now = sim.clock.now_ms()
    since = now - 5 * 86_400_000
    perp = sim.okx.venue.perp(sim.okx.venue.instrument(SWAP))
    times = perp.funding_times(since, now, now)
    got = await rest.fetch_funding_rate_history(SWAP, since=since)
    assert len(times) >= 15
    assert [(r["timestamp"], r["fundingRate"]) for r in got] == [
        (t, r / 1e8) for t, r in zip(times, perp.funding_rates(times), strict=True)
    ]


async def test_okx_fetch_open_interest(sim: SimulatedExchange, rest: Any) -> None:
    oi = await rest.fetch_open_interest(SWAP)
    perp = sim.okx.venue.perp(sim.okx.venue.instrument(SWAP))
    assert oi["openInterestAmount"] == perp.open_interest_now(sim.clock.now_ms())


async def test_okx_rate_limit_answers_429_code_50011(sim: SimulatedExchange) -> None:
    """Over one endpoint's 2 s budget (public/time: 10): HTTP 429, code 50011, no weight header;
    ccxt raises RateLimitExceeded. Another endpoint's budget is untouched."""
    async with aiohttp.ClientSession() as http:
        answers = []
        for _ in range(25):
            async with http.get(sim.okx_rest_url + "/api/v5/public/time") as r:
                answers.append((r.status, await r.json(), dict(r.headers)))
        refused = [a for a in answers if a[0] == 429]
        assert refused, "no 429 after 25 requests against a budget of 10 per 2 s"
        assert all(
            body == {"code": "50011", "msg": "Too Many Requests", "data": []} for _, body, _ in refused
        )
        assert not any("weight" in k.lower() for _, _, headers in answers for k in headers)
    async with ccxt_client(ccxt_async.okx, {**sim.okx_ccxt_config(), "enableRateLimit": False}) as ex:
        results = await asyncio.gather(*(ex.fetch_time() for _ in range(25)), return_exceptions=True)
        assert any(isinstance(r, ccxt.RateLimitExceeded) for r in results), results
        assert all(isinstance(r, int | ccxt.RateLimitExceeded) for r in results), results
    assert set(sim.okx.requests()["429_by_endpoint"]) == {"public/time"}


async def test_okx_limits_count_per_client_ip(sim: SimulatedExchange) -> None:
    """OKX counts its public limits per IP (issue 17): three addresses each send public/time's full
    10 at once and none is refused (one count for all would hold 30 in at most two windows, so at
    least 15 in one); two clients behind a fourth address share its 10 and are refused."""
    url = sim.okx_rest_url + "/api/v5/public/time"

    async def burst(address: str, n: int) -> list[int]:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            statuses = []
            for _ in range(n):
                async with http.get(url) as r:
                    statuses.append(r.status)
            return statuses

    apart = await asyncio.gather(*(burst(f"127.0.0.{i}", 10) for i in (2, 3, 4)))
    assert [s for statuses in apart for s in statuses] == [200] * 30
    behind_one = await asyncio.gather(burst("127.0.0.5", 15), burst("127.0.0.5", 15))
    refused = sum(s == 429 for statuses in behind_one for s in statuses)
    assert refused > 0
    counts = sim.okx.requests()
    assert counts["429_by_ip"] == {"127.0.0.5": refused}
    assert counts["by_ip"] == {"127.0.0.2": 10, "127.0.0.3": 10, "127.0.0.4": 10, "127.0.0.5": 30}


async def test_okx_funding_and_trade_history_paging(sim: SimulatedExchange) -> None:
    """Raw answers: newest first, ``after`` and ``before`` exclusive (fundingTime, trade id)."""
    now = sim.clock.now_ms()
    perp = sim.okx.venue.perp(sim.okx.venue.instrument(SWAP))
    times = perp.funding_times(now - 10 * 86_400_000, now, now)
    trades = model_trades(sim, "SOL/USDT", now - 60 * 60_000, now + 1)
    ids = [int(t["id"]) for t in trades]
    async with aiohttp.ClientSession() as http:

        async def get(path: str, key: str, **params: Any) -> list[int]:
            async with http.get(sim.okx_rest_url + "/api/v5/" + path, params=params) as r:
                body = await r.json()
                assert r.status == 200 and body["code"] == "0", body
                return [int(item[key]) for item in body["data"]]

        funding = "public/funding-rate-history"
        fund = {"instId": "BTC-USDT-SWAP"}
        assert await get(funding, "fundingTime", **fund, before=times[-4]) == times[-3:][::-1]
        assert await get(funding, "fundingTime", **fund, after=times[5], limit=2) == times[3:5][::-1]
        assert await get(funding, "fundingTime", **fund, after=times[5], before=times[3]) == [times[4]]
        history = "market/history-trades"
        sol = {"instId": "SOL-USDT"}
        assert await get(history, "tradeId", **sol, after=ids[50], limit=10) == ids[40:50][::-1]
        assert await get(history, "tradeId", **sol, after=ids[50], before=ids[45]) == ids[46:50][::-1]
        assert await get(history, "tradeId", **sol, before=ids[-4]) == ids[-3:][::-1]
        by_time = await get(history, "tradeId", **sol, type="2", after=trades[50]["ts"], limit=5)
        assert by_time == [int(t["id"]) for t in trades if t["ts"] < trades[50]["ts"]][-5:][::-1]


async def test_one_process_serves_binance_and_okx_from_one_model(sim: SimulatedExchange, rest: Any) -> None:
    """Same seed, same symbol: Binance's and OKX's candles are the same numbers, each in its format."""
    now = sim.clock.now_ms()
    async with ccxt_client(ccxt_async.binance, sim.ccxt_config()) as binance:
        since = now - 20 * 3_600_000
        assert await binance.fetch_ohlcv("SOL/USDT", "1h", since=since, limit=20) == await rest.fetch_ohlcv(
            "SOL/USDT", "1h", since=since, limit=20
        )


async def test_okx_fetch_open_interest_history(sim: SimulatedExchange, rest: Any) -> None:
    now = sim.clock.now_ms()
    since = now - now % 300_000 - 100 * 300_000
    got = await rest.fetch_open_interest_history(SWAP, "5m", since=since, limit=50)
    times = [since + i * 300_000 for i in range(50)]
    perp = sim.okx.venue.perp(sim.okx.venue.instrument(SWAP))
    want = perp.open_interest(np.array(times, dtype=np.int64)).tolist()
    assert [(r["timestamp"], r["openInterestAmount"]) for r in got] == list(zip(times, want, strict=True))


@pytest.mark.parametrize("sliding", [False, True])
def test_okx_limit_windows_fixed_or_sliding(sliding: bool) -> None:
    """N just before a fixed 2 s boundary and N just after: fixed windows admit all 2N; the
    sliding count (the 2 s before each request) refuses the second N. Per IP either way."""
    now = [1001.9]
    limiter = EndpointLimiter({"market/history-candles": 3}, sliding=sliding, clock=lambda: now[0])
    before = [limiter.admit("market/history-candles", "127.0.0.2") for _ in range(3)]
    now[0] = 1002.1
    after = [limiter.admit("market/history-candles", "127.0.0.2") for _ in range(3)]
    other_ip = limiter.admit("market/history-candles", "127.0.0.3")
    assert before == [True] * 3 and other_ip
    assert after == ([False] * 3 if sliding else [True] * 3)
    now[0] = 1004.15  # 2 s after the refused ones too (they count): a new window either way
    assert limiter.admit("market/history-candles", "127.0.0.2")
