"""Acceptance 5: every REST fault kind is visible to a raw HTTP client and gone when switched off."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from data_collector.errors import UsageError
from data_collector.simulator import SimulatedExchange
from tests.support.waiting import wait_for

PING = "/api/v3/ping"
KLINES = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=10"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=["BTC/USDT"], seed=1, weight_limit=10**9) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        yield session


async def _ok(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as resp:
        assert resp.status == 200
        await resp.json()


async def test_5xx_with_non_json_body(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    sim.set_faults(error_rate=1.0)
    statuses = set()
    for _ in range(30):
        async with http.get(sim.rest_url + KLINES) as resp:
            statuses.add(resp.status)
            body = await resp.text()
            assert resp.content_type == "text/html"
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)
    assert statuses <= {502, 503, 504} and len(statuses) >= 2
    assert sim.stats()["faults"]["error"] == 30
    sim.set_faults()
    await _ok(http, sim.rest_url + KLINES)


async def test_connection_reset(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    sim.set_faults(reset_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(sim.rest_url + PING) as resp:
            await resp.read()
    assert sim.stats()["faults"]["reset"] >= 1
    sim.set_faults()
    await _ok(http, sim.rest_url + PING)


async def test_hang_until_client_timeout(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    sim.set_faults(hang_rate=1.0)
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(sim.rest_url + PING, timeout=aiohttp.ClientTimeout(total=0.3)) as resp:
            await resp.read()
    assert sim.stats()["faults"]["hang"] == 1
    sim.set_faults()
    await _ok(http, sim.rest_url + PING)


async def test_malformed_json(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    sim.set_faults(malformed_rate=1.0)
    async with http.get(sim.rest_url + KLINES) as resp:
        assert resp.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await resp.text())
    sim.set_faults()
    await _ok(http, sim.rest_url + KLINES)


async def test_latency_fixed_and_per_endpoint(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    sim.set_latency(300, endpoint="klines")
    started = time.perf_counter()
    await _ok(http, sim.rest_url + KLINES)
    assert time.perf_counter() - started >= 0.29
    sim.set_latency(0, endpoint="klines")
    sim.set_faults(error_rate=1.0, endpoint="/api/v3/klines")
    await _ok(http, sim.rest_url + PING)
    async with http.get(sim.rest_url + KLINES) as resp:
        assert resp.status >= 500
    sim.set_faults(endpoint="klines")
    await _ok(http, sim.rest_url + KLINES)


async def test_outage(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    sim.start_outage()
    for path in (PING, KLINES):
        async with http.get(sim.rest_url + path) as resp:
            assert resp.status == 503
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(sim.ws_url + "/ws/btcusdt@trade")
    sim.end_outage()
    await _ok(http, sim.rest_url + PING)
    sim.outage(0.2)
    async with http.get(sim.rest_url + PING) as resp:
        assert resp.status == 503
    await wait_for(lambda: not sim.in_outage(), what="the outage to end by itself")
    await _ok(http, sim.rest_url + PING)
    sim.schedule_outage(0.1, 1.0)
    await _ok(http, sim.rest_url + PING)
    await wait_for(sim.in_outage, what="the scheduled outage")
    async with http.get(sim.rest_url + PING) as resp:
        assert resp.status == 503
    await wait_for(lambda: not sim.in_outage(), what="the scheduled outage to end")
    await _ok(http, sim.rest_url + PING)
    assert sim.stats()["faults"]["outage"] == 5


async def test_errors_and_unknown_paths(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    cases = {
        "/api/v3/klines?symbol=NOPEUSDT&interval=1m": (400, -1121),
        "/api/v3/klines?symbol=btc$&interval=1m": (400, -1100),
        "/api/v3/klines?symbol=BTCUSDT&interval=7m": (400, -1120),
        "/api/v3/klines?symbol=BTCUSDT": (400, -1102),
        "/api/v3/klines?interval=1m": (400, -1102),
        "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=0": (400, -1130),
        "/api/v3/aggTrades?symbol=BTCUSDT&startTime=0&endTime=3600001": (400, -1127),
    }
    for path, (status, code) in cases.items():
        async with http.get(sim.rest_url + path) as resp:
            assert resp.status == status, path
            assert (await resp.json())["code"] == code, path
    async with http.get(sim.rest_url + "/api/v3/nothing") as resp:
        assert resp.status == 404
    async with http.get(sim.rest_url + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=5000") as resp:
        assert len(await resp.json()) == 1000


async def test_bad_settings_are_refused(sim: SimulatedExchange) -> None:
    with pytest.raises(UsageError):
        sim.set_faults(error_rate=-0.1)
    with pytest.raises(UsageError):
        sim.set_faults(hang_rate=1.5)
    with pytest.raises(UsageError):
        sim.set_latency(-1)
    with pytest.raises(UsageError):
        SimulatedExchange(symbols=["BTCUSDT"])


async def test_ccxt_sees_each_fault_as_its_error(sim: SimulatedExchange) -> None:
    """What the collectors get from ccxt (note: a malformed body raises nothing, it parses to junk)."""
    import ccxt.async_support as ccxt

    ex = ccxt.binance({**sim.ccxt_config(), "timeout": 300})
    try:
        await ex.load_markets()
        for kind, error in (
            ("error_rate", ccxt.ExchangeNotAvailable),
            ("reset_rate", ccxt.NetworkError),
            ("hang_rate", ccxt.RequestTimeout),
        ):
            sim.set_faults(**{kind: 1.0})
            with pytest.raises(error):
                await ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)
        sim.set_faults(malformed_rate=1.0)
        junk = await ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)
        assert any(c[1] is None for c in junk)
        sim.set_faults()
        sim.start_outage()
        with pytest.raises(ccxt.ExchangeNotAvailable):
            await ex.fetch_time()
        sim.end_outage()
        assert len(await ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)) == 5
    finally:
        await ex.close()


async def test_faults_configured_at_start(http: aiohttp.ClientSession) -> None:
    from data_collector.simulator import Faults

    async with SimulatedExchange(
        symbols=["BTC/USDT"], endpoint_faults={"/api/v3/klines": Faults(error_rate=1.0)}
    ) as sim:
        await _ok(http, sim.rest_url + PING)
        async with http.get(sim.rest_url + KLINES) as resp:
            assert resp.status in (502, 503, 504)
        sim.set_faults(endpoint="klines")
        await _ok(http, sim.rest_url + KLINES)


async def test_lifecycle_close_twice_and_use_after_close() -> None:
    from data_collector.errors import ClosedError

    sim = SimulatedExchange(symbols=["BTC/USDT"])
    await sim.close()  # never started: fine
    sim = SimulatedExchange(symbols=["BTC/USDT"])
    async with sim:
        assert await sim.start() is sim  # idempotent
        port = sim.port
        assert port > 0 and sim.rest_url.endswith(f":{port}")
    await sim.close()
    with pytest.raises(ClosedError):
        await sim.start()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/api/v3/ping")
