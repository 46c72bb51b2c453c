"""Issue 12, acceptance 1: the real ccxt clients (binanceusdm, binance swap, ccxt.pro) on the simulator's perpetuals."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
import pytest

from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.perp import FUNDING_MS
from tests.support.ccxt_clients import ccxt_client

PERPS = ["BTC/USDT:USDT", "SOL/USDT:USDT"]
DELISTED_AGO_MS = 3 * DAY_MS


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    now = SimulatedExchange(symbols=["BTC/USDT"]).clock.now_ms()
    delist = now - now % HOUR_MS - DELISTED_AGO_MS
    async with SimulatedExchange(
        symbols=["BTC/USDT", "LUNA/USDT"],
        perpetuals=[*PERPS, "LUNA/USDT:USDT"],
        seed=42,
        gaps={},
        ws_rate=20,
        delistings={"LUNA/USDT": delist, "LUNA/USDT:USDT": delist},
    ) as s:
        yield s


@pytest.fixture
async def usdm(sim: SimulatedExchange) -> AsyncIterator[Any]:
    async with ccxt_client(ccxt.binanceusdm, sim.futures_ccxt_config()) as ex:
        yield ex


@pytest.fixture
async def pro(sim: SimulatedExchange) -> AsyncIterator[Any]:
    async with ccxt_client(ccxtpro.binanceusdm, sim.futures_ccxt_config()) as ex:
        yield ex


def _ohlcv(kline: list[Any]) -> list[float]:
    return [float(kline[0])] + [float(x) for x in kline[1:6]]


def _binance_funding_e8(premiums_e8: list[int]) -> int:
    """Binance's documented rule, written out independently of the simulator's code.

    P = (1*p1 + 2*p2 + ... + n*pn) / (1 + 2 + ... + n); rate = P + clamp(0.01% - P, -0.05%, 0.05%).
    """
    num = sum(i * p for i, p in enumerate(premiums_e8, start=1))
    den = len(premiums_e8) * (len(premiums_e8) + 1) // 2
    avg = Fraction(num, den)
    avg_e8 = math.floor(avg + Fraction(1, 2))
    return avg_e8 + min(50_000, max(-50_000, 10_000 - avg_e8))


def _e8(text: str) -> int:
    """An 8-decimal string as exact integer units (premiums may be negative)."""
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    return sign * (int(whole) * 100_000_000 + int((frac + "00000000")[:8]))


@pytest.mark.parametrize("client", ["binanceusdm", "binance-swap"])
async def test_load_markets_lists_perpetuals_in_one_request(sim: SimulatedExchange, client: Any) -> None:
    cls = ccxt.binanceusdm if client == "binanceusdm" else ccxt.binance
    ex = cls(sim.ccxt_config("swap"))
    try:
        markets = await ex.load_markets()
    finally:
        await ex.close()
    assert set(markets) == {*PERPS, "LUNA/USDT:USDT"}
    assert sim.stats()["endpoints"] == {"fapi/v1/exchangeInfo": 1}
    btc = markets["BTC/USDT:USDT"]
    assert btc["swap"] and btc["linear"] and btc["active"] and btc["settle"] == "USDT"
    luna = markets["LUNA/USDT:USDT"]
    assert luna["active"] is False and luna["info"]["status"] == "SETTLING"
    assert int(luna["info"]["deliveryDate"]) == sim.usdm.market("LUNA/USDT:USDT").delisted_ms


async def test_spot_client_still_sees_spot_only(sim: SimulatedExchange) -> None:
    ex = ccxt.binance(sim.ccxt_config())
    try:
        markets = await ex.load_markets()
    finally:
        await ex.close()
    assert set(markets) == {"BTC/USDT", "LUNA/USDT"}
    assert markets["LUNA/USDT"]["active"] is False and markets["LUNA/USDT"]["info"]["status"] == "BREAK"
    assert sim.stats()["endpoints"] == {"exchangeInfo": 1}


@pytest.mark.parametrize("price", ["last", "mark", "index", "premiumIndex"])
@pytest.mark.parametrize("timeframe", ["1m", "15m", "4h", "1d"])
async def test_fetch_ohlcv_equals_truth(
    sim: SimulatedExchange, usdm: Any, price: str, timeframe: str
) -> None:
    now = sim.clock.now_ms()
    step = {"1m": MINUTE_MS, "15m": 15 * MINUTE_MS, "4h": 4 * HOUR_MS, "1d": DAY_MS}[timeframe]
    since = now - now % step - 30 * step
    params = {} if price == "last" else {"price": price}
    got = await usdm.fetch_ohlcv("BTC/USDT:USDT", timeframe, since, 20, params=params)
    kind = {"premiumIndex": "premium"}.get(price, price)
    truth = sim.usdm.klines("BTC/USDT:USDT", timeframe, since, now + 1, price=kind)[:20]
    assert len(got) == 20
    assert got == [_ohlcv(k) for k in truth]
    # ... and equal to the model's integers, so a formatting slip on both sides shows too.
    market = sim.usdm.market("BTC/USDT:USDT")
    rows = sim.usdm.series(market, kind).candles(timeframe, since, now + 1, now)
    scale = 10 ** (8 if kind == "premium" else market.price_decimals)
    assert [k[1:5] for k in got] == [
        [int(x) / scale for x in (rows.o[i], rows.h[i], rows.l[i], rows.c[i])] for i in range(20)
    ]
    if price != "last":
        assert all(k[5] == 0 for k in got)


async def test_index_is_spot_and_premium_is_last_over_index(sim: SimulatedExchange, usdm: Any) -> None:
    now = sim.clock.now_ms()
    since = now - now % MINUTE_MS - 100 * MINUTE_MS
    raw = {
        "last": await usdm.fapiPublicGetKlines(
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": since, "limit": 60}
        ),
        "index": await usdm.fapiPublicGetIndexPriceKlines(
            {"pair": "BTCUSDT", "interval": "1m", "startTime": since, "limit": 60}
        ),
        "mark": await usdm.fapiPublicGetMarkPriceKlines(
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": since, "limit": 60}
        ),
        "premium": await usdm.fapiPublicGetPremiumIndexKlines(
            {"symbol": "BTCUSDT", "interval": "1m", "startTime": since, "limit": 60}
        ),
    }
    spot = sim.klines("BTC/USDT", "1m", since, since + 60 * MINUTE_MS)
    for last, index, mark, prem, s in zip(
        raw["last"], raw["index"], raw["mark"], raw["premium"], spot, strict=True
    ):
        assert index[0] == last[0] == s[0]
        assert (index[1], index[4]) == (s[1], s[4])  # the index is the spot price
        c_last, c_index, c_mark = _e8(last[4]), _e8(index[4]), _e8(mark[4])
        # premium = (last - index) / index, rounded to 1e-8
        num = (c_last - c_index) * 100_000_000
        expect = (1 if num >= 0 else -1) * ((abs(num) * 2 + c_index) // (2 * c_index))
        assert _e8(prem[4]) == expect
        for other in (c_index, c_last):
            assert abs(c_mark - other) / other < 0.005  # mark and index stay near the last price


async def test_funding_history_every_8h_from_the_premium(sim: SimulatedExchange, usdm: Any) -> None:
    now = sim.clock.now_ms()
    since = now - 10 * DAY_MS
    history = await usdm.fetch_funding_rate_history("BTC/USDT:USDT", since, 1000)
    times = [h["timestamp"] for h in history]
    assert len(times) >= 29
    assert all(t % FUNDING_MS == 0 for t in times)
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [FUNDING_MS] * (len(times) - 1)
    truth = sim.usdm.funding_history("BTC/USDT:USDT", since, now)
    assert [h["info"] for h in history] == [{**t, "fundingTime": t["fundingTime"]} for t in truth]
    assert len({h["fundingRate"] for h in history}) > 2, "funding never moves off the interest rate"
    moved = [h for h in history if h["fundingRate"] != 0.0001][-4:]
    assert moved
    for h in moved + history[-1:]:
        t = h["timestamp"]
        prem = await usdm.fetch_ohlcv(
            "BTC/USDT:USDT", "1m", t - FUNDING_MS, 480, params={"price": "premiumIndex"}
        )
        closes = [round(k[4] * 1e8) for k in prem]
        assert len(closes) == 480
        assert round(h["fundingRate"] * 1e8) == _binance_funding_e8(closes)


async def test_open_interest_history_only_30_days(sim: SimulatedExchange, usdm: Any) -> None:
    now = sim.clock.now_ms()
    since = now - 29 * DAY_MS
    got = await usdm.fetch_open_interest_history("BTC/USDT:USDT", "1h", since, 200)
    truth = sim.usdm.open_interest_history("BTC/USDT:USDT", "1h", since, now)[:200]
    assert [g["info"] for g in got] == truth
    assert [g["timestamp"] for g in got] == [since - since % HOUR_MS + HOUR_MS * (i + 1) for i in range(200)]
    amounts = [g["openInterestAmount"] for g in got]
    assert all(0.8 < b / a < 1.25 for a, b in zip(amounts, amounts[1:], strict=False)), "OI jumps"
    current = await usdm.fetch_open_interest("BTC/USDT:USDT")
    assert current["openInterestAmount"] > 0
    with pytest.raises(ccxt.BadRequest, match="startTime"):
        await usdm.fetch_open_interest_history("BTC/USDT:USDT", "1h", now - 31 * DAY_MS, 10)


async def test_agg_trades_reproduce_their_1m_candles(sim: SimulatedExchange, usdm: Any) -> None:
    now = sim.clock.now_ms()
    for minutes_ago in (3, 700):
        start = now - now % MINUTE_MS - minutes_ago * MINUTE_MS
        trades = await usdm.fetch_trades(
            "BTC/USDT:USDT", start, 1000, params={"until": start + MINUTE_MS - 1}
        )
        candle = (await usdm.fetch_ohlcv("BTC/USDT:USDT", "1m", start, 1))[0]
        assert candle[0] == start and 4 <= len(trades) < 1000
        prices = [t["price"] for t in trades]
        assert [prices[0], max(prices), min(prices), prices[-1]] == candle[1:5]
        assert round(sum(t["amount"] for t in trades), 8) == candle[5]
        ids = [int(t["id"]) for t in trades]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert "M" not in trades[0]["info"]


async def test_nothing_after_a_delisting(sim: SimulatedExchange, usdm: Any) -> None:
    delisted = sim.usdm.market("LUNA/USDT:USDT").delisted_ms
    assert delisted is not None
    before = await usdm.fetch_ohlcv("LUNA/USDT:USDT", "1h", delisted - 5 * HOUR_MS, 100)
    assert [k[0] for k in before] == [delisted - h * HOUR_MS for h in range(5, 0, -1)]
    assert await usdm.fetch_trades("LUNA/USDT:USDT", delisted + HOUR_MS, 100) == []
    funding = await usdm.fetch_funding_rate_history("LUNA/USDT:USDT", delisted - DAY_MS, 100)
    assert funding and funding[-1]["timestamp"] <= delisted
    spot = sim.klines("LUNA/USDT", "1m", delisted - 2 * MINUTE_MS, delisted + DAY_MS)
    assert [k[0] for k in spot] == [delisted - 2 * MINUTE_MS, delisted - MINUTE_MS]


async def test_24h_tickers_sum_the_last_day_of_1m_candles(sim: SimulatedExchange, usdm: Any) -> None:
    now = sim.clock.now_ms() - sim.clock.now_ms() % MINUTE_MS
    sim.clock.freeze(now)  # on a minute's open: the forming minute has no trade yet
    tickers = await usdm.fetch_tickers()
    assert set(tickers) == {*PERPS, "LUNA/USDT:USDT"}
    for symbol in PERPS:
        # The rolling window (now - 24 h, now]: the 1,439 closed minutes after its start.
        day = sim.usdm.klines(symbol, "1m", now - DAY_MS + MINUTE_MS, now)
        assert tickers[symbol]["quoteVolume"] == pytest.approx(sum(float(k[7]) for k in day), rel=1e-12)
        assert tickers[symbol]["info"]["count"] == sum(int(k[8]) for k in day)
    assert tickers["LUNA/USDT:USDT"]["quoteVolume"] == 0  # delisted: listed, idle
    one = await usdm.fetch_ticker(PERPS[0])
    assert one["info"] == tickers[PERPS[0]]["info"]


async def test_deterministic_by_seed() -> None:
    async def sample(seed: int) -> tuple[Any, ...]:
        async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=["SOL/USDT:USDT"], seed=seed) as s:
            s.clock.freeze(1_780_000_000_000)
            v = s.usdm
            return (
                v.klines("SOL/USDT:USDT", "1h", 1_779_900_000_000, 1_780_000_000_000, price="mark"),
                v.funding_history("SOL/USDT:USDT", 1_779_000_000_000, 1_780_000_000_000),
                v.open_interest_history("SOL/USDT:USDT", "5m", 1_779_990_000_000, 1_780_000_000_000),
            )

    assert await sample(5) == await sample(5)
    assert await sample(5) != await sample(6)


async def _used(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return int(resp.headers["X-MBX-USED-WEIGHT-1M"])


async def test_futures_weights_and_their_own_budget(sim: SimulatedExchange) -> None:
    base = sim.futures_rest_url + "/fapi/v1/"
    sim.clock.freeze(sim.clock.now_ms() - sim.clock.now_ms() % MINUTE_MS + 1000)
    async with aiohttp.ClientSession() as http:
        used = 0
        for path, weight in (
            ("ping", 1),
            ("time", 1),
            ("exchangeInfo", 1),  # spot's weighs 20
            ("klines?symbol=BTCUSDT&interval=1m&limit=99", 1),
            ("klines?symbol=BTCUSDT&interval=1m&limit=100", 2),
            ("markPriceKlines?symbol=BTCUSDT&interval=1m", 5),
            ("premiumIndexKlines?symbol=BTCUSDT&interval=1m&limit=1000", 5),
            ("indexPriceKlines?pair=BTCUSDT&interval=1m&limit=1500", 10),
            ("aggTrades?symbol=BTCUSDT", 20),
            ("depth?symbol=BTCUSDT&limit=100", 5),
            ("ticker/bookTicker?symbol=BTCUSDT", 2),
            ("fundingRate?symbol=BTCUSDT", 1),
            ("ticker/24hr?symbol=BTCUSDT", 1),
            ("ticker/24hr", 40),
        ):
            used += weight
            assert await _used(http, base + path) == used, path
        assert await _used(http, sim.rest_url + "/api/v3/klines?symbol=BTCUSDT&interval=1m") == 2
        assert sim.stats()["futures"]["used_weight_1m"] == used


async def test_futures_budget_gives_429_to_ccxt() -> None:
    async with SimulatedExchange(
        symbols=["BTC/USDT"], perpetuals=["BTC/USDT:USDT"], futures_weight_limit=25
    ) as sim:
        sim.clock.freeze(sim.clock.now_ms() - sim.clock.now_ms() % MINUTE_MS + 1000)
        ex = ccxt.binanceusdm({**sim.futures_ccxt_config(), "enableRateLimit": False})
        try:
            await ex.load_markets()
            await ex.fetch_trades("BTC/USDT:USDT")  # 20 of 25
            with pytest.raises(ccxt.DDoSProtection, match="429"):
                await ex.fetch_trades("BTC/USDT:USDT")
        finally:
            await ex.close()
        assert sim.stats()["429"] == 1
        assert sim.limiter.current_used() == 0  # the spot budget is untouched


async def test_spot_fault_switches_apply_to_futures(sim: SimulatedExchange, usdm: Any) -> None:
    await usdm.load_markets()
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        await usdm.fetch_time()
    sim.set_faults()
    sim.start_outage()
    with pytest.raises(ccxt.ExchangeNotAvailable):
        await usdm.fetch_open_interest("BTC/USDT:USDT")
    sim.end_outage()
    assert await usdm.fetch_time() > 0
    assert sim.stats()["faults"]["error"] == 1 and sim.stats()["faults"]["outage"] >= 1


async def _next(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return msg.json()


async def test_depth_diffs_chain_by_pu_and_match_the_snapshot(sim: SimulatedExchange) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sim.futures_ws_url + "/public/ws/btcusdt@depth@100ms") as ws:
            first = await _next(ws)
            async with http.get(sim.futures_rest_url + "/fapi/v1/depth?symbol=BTCUSDT&limit=1000") as resp:
                snapshot = await resp.json()
            last_id, prev_u, bridged = snapshot["lastUpdateId"], first["u"], False
            for i in range(30):
                diff = await _next(ws)
                assert diff["e"] == "depthUpdate" and set(diff) >= {"E", "T", "U", "u", "pu"}
                assert diff["pu"] == prev_u, f"diff {i} does not chain"
                bridged = bridged or diff["pu"] == last_id or diff["U"] <= last_id <= diff["u"]
                prev_u = diff["u"]
            assert bridged, "no diff follows on from the REST snapshot"
            sim.ws_skip_depth_id("BTC/USDT:USDT")
            while (diff := await _next(ws))["pu"] == prev_u:
                prev_u = diff["u"]
            assert diff["pu"] > prev_u  # a lost event: the chain breaks, so books can tell


async def test_combined_stream_payloads(sim: SimulatedExchange) -> None:
    names = [
        "btcusdt@aggTrade",
        "btcusdt@kline_1m",
        "btcusdt@markPrice@1s",
        "btcusdt@bookTicker",
        "btcusdt@forceOrder",
    ]
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sim.futures_ws_url + "/stream?streams=" + "/".join(names)) as ws:
            seen: dict[str, Any] = {}
            while len(seen) < len(names):
                msg = await asyncio.wait_for(ws.receive(), 15)
                data = msg.json()
                seen.setdefault(data["stream"], data["data"])
    assert set(seen["btcusdt@aggTrade"]) == {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m"}
    mark = seen["btcusdt@markPrice@1s"]
    assert mark["e"] == "markPriceUpdate" and mark["T"] % FUNDING_MS == 0 and float(mark["p"]) > 0
    assert seen["btcusdt@bookTicker"]["e"] == "bookTicker"
    liq = seen["btcusdt@forceOrder"]
    assert liq["e"] == "forceOrder" and liq["o"]["s"] == "BTCUSDT" and liq["o"]["X"] == "FILLED"
    assert seen["btcusdt@kline_1m"]["k"]["i"] == "1m"


async def _watch_all(pro: Any, seconds: float) -> dict[str, int]:
    counts = {"trades": 0, "ohlcv": 0, "book": 0}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def loop_on(name: str, call: Any) -> None:
        while loop.time() < deadline:
            await asyncio.wait_for(call(), 10)
            counts[name] += 1

    await asyncio.gather(
        loop_on("trades", lambda: pro.watch_trades("BTC/USDT:USDT")),
        loop_on("ohlcv", lambda: pro.watch_ohlcv("BTC/USDT:USDT", "1m")),
        loop_on("book", lambda: pro.watch_order_book("BTC/USDT:USDT")),
    )
    return counts


async def test_pro_watchers_short(sim: SimulatedExchange, pro: Any) -> None:
    counts = await _watch_all(pro, 4)
    assert counts["trades"] > 5 and counts["book"] > 10 and counts["ohlcv"] >= 1
    agg = await asyncio.wait_for(pro.watch_trades("SOL/USDT:USDT", params={"name": "aggTrade"}), 10)
    assert agg[-1]["symbol"] == "SOL/USDT:USDT" and agg[-1]["price"] > 0
    mark = await asyncio.wait_for(pro.watch_mark_price("BTC/USDT:USDT"), 10)
    assert mark["symbol"] == "BTC/USDT:USDT" and mark["markPrice"] > 0 and mark["indexPrice"] > 0
    # A forced order comes in about one second of four, at random: 60 s bounds the wait (a
    # quiet 15 s, which CI once saw, has a chance of about 1 in 75).
    liquidations = await asyncio.wait_for(pro.watch_liquidations("BTC/USDT:USDT"), 60)
    assert liquidations[0]["symbol"] == "BTC/USDT:USDT" and liquidations[0]["contracts"] > 0


@pytest.mark.slow
async def test_pro_watchers_30s(sim: SimulatedExchange, pro: Any) -> None:
    counts = await _watch_all(pro, 30)
    assert counts["book"] > 200 and counts["trades"] > 50 and counts["ohlcv"] > 10
