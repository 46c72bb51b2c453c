"""Acceptance 3 and 6: the market data is consistent, deterministic and shaped like Binance's."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS, TIMEFRAME_MS, candle_open_ms, next_open_ms
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.market import SymbolMarket
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]
#: The real spot kline and aggTrade from PROTOCOL.md (ccxt's captured Binance responses).
REAL_KLINE: list[Any] = json.loads(
    '[1706630400000,"43519.34000000","43936.00000000","43171.00000000","43488.71000000","20.55495000",'
    '1706633999999,"891428.42858070",3743,"10.91428000","473782.95739920","0"]'
)
REAL_AGG_TRADE: dict[str, Any] = json.loads(
    '{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}'
)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=["BTC/USDT", "SOL/USDT", "PEPE/USDT"], seed=7) as s:
        yield s


def _range_ms(rng: random.Random, market: SymbolMarket, now: int, span_ms: int) -> int:
    lo = market.listing_ms
    return rng.randrange(lo, now - span_ms) // HOUR_MS * HOUR_MS


@pytest.mark.parametrize("timeframe", ["3m", "1h", "4h", "1d", "1w", "1M"])
async def test_intervals_aggregate_their_1m_candles(sim: SimulatedExchange, timeframe: str) -> None:
    rng = random.Random(timeframe)
    now = sim.clock.now_ms()
    for symbol in ("BTC/USDT", "PEPE/USDT"):
        market = sim.markets[symbol]
        for _ in range(3):
            span = 20 * (31 * DAY_MS if timeframe == "1M" else next_open_ms(0, timeframe))
            start = _range_ms(rng, market, now, span)
            big = sim.candles(symbol, timeframe, start, start + span)
            assert len(big) > 0
            for i in range(len(big)):
                open_ms = int(big.open_ms[i])
                m = sim.candles(symbol, "1m", open_ms, next_open_ms(open_ms, timeframe))
                assert len(m) > 0
                assert int(big.o[i]) == int(m.o[0])
                assert int(big.c[i]) == int(m.c[-1])
                assert int(big.h[i]) == int(m.h.max())
                assert int(big.l[i]) == int(m.l.min())
                for f in ("v", "n", "q", "tb", "tbq"):
                    assert int(getattr(big, f)[i]) == int(getattr(m, f).sum()), f


async def test_1s_candles_add_up_to_their_minute(sim: SimulatedExchange) -> None:
    rng = random.Random(5)
    now = sim.clock.now_ms()
    for symbol in ("BTC/USDT", "PEPE/USDT"):
        start = _range_ms(rng, sim.markets[symbol], now, DAY_MS) + rng.randrange(60) * MINUTE_MS
        seconds = sim.candles(symbol, "1s", start, start + MINUTE_MS)
        minute = sim.candles(symbol, "1m", start, start + 1)
        assert [int(x) for x in seconds.open_ms] == list(range(start, start + MINUTE_MS, 1000))
        assert int(seconds.o[0]) == int(minute.o[0]) and int(seconds.c[-1]) == int(minute.c[0])
        assert int(seconds.h.max()) == int(minute.h[0]) and int(seconds.l.min()) == int(minute.l[0])
        for f in ("v", "n", "q", "tb", "tbq"):
            assert int(getattr(seconds, f).sum()) == int(getattr(minute, f)[0]), f


async def test_gaps_hold_no_candles_and_ids_run_on(sim: SimulatedExchange) -> None:
    gap_start = 1_700_000_000_000 // HOUR_MS * HOUR_MS
    gap_end = gap_start + 3 * HOUR_MS + 17 * MINUTE_MS
    async with SimulatedExchange(
        symbols=["SOL/USDT"], seed=7, gaps={"SOL/USDT": [(gap_start, gap_end)]}
    ) as s:
        assert s.gaps("SOL/USDT") == [(gap_start, gap_end)]
        m = s.candles("SOL/USDT", "1m", gap_start - HOUR_MS, gap_end + HOUR_MS)
        assert len(m) == 120
        assert not ((m.open_ms >= gap_start) & (m.open_ms < gap_end)).any()
        h = s.candles("SOL/USDT", "1h", gap_start - HOUR_MS, gap_end + HOUR_MS)
        assert [int(x) for x in h.open_ms] == [
            gap_start - HOUR_MS,
            gap_start + 3 * HOUR_MS,
            gap_start + 4 * HOUR_MS,
        ]
        assert int(h.n[1]) == int(m.n[(m.open_ms >= gap_end) & (m.open_ms < gap_start + 4 * HOUR_MS)].sum())
        before = s.agg_trades("SOL/USDT", gap_start - MINUTE_MS, gap_start)
        after = s.agg_trades("SOL/USDT", gap_end, gap_end + MINUTE_MS)
        assert after[0]["a"] == before[-1]["a"] + 1
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=7, gaps={}) as s:
        assert s.gaps("SOL/USDT") == []
    defaults = sim.gaps("BTC/USDT")
    years = (sim.clock.now_ms() - sim.listing_ms("BTC/USDT")) / (365 * DAY_MS)
    assert 0 < len(defaults) <= years + 1
    assert all(HOUR_MS <= e - s <= 8 * HOUR_MS for s, e in defaults)


async def test_no_candles_before_listing() -> None:
    listing = 1_650_000_000_000 // MINUTE_MS * MINUTE_MS
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=1, listings={"SOL/USDT": listing}, gaps={}) as s:
        assert s.listing_ms("SOL/USDT") == listing
        rows = s.klines("SOL/USDT", "1m", listing - DAY_MS, listing + 10 * MINUTE_MS)
        assert [r[0] for r in rows] == list(range(listing, listing + 10 * MINUTE_MS, MINUTE_MS))
        assert s.agg_trades("SOL/USDT", listing, listing + MINUTE_MS)[0]["a"] == 0
        daily = s.klines("SOL/USDT", "1d", listing - 5 * DAY_MS, listing + 1)
        assert len(daily) == 1


async def test_agg_trades_reproduce_each_minute(sim: SimulatedExchange) -> None:
    rng = random.Random(3)
    now = sim.clock.now_ms()
    async with aiohttp.ClientSession() as http:
        for symbol in ("BTC/USDT", "SOL/USDT", "PEPE/USDT"):
            market = sim.markets[symbol]
            start = _range_ms(rng, market, now, DAY_MS) + rng.randrange(60) * MINUTE_MS
            klines = sim.klines(symbol, "1m", start, start + 5 * MINUTE_MS)
            last_id = None
            for k in klines:
                params = {"symbol": market.exchange_symbol, "startTime": k[0], "endTime": k[6], "limit": 1000}
                async with http.get(sim.rest_url + "/api/v3/aggTrades", params=params) as resp:
                    trades = await resp.json()
                prices = [Decimal(t["p"]) for t in trades]
                assert trades[0]["p"] == k[1] and trades[-1]["p"] == k[4]
                assert max(prices) == Decimal(k[2]) and min(prices) == Decimal(k[3])
                assert sum(Decimal(t["q"]) for t in trades) == Decimal(k[5])
                assert len(trades) == k[8]
                assert sum(Decimal(t["q"]) for t in trades if not t["m"]) == Decimal(k[9])
                ids = [t["a"] for t in trades]
                assert ids == list(range(ids[0], ids[0] + len(ids)))
                if last_id is not None:
                    assert ids[0] == last_id + 1
                last_id = ids[-1]
                assert all(k[0] <= t["T"] <= k[6] for t in trades)
            params = {"symbol": market.exchange_symbol, "fromId": last_id - 3, "limit": 3}
            async with http.get(sim.rest_url + "/api/v3/aggTrades", params=params) as resp:
                assert [t["a"] for t in await resp.json()] == [last_id - 3, last_id - 2, last_id - 1]


async def test_forming_candle_closes_into_the_served_candle(sim: SimulatedExchange) -> None:
    minute = (sim.clock.now_ms() // MINUTE_MS - 30) * MINUTE_MS
    sim.clock.freeze(minute + 20_000)
    early = sim.klines("SOL/USDT", "1m", minute, minute + 1)[0]
    sim.clock.freeze(minute + MINUTE_MS - 1)
    last_ms = sim.klines("SOL/USDT", "1m", minute, minute + 1)[0]
    hourly_forming = sim.klines("SOL/USDT", "1h", minute // HOUR_MS * HOUR_MS, minute + 1)
    sim.clock.unfreeze()
    closed = sim.klines("SOL/USDT", "1m", minute, minute + 1)[0]
    assert last_ms == closed
    assert early[1] == closed[1]
    assert Decimal(early[2]) <= Decimal(closed[2]) and Decimal(early[3]) >= Decimal(closed[3])
    assert early[8] <= closed[8] and Decimal(early[5]) <= Decimal(closed[5])
    hour = sim.klines("SOL/USDT", "1h", minute // HOUR_MS * HOUR_MS, minute + 1)
    assert hourly_forming[0][1] == hour[0][1]
    assert hourly_forming[0][4] == closed[4]


async def test_forming_candle_moves_with_the_clock(sim: SimulatedExchange) -> None:
    minute = (sim.clock.now_ms() // MINUTE_MS - 5) * MINUTE_MS
    seen = []
    for second in (0, 10, 20, 30, 40, 50, 59):
        sim.clock.freeze(minute + second * 1000 + 999)
        seen.append(sim.klines("BTC/USDT", "1m", minute, minute + 1)[0][8])
    assert seen == sorted(seen) and seen[0] < seen[-1]


async def test_kline_and_agg_trade_shapes_match_binance(sim: SimulatedExchange) -> None:
    now = sim.clock.now_ms()
    async with aiohttp.ClientSession() as http:
        params = {"symbol": "BTCUSDT", "interval": "1h", "startTime": now - 10 * HOUR_MS, "limit": 3}
        async with http.get(sim.rest_url + "/api/v3/klines", params=params) as resp:
            klines = await resp.json()
        async with http.get(
            sim.rest_url + "/api/v3/aggTrades", params={"symbol": "BTCUSDT", "limit": 5}
        ) as resp:
            trades = await resp.json()
    assert len(klines) == 3
    for k in klines:
        assert len(k) == len(REAL_KLINE)
        assert [type(x) for x in k] == [type(x) for x in REAL_KLINE]
        for ours, real in zip(k, REAL_KLINE, strict=True):
            if isinstance(real, str) and "." in real:
                assert len(ours.split(".")[1]) == len(real.split(".")[1]) == 8
        assert k[6] == k[0] + HOUR_MS - 1 and k[11] == "0"
    assert klines[0][0] % HOUR_MS == 0 and klines[0][0] >= now - 10 * HOUR_MS
    assert len(trades) == 5
    for t in trades:
        assert list(t) == list(REAL_AGG_TRADE)
        assert {k: type(v) for k, v in t.items()} == {k: type(v) for k, v in REAL_AGG_TRADE.items()}
        assert t["f"] == t["l"] == t["a"] and t["M"] is True


async def test_prices_positive_on_tick_and_plausible(sim: SimulatedExchange) -> None:
    for symbol in sim.markets:
        market = sim.markets[symbol]
        rows = sim.candles(symbol, "1d", market.listing_ms, sim.clock.now_ms())
        assert (rows.l >= 1).all()
        assert (rows.h >= np.maximum(rows.o, rows.c)).all() and (rows.l <= np.minimum(rows.o, rows.c)).all()
        daily_moves = np.abs(np.diff(np.log(rows.c.astype(float))))
        assert daily_moves.max() < 0.5
        assert (rows.v > 0).all()


async def test_far_past_is_cheap_and_lazy() -> None:
    market = SymbolMarket("ETH/USDT", 1, listing_ms=0, gaps=[])
    rows = market.candles("1m", 5 * 365 * DAY_MS, 5 * 365 * DAY_MS + 1000 * MINUTE_MS, 10 * 365 * DAY_MS)
    assert len(rows) == 1000
    assert len(market.day_cache) == 0


def _fetch_bytes(port: int, seed: int) -> list[bytes]:
    script = f"""
