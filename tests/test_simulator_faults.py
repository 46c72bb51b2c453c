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
    await asyncio.sleep(0.3)
    await _ok(http, sim.rest_url + PING)
    assert sim.stats()["faults"]["outage"] == 4


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
