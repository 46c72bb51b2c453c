"""WebSocket streams from a raw client: acks, payloads, kline closes, depth ids, faults (acceptance 2, 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from data_collector.markets import MINUTE_MS, TIMEFRAMES
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.tape import RateTape
from tests.support.waiting import wait_for


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=["BTC/USDT", "SOL/USDT"], seed=3, ws_rate=50) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _next(ws: aiohttp.ClientWebSocketResponse, wait_s: float = 5) -> Any:
    msg = await asyncio.wait_for(ws.receive(), wait_s)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_subscribe_ack_before_data_and_list(
    sim: SimulatedExchange, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(sim.ws_url + "/stream/ws/0") as ws:
        await ws.send_json(
            {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "solusdt@bookTicker"], "id": 7}
        )
        assert await _next(ws) == {"result": None, "id": 7}
        kinds = set()
        while len(kinds) < 2:
            data = await _next(ws)
            kinds.add(data.get("e", "bookTicker"))
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 8})
        while (data := await _next(ws)).get("id") != 8:
            pass
        assert data["result"] == ["btcusdt@trade", "solusdt@bookTicker"]
        await ws.send_json({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 9})
        while (data := await _next(ws)).get("id") != 9:
            pass
        await ws.send_json({"method": "SUBSCRIBE", "params": ["nope@trade"], "id": 10})
        while "id" not in (data := await _next(ws)):
            pass
        assert data["id"] == 10 and data["error"]["code"] == 2


async def test_raw_and_combined_payloads(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        trade = await _next(ws)
        assert list(trade) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
        assert trade["e"] == "trade" and trade["s"] == "BTCUSDT" and isinstance(trade["t"], int)
        assert float(trade["p"]) > 0 and abs(trade["E"] - sim.clock.now_ms()) < 5000
    streams = "solusdt@aggTrade/solusdt@miniTicker/solusdt@depth5@100ms/solusdt@kline_1m"
    async with http.ws_connect(sim.ws_url + "/stream?streams=" + streams) as ws:
        seen: dict[str, Any] = {}
        while len(seen) < 4:
            msg = await _next(ws)
            seen.setdefault(msg["stream"], msg["data"])  # the first of each: a forming kline
        assert seen["solusdt@aggTrade"]["e"] == "aggTrade"
        assert set(seen["solusdt@aggTrade"]) == {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}
        assert seen["solusdt@miniTicker"]["e"] == "24hrMiniTicker"
        assert len(seen["solusdt@depth5@100ms"]["bids"]) == 5
        k = seen["solusdt@kline_1m"]["k"]
        assert k["i"] == "1m" and k["x"] is False and k["T"] == k["t"] + MINUTE_MS - 1


async def test_closed_ws_kline_equals_rest(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    minute = (sim.clock.now_ms() // MINUTE_MS - 3) * MINUTE_MS
    sim.clock.freeze(minute + MINUTE_MS - 300)
    async with http.ws_connect(sim.ws_url + "/ws/btcusdt@kline_1m") as ws:
        first = await _next(ws)
        assert first["k"]["x"] is False and first["k"]["t"] == minute
        sim.clock.advance(400)
        closed = await _next(ws)
        while not closed["k"]["x"]:
            closed = await _next(ws)
    rest = sim.klines("BTC/USDT", "1m", minute, minute + 1)[0]
    k = closed["k"]
    assert [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"]] == rest[
        :11
    ]
    trades = sim.agg_trades("BTC/USDT", minute, minute + MINUTE_MS)
    assert (k["f"], k["L"]) == (trades[0]["a"], trades[-1]["a"])


async def test_depth_ids_contiguous_and_shared_with_rest(
    sim: SimulatedExchange, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(sim.ws_url + "/ws/btcusdt@depth@100ms") as ws:
        diffs = [await _next(ws) for _ in range(3)]
        async with http.get(sim.rest_url + "/api/v3/depth?symbol=BTCUSDT&limit=1000") as resp:
            snapshot = await resp.json()
        for _ in range(5):
            diffs.append(await _next(ws))
        sim.ws_skip_depth_id("BTC/USDT")
        for _ in range(3):
            diffs.append(await _next(ws))
    assert all(d["U"] <= d["u"] for d in diffs)
    breaks = [b["U"] - a["u"] for a, b in zip(diffs, diffs[1:], strict=False) if b["U"] != a["u"] + 1]
    assert breaks == [2]
    # The snapshot falls inside the diff sequence: some diff has U <= lastUpdateId + 1 <= u.
    assert any(d["U"] <= snapshot["lastUpdateId"] + 1 <= d["u"] for d in diffs)
    sent = sim.ws_sent()["btcusdt@depth@100ms"]
    assert sent["count"] >= len(diffs) and sent["last_id"] >= diffs[-1]["u"]


async def test_trade_ids_follow_wall_time_so_time_away_is_an_id_hole(
    sim: SimulatedExchange, http: aiohttp.ClientSession
) -> None:
    # The tape goes on with no one listening: after 1 s away, the ids a new connection sees start
    # about 50 (ws_rate) later, not where the last connection left off.
    async with http.ws_connect(sim.ws_url + "/ws/solusdt@trade") as ws:
        last = [await _next(ws) for _ in range(5)][-1]
    await wait_for(lambda: "solusdt@trade" not in sim.hub.streams, what="the stream unsubscribed")
    away_from = sim.clock.now_ms()
    await wait_for(lambda: sim.clock.now_ms() >= away_from + 1000, what="a second away")
    async with http.ws_connect(sim.ws_url + "/ws/solusdt@trade") as ws:
        first = await _next(ws)
    assert first["t"] - last["t"] >= 45
    # Each id has one time on the tape, E (when sent) runs after T, and ids carry the time.
    assert first["t"] == sim.hub.tape.count(first["T"]) - 1 and first["T"] <= first["E"]


async def test_a_consumer_that_falls_behind_is_disconnected(
    sim: SimulatedExchange, http: aiohttp.ClientSession
) -> None:
    sim.hub.max_backlog = 2000  # a few dozen frames
    async with http.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        assert await _next(ws)
        sim.ws_faults.stall(5.0)  # the frames queue, the backlog grows past the bound
        await wait_for(lambda: sim.hub.dropped_for_backlog == 1, what="the slow consumer cut off")
        msg = await asyncio.wait_for(ws.receive(), 5)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
    assert not sim.hub.connections


async def test_stream_order_varies_from_tick_to_tick(
    sim: SimulatedExchange, http: aiohttp.ClientSession
) -> None:
    names = ["btcusdt@trade", "solusdt@trade", "btcusdt@bookTicker", "solusdt@bookTicker"]
    orders = set()
    async with http.ws_connect(sim.ws_url + "/stream?streams=" + "/".join(names)) as ws:
        batch: list[str] = []
        for _ in range(400):
            name = (await _next(ws))["stream"]
            if batch and name != batch[-1] and name in batch:  # a new tick's first stream
                if len(batch) == len(names):
                    orders.add(tuple(batch))
                batch = []
            if not batch or name != batch[-1]:
                batch.append(name)
    assert len(orders) >= 2, orders


async def test_ws_sent_counts(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(sim.ws_url + "/ws/solusdt@trade") as ws:
        got = [await _next(ws) for _ in range(40)]
    # The server has dropped the closed connection's subscription: the stream produces no more.
    await wait_for(lambda: "solusdt@trade" not in sim.hub.streams, what="the stream unsubscribed")
    sent = sim.ws_sent()["solusdt@trade"]
    ids = [t["t"] for t in got]
    assert ids == list(range(ids[0], ids[0] + 40))
    assert sent["count"] >= 40 and sent["last_id"] == ids[0] + sent["count"] - 1
    sim.set_ws_rate(0)
    before = sim.ws_sent()["solusdt@trade"]["count"]
    async with http.ws_connect(sim.ws_url + "/ws/solusdt@trade") as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.3)
    assert sim.ws_sent()["solusdt@trade"]["count"] == before


async def test_ws_faults(sim: SimulatedExchange, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        seen = (await _next(ws))["t"]
        sim.ws_faults.malformed()
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            try:
                seen = json.loads(msg.data)["t"]
            except json.JSONDecodeError:
                break
        # A stall delays delivery, the market goes on: the trades of the stall arrive after it,
        # late (built during the stall, E before its end), and not one id is lost.
        sim.ws_faults.stall(2.0)
        stall_end = sim.hub.stalled_until_ms
        delayed = 0
        while True:
            data = await _next(ws, 5)
            assert data["t"] == seen + 1, "a stall lost or repeated a trade"
            assert data["T"] <= data["E"]
            seen = data["t"]
            if sim.clock.now_ms() >= stall_end:
                if data["E"] >= stall_end:
                    break
                delayed += 1
        assert delayed >= 50  # about 2 s at 50 a second
        assert sim.ws_drop_all() == 1
        msg = await asyncio.wait_for(ws.receive(), 5)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
    async with http.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        assert (await _next(ws))["e"] == "trade"
        assert sim.ws_shutdown_all() == 1
        while (data := await _next(ws)).get("e") == "trade":
            pass
        assert data["e"] == "serverShutdown"


async def test_lifetime_and_ping_timeout(http: aiohttp.ClientSession) -> None:
    async with SimulatedExchange(symbols=["BTC/USDT"], ws_max_lifetime_s=0.5, ws_ping_s=0.3) as sim:
        async with http.ws_connect(sim.ws_url + "/ws/btcusdt@bookTicker") as ws:
            events = []
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(msg.data).get("e"))
            assert events[-1] == "serverShutdown"
    # A client that never answers pings is dropped (no serverShutdown: not a planned close).
    async with SimulatedExchange(symbols=["BTC/USDT"], ws_ping_s=0.3) as sim:
        async with http.ws_connect(sim.ws_url + "/ws", autoping=False) as ws:
            kinds = []
            while True:
                msg = await asyncio.wait_for(ws.receive(), 5)
                kinds.append(msg.type)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            assert aiohttp.WSMsgType.PING in kinds and aiohttp.WSMsgType.TEXT not in kinds
        # One that does answer stays.
        async with http.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
            loop = asyncio.get_running_loop()
            until = loop.time() + 1.0
            while loop.time() < until:  # reading is what answers the pings
                assert (await _next(ws))["e"] == "trade"
            assert sim.ws_connections() == 1


async def test_control_message_limits(http: aiohttp.ClientSession) -> None:
    symbols = [f"C{i}/USDT" for i in range(50)]
    async with SimulatedExchange(symbols=symbols, ws_max_incoming_per_s=5) as sim:
        async with http.ws_connect(sim.ws_url + "/ws") as ws:
            for i in range(6):
                await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": i})
            msg = await asyncio.wait_for(ws.receive(), 5)
            while msg.type == aiohttp.WSMsgType.TEXT:
                msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert sim.hub.dropped_for_rate == 1
        kinds = ["trade", "aggTrade", "bookTicker", "miniTicker", "depth", "depth@100ms"]
        kinds += [f"kline_{tf}" for tf in TIMEFRAMES] + [f"depth{n}" for n in (5, 10, 20)]
        names = [f"c{i}usdt@{kind}" for i in range(50) for kind in kinds]
        assert len(names) > 1024
        async with http.ws_connect(sim.ws_url + "/ws") as ws:
            await ws.send_json({"method": "SUBSCRIBE", "params": names, "id": 1})
            reply = await _next(ws)
            assert reply["id"] == 1 and "1024" in reply["error"]["msg"]
            await ws.send_json({"method": "SUBSCRIBE", "params": names[:24], "id": 2})
            assert await _next(ws) == {"result": None, "id": 2}


async def test_ws_agg_trades_equal_rest_and_a_tick_over_budget_defers(
    sim: SimulatedExchange, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tick that runs over its budget leaves the streams it did not reach for the next tick:
    # with no budget at all each tick builds one stream, and still nothing is lost or repeated.
    monkeypatch.setattr("data_collector.simulator.streams.TICK_BUDGET_S", -1.0)
    start = (sim.clock.now_ms() // MINUTE_MS - 2) * MINUTE_MS - 1500
    sim.clock.freeze(start)
    names = ["btcusdt@aggTrade", "btcusdt@trade", "solusdt@trade", "solusdt@kline_1m"]
    got: dict[str, list[Any]] = {n: [] for n in names}
    async with http.ws_connect(sim.ws_url + "/stream?streams=" + "/".join(names)) as ws:
        for _ in range(8):  # across a minute boundary
            sim.clock.advance(400)
            await asyncio.sleep(0.05)
        end = sim.clock.now_ms()
        rest = sim.agg_trades("BTC/USDT", start + 1, end + 1)

        def delivered() -> bool:  # what the simulator says it sent has all arrived
            sent = sim.ws_sent()
            return len(got["btcusdt@aggTrade"]) >= len(rest) and all(
                len(got[n]) >= sent.get(n, {}).get("count", 0) for n in ("btcusdt@trade", "solusdt@trade")
            )

        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                msg = await _next(ws, 0.5)
            except TimeoutError:
                if delivered() or asyncio.get_running_loop().time() > deadline:
                    break
                continue
            got[msg["stream"]].append(msg["data"])
    assert rest and [t["a"] for t in got["btcusdt@aggTrade"]] == [t["a"] for t in rest]
    assert [(t["p"], t["q"], t["T"], t["m"]) for t in got["btcusdt@aggTrade"]] == [
        (t["p"], t["q"], t["T"], t["m"]) for t in rest
    ]
    sent = sim.ws_sent()
    for name in ("btcusdt@trade", "solusdt@trade"):
        ids = [t["t"] for t in got[name]]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert sent[name]["count"] == len(ids) and sent[name]["last_id"] == ids[-1]
    closed = [k["k"] for k in got["solusdt@kline_1m"] if k["k"]["x"]]
    assert len(closed) == 1
    k = closed[0]
    row = sim.klines("SOL/USDT", "1m", k["t"], k["t"] + 1)[0]
    assert [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["n"]] == [row[i] for i in (0, 1, 2, 3, 4, 5, 8)]


def test_rate_tape_ids_stay_contiguous_across_a_rate_change() -> None:
    tape = RateTape(0, 50.0)
    assert tape.count(1000) == 50 and tape.time_of(0) == 20 and tape.time_of(49) == 1000
    tape.set_rate(10.0, 1010)  # re-anchored where the count stood: no id is skipped or reused
    assert tape.count(1010) == 50 and tape.count(1110) == 51 and tape.time_of(50) == 1110
    assert tape.count(500) == 50  # before the anchor: no trade is taken back
    for t in range(1000, 3000, 7):  # each trade counted by t happened at or before t
        n = tape.count(t)
        assert tape.time_of(n - 1) <= t and (n == tape.count(t - 1) or tape.time_of(n - 1) == t)


async def test_recent_trades_serve_the_trade_streams_tape(
    sim: SimulatedExchange, http: aiohttp.ClientSession
) -> None:
    """With ``ws_rate`` set, REST ``trades`` (the newest trades), ``historicalTrades`` and the
    ``trade`` stream serve one tape: the same ids, times and prices."""
    async with http.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
        streamed = [await _next(ws) for _ in range(5)]
    sim.clock.freeze(sim.clock.now_ms())  # the two REST answers below see the same tape
    async with http.get(sim.rest_url + "/api/v3/trades", params={"symbol": "BTCUSDT", "limit": 50}) as r:
        recent = await r.json()
    first = recent[0]["id"]
    async with http.get(
        sim.rest_url + "/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "fromId": first, "limit": 50}
    ) as r:
        by_id = await r.json()
    assert recent == by_id
    assert [t["id"] for t in recent] == list(range(first, first + 50))
    assert recent[-1]["id"] == sim.hub.tape.count(sim.clock.now_ms()) - 1  # the newest trade is last
    older = {t["t"]: t for t in streamed}
    async with http.get(
        sim.rest_url + "/api/v3/historicalTrades",
        params={"symbol": "BTCUSDT", "fromId": streamed[0]["t"], "limit": 5},
    ) as r:
        rest_rows = await r.json()
    assert [row["id"] for row in rest_rows] == sorted(older)
    assert all(row["time"] == older[row["id"]]["T"] for row in rest_rows)