import asyncio, sys
import aiohttp
from data_collector.simulator import SimulatedExchange
async def main():
    async with SimulatedExchange(symbols=["BTC/USDT", "SOL/USDT"], seed={seed}, port={port}) as sim:
        async with aiohttp.ClientSession() as http:
            for path in {_PATHS!r}:
                async with http.get(sim.rest_url + path) as r:
                    sys.stdout.buffer.write((await r.read()) + b"\\n")
asyncio.run(main())
"""
    # `python -c` puts its working directory first on sys.path: the checkout's package.
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60, check=True
    )
    return out.stdout.split(b"\n")


_PATHS = [
    f"/api/v3/klines?symbol=BTCUSDT&interval={tf}&startTime=1700000000000&endTime=1720000000000&limit=1000"
    for tf in ("1m", "5m", "1h", "4h", "1d", "1w", "1M")
] + [
    "/api/v3/aggTrades?symbol=SOLUSDT&startTime=1710000000000&endTime=1710003600000&limit=1000",
    "/api/v3/exchangeInfo?symbol=SOLUSDT",
]


async def test_same_seed_same_bytes_in_two_processes() -> None:
    a, b, c = await asyncio.gather(
        asyncio.to_thread(_fetch_bytes, free_port(), 11),
        asyncio.to_thread(_fetch_bytes, free_port(), 11),
        asyncio.to_thread(_fetch_bytes, free_port(), 12),
    )
    assert len(a) == len(_PATHS) + 1
    info_a, info_b = json.loads(a[-2]), json.loads(b[-2])
    info_a.pop("serverTime"), info_b.pop("serverTime")
    assert info_a == info_b
    assert a[:-2] == b[:-2]
    assert all(len(x) > 1000 for x in a[:-2])
    assert a[0] != c[0]


async def test_24h_ticker_aggregates_the_last_day_of_candles(sim: SimulatedExchange) -> None:
    for offset_ms in (0, 30_000, 59_999):
        now = (sim.clock.now_ms() // MINUTE_MS - 2) * MINUTE_MS + offset_ms
        sim.clock.freeze(now)
        async with aiohttp.ClientSession() as http:
            async with http.get(sim.rest_url + "/api/v3/ticker/24hr", params={"symbol": "SOLUSDT"}) as resp:
                ticker = await resp.json()
        k = sim.klines("SOL/USDT", "1m", now - DAY_MS + 1, now + 1)
        assert ticker["openPrice"] == k[0][1] and ticker["lastPrice"] == k[-1][4]
        assert Decimal(ticker["highPrice"]) == max(Decimal(x[2]) for x in k)
        assert Decimal(ticker["lowPrice"]) == min(Decimal(x[3]) for x in k)
        assert Decimal(ticker["volume"]) == sum(Decimal(x[5]) for x in k)
        assert ticker["count"] == sum(x[8] for x in k)
        assert ticker["lastId"] - ticker["firstId"] + 1 == ticker["count"]
    sim.clock.unfreeze()


async def test_rest_klines_paging_semantics() -> None:
    gap = (1_700_000_000_000 // HOUR_MS * HOUR_MS, 1_700_000_000_000 // HOUR_MS * HOUR_MS + 2 * HOUR_MS)
    async with (
        SimulatedExchange(symbols=["SOL/USDT"], seed=4, gaps={"SOL/USDT": [gap]}) as sim,
        aiohttp.ClientSession() as http,
    ):

        async def get(**params: Any) -> list[list[Any]]:
            params = {"symbol": "SOLUSDT", "interval": "1m", **{k: str(v) for k, v in params.items()}}
            async with http.get(sim.rest_url + "/api/v3/klines", params=params) as resp:
                assert resp.status == 200
                result: list[list[Any]] = await resp.json()
                return result

        end = gap[0] - 10 * DAY_MS + 12_345
        latest = await get(endTime=end, limit=7)
        assert [k[0] for k in latest] == [
            end // MINUTE_MS * MINUTE_MS - i * MINUTE_MS for i in range(6, -1, -1)
        ]
        assert len(await get()) == 500
        start = end - 5 * MINUTE_MS
        ranged = await get(startTime=start, endTime=end)
        assert [k[0] for k in ranged] == [(start // MINUTE_MS + 1 + i) * MINUTE_MS for i in range(5)]
        across = await get(startTime=gap[0] - 3 * MINUTE_MS, limit=6)
        assert [k[0] for k in across] == [gap[0] - 3 * MINUTE_MS + i * MINUTE_MS for i in range(3)] + [
            gap[1] + i * MINUTE_MS for i in range(3)
        ]
        backwards = await get(endTime=gap[1] + MINUTE_MS, limit=4)
        assert [k[0] for k in backwards] == [
            gap[0] - 2 * MINUTE_MS,
            gap[0] - MINUTE_MS,
            gap[1],
            gap[1] + MINUTE_MS,
        ]
        assert await get(startTime=sim.clock.now_ms() + DAY_MS) == []
        assert await get(endTime=sim.listing_ms("SOL/USDT") - 1) == []
        listing = sim.listing_ms("SOL/USDT")
        assert (await get(startTime=0, limit=1))[0][0] == listing


def test_forming_minute_is_the_aggregate_of_its_trades_so_far() -> None:
    rng = random.Random(5)
    market = SymbolMarket("SOL/USDT", 11)
    # Another market of the same world that draws each next minute first (as the WS pump's
    # prefetch does) and keeps few minutes: the order and the cache must not change a number.
    other = SymbolMarket("SOL/USDT", 11)
    now_min = market.listing_ms // MINUTE_MS + 3 * 365 * 1440
    for _ in range(6):
        minute = rng.randrange(market.listing_ms // MINUTE_MS, now_min)
        other.minute_tape(minute + 1)
        trades = market.minute_trades(minute)
        closed = market.minute_rows(minute, minute + 1)
        assert len(closed) == 1 and trades
        start = minute * MINUTE_MS
        times = [start, start + MINUTE_MS - 1] + [t.time_ms for t in rng.sample(trades, 5)]
        times += [t.time_ms - 1 for t in trades[:2]] + [rng.randrange(start, start + MINUTE_MS)]
        for at in times:
            done = [t for t in trades if t.time_ms <= at]
            p = market.partial_minute(at)
            assert p is not None and other.partial_minute(at) == p
            assert market.last_price(at) == p.c
            if not done:
                o = int(closed.o[0])
                assert (p.o, p.h, p.l, p.c, p.v, p.n) == (o, o, o, o, 0, 0)
                continue
            prices = [t.price for t in done]
            vol = sum(t.qty for t in done)
            tb = sum(t.qty for t in done if not t.buyer_maker)
            assert (p.o, p.h, p.l, p.c) == (prices[0], max(prices), min(prices), prices[-1])
            assert (p.v, p.n, p.tb) == (vol, len(done), tb)
            assert p.q == int(np.floor(float(closed.q[0]) * (vol / float(closed.v[0]))))
        last = market.partial_minute(start + MINUTE_MS - 1)
        assert last is not None
        assert [last.o, last.h, last.l, last.c, last.v, last.n, last.q, last.tb, last.tbq] == [
            int(col[0]) for col in list(closed)[1:]
        ]
    gap_start, _gap_end = market.gaps()[0]
    assert market.partial_minute(gap_start) is None and market.last_price(gap_start) is None


def test_live_candles_follow_the_clock_within_and_across_minutes() -> None:
    # The closed part of a range holding the forming candle is kept for the minute: asking
    # again a little later, or in the next minute, must give what a fresh market computes.
    market = SymbolMarket("BTC/USDT", 9)
    t0 = market.listing_ms + 400 * DAY_MS + 23 * HOUR_MS + 58 * MINUTE_MS + 59_000
    for step in (0, 300, 700, 1_100, 61_500, 125_000):
        now = t0 + step
        for tf in ("1m", "15m", "1h", "1d"):
            start = candle_open_ms(now, tf) - 2 * TIMEFRAME_MS[tf]
            got = market.candles(tf, start, now + 1, now)
            fresh = SymbolMarket("BTC/USDT", 9).candles(tf, start, now + 1, now)
            assert len(got) == 3 and [c.tolist() for c in got] == [c.tolist() for c in fresh]
