"""Acceptance 4: request weight per calendar minute, 429 with Retry-After, escalating 418 bans."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import ccxt.async_support as ccxt
import pytest

from data_collector.markets import MINUTE_MS
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.limits import SimClock, WeightLimiter


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=["BTC/USDT"], seed=1, weight_limit=6000) as s:
        # A frozen clock a second into a minute: no real minute boundary can split the test.
        s.clock.freeze((s.clock.now_ms() // MINUTE_MS + 1) * MINUTE_MS + 1000)
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        yield session


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_weight_header_counts(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    base = sim.rest_url + "/api/v3"
    expected = 0
    for path, weight in (
        ("/ping", 1),
        ("/time", 1),
        ("/klines?symbol=BTCUSDT&interval=1m&limit=5", 2),
        ("/exchangeInfo", 20),
        ("/aggTrades?symbol=BTCUSDT&limit=5", 4),
        ("/depth?symbol=BTCUSDT&limit=100", 5),
        ("/depth?symbol=BTCUSDT&limit=500", 25),
        ("/depth?symbol=BTCUSDT&limit=1000", 50),
        ("/depth?symbol=BTCUSDT&limit=5000", 250),
        ("/ticker/24hr?symbol=BTCUSDT", 2),
        ("/ticker/24hr", 80),
        ("/ticker/bookTicker?symbol=BTCUSDT", 2),
        ("/ticker/bookTicker", 4),
        ("/klines?symbol=NOPE&interval=1m", 2),
    ):
        status, headers, _ = await _get(http, base + path)
        expected += weight
        assert headers["X-MBX-USED-WEIGHT-1M"] == str(expected), path
        assert status == (400 if "NOPE" in path else 200)
    stats = sim.stats()
    assert stats["weight"] == expected == stats["used_weight_1m"]
    assert stats["requests"] == 14
    assert stats["endpoints"]["depth"] == 4
    async with http.get(sim.rest_url + "/sim/stats") as resp:
        assert (await resp.json())["weight"] == expected


async def test_burst_gets_429_then_418_then_reset(
    sim: SimulatedExchange, http: aiohttp.ClientSession
) -> None:
    url = sim.rest_url + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1"
    results = await asyncio.gather(*(_get(http, url) for _ in range(3500)))
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: 3000, 429: 500}
    for status, headers, body in results:
        if status == 429:
            assert headers["Retry-After"] == "59"
            assert json.loads(body)["code"] == -1003
            assert "6000" in json.loads(body)["msg"]
    assert sim.stats()["429"] == 500
    assert max(int(h["X-MBX-USED-WEIGHT-1M"]) for _, h, _ in results) == 6000

    # Still sending two seconds into the Retry-After window: banned (418), for 2 minutes.
    sim.clock.advance(2000)
    status, headers, body = await _get(http, url)
    assert status == 418 and headers["Retry-After"] == "120"
    assert json.loads(body)["code"] == -1003
    sim.clock.advance(60_000)
    status, headers, _ = await _get(http, url)
    assert status == 418 and 0 < int(headers["Retry-After"]) <= 60
    assert sim.stats()["418"] == 2

    # After the ban, a new minute: the budget is whole again.
    sim.clock.advance(60_000)
    status, headers, _ = await _get(http, url)
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "2"


async def test_budget_resets_at_the_minute(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    url = sim.rest_url + "/api/v3/exchangeInfo"
    for _ in range(300):
        status, _, _ = await _get(http, url)
        assert status == 200
    status, headers, _ = await _get(http, url)
    assert status == 429 and headers["Retry-After"] == "59"
    # A client that waits as told (Retry-After) is not banned, and the new minute starts at zero.
    sim.clock.advance(59_000)
    status, headers, _ = await _get(http, url)
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "20"


def test_bans_escalate() -> None:
    clock = SimClock()
    clock.freeze(1000 * MINUTE_MS)
    limiter = WeightLimiter(10, clock, ban_grace_ms=500, ban_base_s=120)
    bans = []
    for _ in range(4):
        while limiter.admit(5).status == 200:
            pass
        clock.advance(600)
        verdict = limiter.admit(5)
        assert verdict.status == 418
        bans.append(verdict.retry_after_s)
        clock.advance(verdict.retry_after_s * 1000 + MINUTE_MS)
    assert bans == [120, 240, 480, 960]


async def test_ccxt_maps_429_and_418_to_ddos_protection(sim: SimulatedExchange) -> None:
    ex = ccxt.binance({**sim.ccxt_config(), "enableRateLimit": False})
    try:
        sim.limiter.used = sim.limiter.limit
        sim.limiter.window = sim.clock.now_ms() // MINUTE_MS
        with pytest.raises(ccxt.DDoSProtection):
            await ex.public_get_ping()
        assert ex.last_response_headers["Retry-After"] == "59"
        sim.clock.advance(5000)
        with pytest.raises(ccxt.DDoSProtection):
            await ex.public_get_ping()
        assert sim.stats()["418"] == 1
    finally:
        await ex.close()
