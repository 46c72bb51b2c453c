"""Issue 15, repair: the aggregate trades a sequence or reconnect gap names are fetched back over
REST and written with the entry ids they would have had (into the companion ``aggTrade@repair``
stream); ``MarketDataReader.range`` then returns every trade the simulator made exactly once, in
id order, equal to REST's, and each gap gets a ``repaired`` marker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from data_collector.simulator import SimulatedExchange
from data_collector.streaming.reader import MarketDataReader
from tests.support.services import REDIS_URL
from tests.support.streaming import gap_entries, settle_quietly, streamer_on, wait_for

SPOT = ["BTC/USDT", "SOL/USDT"]
PERPS = ["BTC/USDT:USDT", "SOL/USDT:USDT"]


def _symbols_and_venue(futures: bool) -> tuple[list[str], str]:
    return (PERPS, "sim-binanceusdm") if futures else (SPOT, "sim-binance")


def _exchange(futures: bool, seed: int) -> SimulatedExchange:
    """The simulator, with the perpetuals when ``futures``: 20 trades a second a stream."""
    return SimulatedExchange(symbols=SPOT, perpetuals=PERPS if futures else (), seed=seed, ws_rate=20)


def _open_and_repaired(client: redis.Redis, prefix: str, venue: str) -> tuple[int, int]:
    markers = gap_entries(client, prefix, venue)
    opened = sum(1 for m in markers if m.get("first_seq") is not None and m["reason"] != "repaired")
    return opened, sum(1 for m in markers if m["reason"] == "repaired")


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
async def test_lost_aggregate_trades_are_fetched_back_exactly_once(redis_prefix: str, futures: bool) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    symbols, venue = _symbols_and_venue(futures)
    async with _exchange(futures, seed=33) as sim:
        async with streamer_on(sim, redis_prefix, symbols, ["aggTrade"], futures) as streamer:
            assert await streamer.wait_connected()

            def stored(symbol: str) -> int:
                return int(client.xlen(f"{redis_prefix}:stream:{venue}:aggTrade:{symbol}"))

            def every_stream_written() -> bool:
                sim.clock.advance(2_000)  # the market's own pace is a trade or two a second
                return all(stored(s) for s in symbols)

            await wait_for(every_stream_written, what="every stream written")
            start_ms = sim.clock.now_ms() - 600_000
            # Frames lost in flight (a sequence gap each), then a drop while the market trades on.
            for symbol in symbols:
                sim.ws_faults.skip_trade_id(symbol, 3)
            sim.clock.advance(20_000)

            def gaps_opened() -> bool:
                # The skipped frames' gap opens on the next trade sent; a quiet symbol may have
                # spent the 20 s on the skipped ones alone, so the market goes on while we wait.
                sim.clock.advance(1_000)
                return _open_and_repaired(client, redis_prefix, venue)[0] >= 2

            await wait_for(gaps_opened, what="sequence gaps")
            sim.ws_drop_all()
            sim.clock.advance(20_000)
            await wait_for(lambda: streamer.get_metrics()["reconnects"] >= 1, what="a reconnect")
            counts = {s: stored(s) for s in symbols}

            def flowing() -> bool:
                sim.clock.advance(1_000)
                return all(stored(s) > counts[s] for s in symbols)

            await wait_for(flowing, what="trades flowing again")
            await wait_for(
                lambda: (lambda o, r: o >= 4 and r == o)(*_open_and_repaired(client, redis_prefix, venue)),
                timeout_s=60,
                what="every gap repaired",
            )
            await settle_quietly(streamer, sim)
            end_ms = sim.clock.now_ms()

    markers = gap_entries(client, redis_prefix, venue)
    repaired = [m for m in markers if m["reason"] == "repaired"]
    assert repaired and all(int(m["repaired"]) == int(m["count"]) for m in repaired), repaired
    async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=venue) as reader:
        for symbol in symbols:
            got = await reader.range(symbol, "aggTrade", start_ms, end_ms)
            ids = [e["id"] for e in got]
            assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: a trade is missing or twice"
            truth = {t["a"]: t for t in sim.agg_trades(symbol, start_ms, end_ms + 1)}
            assert all(
                float(truth[e["id"]]["p"]) == e["price"] and truth[e["id"]]["T"] == e["trade_ms"] for e in got
            )
            assert sum(1 for e in got if e.get("repaired")) >= 3 + 1
    client.close()


@pytest.mark.parametrize("futures", [False, True], ids=["spot", "usdm"])
async def test_lost_raw_trades_are_fetched_back_and_every_reader_method_merges_them(
    redis_prefix: str, futures: bool
) -> None:
    """``trade`` (raw trades, ``historicalTrades?fromId=``): skipped ids and a drop are repaired,
    and ``range``, ``last`` and a ``tail`` running through the faults each return every trade once,
    in id order, the repaired ones in their place."""
    client = redis.Redis.from_url(REDIS_URL)
    symbols, venue = _symbols_and_venue(futures)
    async with _exchange(futures, seed=34) as sim:
        async with (
            streamer_on(sim, redis_prefix, symbols, ["trade"], futures) as streamer,
            MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=venue) as reader,
        ):
            assert await streamer.wait_connected()

            def stored(symbol: str) -> int:
                return int(client.xlen(f"{redis_prefix}:stream:{venue}:trade:{symbol}"))

            await wait_for(lambda: all(stored(s) for s in symbols), what="every stream written")
            tailed: list[dict[str, Any]] = []

            async def tail() -> None:
                async for event in reader.tail(symbols[1], "trade", last_id="0", block_ms=100):
                    tailed.append(event)

            tail_task = asyncio.create_task(tail())
            for symbol in symbols:
                sim.ws_faults.skip_trade_id(symbol, 3)
            await wait_for(
                lambda: _open_and_repaired(client, redis_prefix, venue)[0] >= 2, what="sequence gaps"
            )
            sim.ws_drop_all()
            await wait_for(lambda: streamer.get_metrics()["reconnects"] >= 1, what="a reconnect")
            counts = {s: stored(s) for s in symbols}
            await wait_for(
                lambda: all(stored(s) > counts[s] + 20 for s in symbols), what="trades flowing again"
            )
            await wait_for(
                lambda: (lambda o, r: o >= 4 and r == o)(*_open_and_repaired(client, redis_prefix, venue)),
                timeout_s=60,
                what="every gap repaired",
            )
            await settle_quietly(streamer, sim)
            whole = await reader.range(symbols[1], "trade", 0, 2**62)
            await wait_for(lambda: len(tailed) >= len(whole), timeout_s=30, what="the tail caught up")
            tail_task.cancel()
            await asyncio.gather(tail_task, return_exceptions=True)
            last = await reader.last(symbols[1], "trade", len(whole) - 1)
            everything = {s: await reader.range(s, "trade", 0, 2**62) for s in symbols}

    markers = gap_entries(client, redis_prefix, venue)
    repaired = [m for m in markers if m["reason"] == "repaired"]
    assert repaired and all(int(m["repaired"]) == int(m["count"]) for m in repaired), repaired
    for symbol, got in everything.items():
        ids = [e["id"] for e in got]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: a trade is missing or twice"
        assert all(
            e["trade_ms"] == (sim.usdm.hub if futures else sim.hub).tape.time_of(e["id"]) for e in got
        ), symbol
        assert sum(1 for e in got if e.get("repaired")) >= 3 + 1
    ids = [e["id"] for e in everything[symbols[1]]]
    assert [e["id"] for e in last] == ids[1:], "last() missed, repeated or reordered a trade"
    assert [e["id"] for e in tailed] == ids, "the tail missed, repeated or reordered a trade"
    client.close()


async def test_a_restarted_streamer_repairs_the_gaps_its_predecessor_left_open(redis_prefix: str) -> None:
    """Gaps marked while REST failed are still open when the streamer stops (its repair queue is
    gone with it, as after SIGKILL); the next start reads them from the gaps stream and closes them."""
    client = redis.Redis.from_url(REDIS_URL)
    venue, symbol = "sim-binance", "SOL/USDT"
    async with SimulatedExchange(symbols=SPOT, seed=35, ws_rate=20) as sim:
        sim.set_faults(error_rate=1.0, endpoint="historicalTrades")  # every repair request fails
        async with streamer_on(sim, redis_prefix, [symbol], ["trade"]) as first:
            assert await first.wait_connected()
            await wait_for(
                lambda: client.xlen(f"{redis_prefix}:stream:{venue}:trade:{symbol}") > 0, what="trades"
            )
            sim.ws_faults.skip_trade_id(symbol, 5)
            await wait_for(
                lambda: _open_and_repaired(client, redis_prefix, venue)[0] >= 1, what="a sequence gap"
            )
        assert _open_and_repaired(client, redis_prefix, venue) == (1, 0), "the gap was repaired despite REST"
        sim.set_faults(error_rate=0.0, endpoint="historicalTrades")
        async with streamer_on(sim, redis_prefix, [symbol], ["trade"]) as second:
            assert await second.wait_connected()
            await wait_for(
                lambda: (lambda o, r: r == o)(*_open_and_repaired(client, redis_prefix, venue)),
                timeout_s=30,
                what="the predecessor's gap and the restart's repaired",
            )
            await settle_quietly(second, sim)
    async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=venue) as reader:
        ids = [e["id"] for e in await reader.range(symbol, "trade", 0, 2**62)]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a trade is missing or twice"
    client.close()
