"""Issue 15, OKX: a restart of the streamer opens an exact gap by ``tradeId`` (the newest stored id
read back from Redis), repaired over ``history-trades`` into ``trade@repair``; the reader returns
every trade of the tape once, in id order."""

from __future__ import annotations

import pytest
import redis

from data_collector.simulator import OkxSettings, SimulatedExchange
from data_collector.streaming.reader import MarketDataReader
from tests.support.gapfree import all_repaired, okx_streamer_on
from tests.support.services import REDIS_URL
from tests.support.streaming import gap_entries, settle_quietly, wait_for

SYMBOL = "SOL/USDT"


def stored_count(client: redis.Redis, key: str) -> int:
    return int(client.xlen(key))  # type: ignore[arg-type]  # the sync client's answer


async def test_okx_restart_gap_is_exact_and_repaired(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{redis_prefix}:stream:sim-okx:trade:{SYMBOL}"
    async with SimulatedExchange(symbols=[SYMBOL], seed=3, gaps={}, okx=OkxSettings()) as sim:
        sim.okx.hub.ws_rate = 100
        async with okx_streamer_on(sim, redis_prefix, [SYMBOL], ["trade"]) as streamer:
            await wait_for(lambda: stored_count(client, key) >= 50, 30, "trades stored")
        stored = stored_count(client, key)
        sim.clock.advance(3000)  # the streamer is down for 3 s of the tape: about 300 trades
        async with okx_streamer_on(sim, redis_prefix, [SYMBOL], ["trade"]) as streamer:
            await wait_for(lambda: stored_count(client, key) > stored + 20, 30, "trades after the restart")
            await wait_for(lambda: all_repaired(client, redis_prefix, "sim-okx", "trade"), 60, "the repair")
            await settle_quietly(streamer, sim)
        end_ms = sim.clock.now_ms()
        markers = [m for m in gap_entries(client, redis_prefix, "sim-okx") if m.get("first_seq")]
        opened = [m for m in markers if m["reason"] == "restart"]
        assert len(opened) == 1, gap_entries(client, redis_prefix, "sim-okx")
        first, last = int(opened[0]["first_seq"]), int(opened[0]["last_seq"])
        assert last - first + 1 >= 250, "the 3 s the streamer was down"
        repaired = [m for m in markers if m["reason"] == "repaired"]
        assert [(int(m["first_seq"]), int(m["repaired"])) for m in repaired] == [(first, last - first + 1)]
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange="sim-okx") as reader:
            got = [e["id"] for e in await reader.range(SYMBOL, "trade", 0, end_ms)]
        truth = [int(t["tradeId"]) for t in sim.okx.venue.trades(SYMBOL, 0, end_ms + 1)]
        assert got == truth[truth.index(got[0]) :], "every trade of the tape once, in id order"
        assert first > got[0] and last < got[-1]
    client.close()


@pytest.mark.parametrize("refill", ["at_once", "next_run"])
async def test_okx_candle_closing_between_the_repair_and_the_subscription_is_fetched(
    redis_prefix: str, refill: str
) -> None:
    """A reconnect's kline repair runs when the socket opens, before OKX acts on ``op: subscribe``.
    A minute boundary in between closes a candle that neither the repair (its cutoff was before
    the close) nor the live feed (it starts at the next candle) carries: the first live candle
    shows the hole, and it is fetched into the companion stream.

    ``next_run``: the seam is marked (``late_subscription``) in the same write as the live candle
    that revealed it, so a run that never fills it (here REST answers 503 until it stops; in CI a
    SIGKILL came first) leaves it open in Redis, and the next run fetches it. Without the marker
    the live candle above the hole hid it from every later start."""
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{redis_prefix}:stream:sim-okx:kline_1m:{SYMBOL}"
    async with SimulatedExchange(symbols=[SYMBOL], seed=4, gaps={}, okx=OkxSettings()) as sim:
        hub, clock = sim.okx.hub, sim.clock
        async with okx_streamer_on(sim, redis_prefix, [SYMBOL], ["kline_1m"]) as streamer:
            assert await streamer.wait_connected()

            await wait_for(lambda: stored_count(client, key) > 0, 30, "the forming candle")
            start_ms = clock.now_ms()
            boundary = start_ms - start_ms % 60_000 + 60_000
            clock.advance(boundary - 5_000 - start_ms)  # 5 s before a minute closes
            hub.hold_subscribes()
            hub.drop_all()
            await wait_for(
                lambda: bool(hub.held_subscribes), 30, "the reconnect's subscribe (its repair done)"
            )
            clock.advance(6_000)  # the candle closes while OKX has not acted on the subscribe yet
            if refill == "next_run":
                sim.start_outage()  # REST answers 503 from here on (the WebSocket goes on)
            hub.release_subscribes()
            missed_open = boundary - 60_000

            def next_closed_live() -> bool:  # the candle after the missed one closes on the live feed
                clock.advance(2_000)
                return clock.now_ms() > boundary + 62_000

            await wait_for(next_closed_live, 30, "the next candle's close")
            if refill == "next_run":
                await wait_for(
                    lambda: streamer.get_metrics()["rest_errors"] >= 1, 60, "the seam's refill refused"
                )
                await wait_for(lambda: not streamer._service._seam_fills, 60, "the seam's refill given up")
                assert streamer.get_metrics()["repaired_klines"] == 0
            else:
                await wait_for(
                    lambda: streamer.get_metrics()["repaired_klines"] >= 1, 30, "the missed candle fetched"
                )
                await settle_quietly(streamer, sim)
        seams = [
            (int(m["from_ms"]), int(m["to_ms"]))
            for m in gap_entries(client, redis_prefix, "sim-okx")
            if m["reason"] == "late_subscription"
        ]
        assert seams == [(missed_open, boundary)], seams
        if refill == "next_run":
            sim.end_outage()
            async with okx_streamer_on(sim, redis_prefix, [SYMBOL], ["kline_1m"]) as streamer:
                assert await streamer.wait_connected()
                await wait_for(
                    lambda: streamer.get_metrics()["repaired_klines"] >= 1, 30, "the open seam fetched"
                )
                await settle_quietly(streamer, sim)
        end_ms = clock.now_ms()
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange="sim-okx") as reader:
            got = [e["open_ms"] for e in await reader.range(SYMBOL, "kline_1m", 0, 2**62) if e["closed"]]
        rows = sim.okx.venue.ohlcv(SYMBOL, "1m", start_ms - start_ms % 60_000, end_ms)
        want = sorted(int(r[0]) for r in rows if r[8] == "1")
        assert missed_open in want
        assert got == want, f"closed candles {got} != {want} (the one opening at {missed_open} is the seam)"
    client.close()
