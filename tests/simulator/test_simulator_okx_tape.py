"""Issue 15, the OKX simulator's market does not wait for its clients: at ``ws_rate`` its ``trades``
come from a tape that runs whether or not anyone listens, and REST serves the same trades by id;
a slow consumer is disconnected; the ``skip_trade_id`` fault leaves the trades on REST."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from data_collector.simulator import OkxSettings, SimulatedExchange
from data_collector.simulator.okx import ws as okx_ws
from tests.support.waiting import wait_for, wait_for_async


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=["BTC/USDT"], seed=7, gaps={}, okx=OkxSettings()) as s:
        s.okx.hub.ws_rate = 200
        yield s


async def _trades_socket(sim: SimulatedExchange, http: aiohttp.ClientSession) -> Any:
    ws = await http.ws_connect(sim.okx.ws_url + "/public")
    await ws.send_str(json.dumps({"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}))
    assert json.loads((await ws.receive(timeout=5)).data)["event"] == "subscribe"
    return ws


async def _read(ws: Any, n: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    while len(out) < n:
        out += json.loads((await ws.receive(timeout=5)).data)["data"]
    return out


async def _history(
    http: aiohttp.ClientSession, sim: SimulatedExchange, **params: Any
) -> list[dict[str, str]]:
    async with http.get(
        sim.okx_rest_url + "/api/v5/market/history-trades", params={"instId": "BTC-USDT", **params}
    ) as r:
        body = await r.json()
        assert r.status == 200 and body["code"] == "0", body
        data: list[dict[str, str]] = body["data"]
        return data


async def test_okx_tape_runs_unheard_and_rest_serves_what_the_socket_missed(sim: SimulatedExchange) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await _trades_socket(sim, http)
        first = await _read(ws, 50)
        await ws.close()
        ids = [int(t["tradeId"]) for t in first]
        assert ids == list(range(ids[0], ids[0] + len(ids))), "contiguous ids on one connection"
        # Nobody listens for a while (the pump has seen it): the tape goes on.
        await wait_for(lambda: "BTC-USDT" not in sim.okx.hub._trade_cursor, 5, "the pump to see no listener")
        sim.clock.advance(2000)
        ws = await _trades_socket(sim, http)
        second = await _read(ws, 5)
        await ws.close()
        resumed = int(second[0]["tradeId"])
        assert resumed > ids[-1] + 300, "the ids carried on while nobody was subscribed"
        # REST serves the hole (and what was sent) with the socket's ids and content.
        lo, hi = ids[0], resumed + 4
        got: list[dict[str, str]] = []
        cursor = lo
        while cursor <= hi:
            page = await _history(http, sim, type="1", before=cursor - 1, after=min(hi, cursor + 99) + 1)
            assert page, f"REST lacks ids from {cursor}"
            got += page[::-1]
            cursor = int(got[-1]["tradeId"]) + 1
        assert [int(t["tradeId"]) for t in got] == list(range(lo, hi + 1))
        by_id = {t["tradeId"]: t for t in got}
        for t in first + second:
            rest = by_id[t["tradeId"]]
            assert (t["px"], t["sz"], t["side"], t["ts"]) == (
                rest["px"],
                rest["sz"],
                rest["side"],
                rest["ts"],
            )
        # The truth function agrees with REST.
        truth = sim.okx.venue.trades("BTC/USDT", int(got[0]["ts"]), int(got[-1]["ts"]) + 1)
        assert {t["tradeId"] for t in got} <= {t["tradeId"] for t in truth}


async def test_okx_skipped_trade_ids_stay_on_rest(sim: SimulatedExchange) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await _trades_socket(sim, http)
        await _read(ws, 5)
        sim.okx.hub.skip_trade_id("BTC-USDT", 3)
        seen = [int(t["tradeId"]) for t in await _read(ws, 200)]
        await ws.close()
        holes = [(a, b) for a, b in zip(seen, seen[1:], strict=False) if b != a + 1]
        assert len(holes) == 1 and holes[0][1] - holes[0][0] == 4, holes
        missing = range(holes[0][0] + 1, holes[0][1])
        page = await _history(http, sim, type="1", before=missing[0] - 1, after=missing[-1] + 1)
        assert sorted(int(t["tradeId"]) for t in page) == list(missing)


async def test_okx_slow_consumer_is_disconnected(
    sim: SimulatedExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(okx_ws, "MAX_BACKLOG", 64 * 1024)
    sim.okx.hub.ws_rate = 5000
    async with aiohttp.ClientSession() as http:
        ws = await _trades_socket(sim, http)
        # Never read again: the backlog grows until the venue cuts the consumer off.
        await wait_for_async(lambda: _dropped(sim), timeout_s=30, what="the slow consumer disconnected")
        assert not sim.okx.hub.connections
        await ws.close()


async def _dropped(sim: SimulatedExchange) -> bool:
    sim.clock.advance(50)
    return sim.okx.hub.dropped_for_backlog > 0
