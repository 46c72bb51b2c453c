"""A restarted streamer records its own downtime as a gap and repairs the klines it missed."""

from __future__ import annotations

import redis

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL, PrivateRedis
from tests.support.streaming import entries, settle_quietly, stream_config, wait_for

SYMBOL = "SOL/USDT"


def _gaps(client: redis.Redis, prefix: str) -> list[dict[str, str]]:
    """The gap markers, without the ``repaired`` ones that follow a trade gap's REST repair."""
    markers = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(f"{prefix}:gaps:sim-binance")
    ]
    return [m for m in markers if m["reason"] != "repaired"]


async def test_restart_marks_the_downtime_and_repairs_closed_klines(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    trade_key = f"{redis_prefix}:stream:sim-binance:trade:{SYMBOL}"
    kline_key = f"{redis_prefix}:stream:sim-binance:kline_1m:{SYMBOL}"
    async with SimulatedExchange(symbols=[SYMBOL], seed=11, ws_rate=50) as sim:

        def streamer() -> OptimizedWebSocketStreamer:
            return OptimizedWebSocketStreamer(
                symbols=[SYMBOL],
                redis_client=REDIS_URL,
                channels=["trade", "kline_1m"],
                config=stream_config(sim, redis_prefix, watchdog_s=30.0),
            )

        first = streamer()
        async with first:
            assert await first.wait_connected()
            await wait_for(lambda: client.xlen(trade_key) > 20 and client.xlen(kline_key) > 0, what="entries")
        # A fresh start over empty streams knows of no past: no gap.
        assert _gaps(client, redis_prefix) == []
        stored = entries(client, trade_key)
        last_stored_ms = stored[-1][1]["event_ms"]

        # The downtime hides three minutes of exchange time: candles close that no frame reports.
        sim.clock.advance(180_000)
        second = streamer()
        async with second:
            assert await second.wait_connected()
            await wait_for(
                lambda: {g["channel"] for g in _gaps(client, redis_prefix)} == {"trade", "kline_1m"},
                what="gap markers for both streams",
            )
            await wait_for(lambda: second.get_metrics()["repaired_klines"] >= 2, what="the kline repair")
            await settle_quietly(second, sim)

    gaps = {g["channel"]: g for g in _gaps(client, redis_prefix)}
    after = entries(client, trade_key)[len(stored) :]
    assert after, "the restarted streamer wrote no trade"
    trade_gap = gaps["trade"]
    assert trade_gap["reason"] == "restart" and trade_gap["stream"] == trade_key
    assert int(trade_gap["from_ms"]) == last_stored_ms
    assert int(trade_gap["to_ms"]) == after[0][1]["event_ms"]
    # Trade ids are contiguous: the marker names exactly the ids the downtime missed.
    assert int(trade_gap["first_seq"]) == stored[-1][1]["id"] + 1
    assert int(trade_gap["last_seq"]) == after[0][1]["id"] - 1
    assert int(gaps["kline_1m"]["from_ms"]) < int(gaps["kline_1m"]["to_ms"])

    closed = [e for _, e in entries(client, kline_key) if e["closed"]]
    opens = [k["open_ms"] for k in closed]
    assert len(opens) == len(set(opens)), "a closed candle was written twice"
    assert len(opens) >= 3 and opens == list(range(opens[0], opens[-1] + 1, 60_000)), "a candle is missing"
    assert any(k.get("repaired") for k in closed)
    trades = [e["id"] for _, e in entries(client, trade_key)]
    assert trades == sorted(set(trades))
    client.close()


async def test_restart_while_redis_is_down_marks_the_gap_once_redis_answers(
    redis_prefix: str, private_redis: PrivateRedis
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    trade_key = f"{redis_prefix}:stream:sim-binance:trade:{SYMBOL}"
    async with SimulatedExchange(symbols=[SYMBOL], seed=14, ws_rate=50) as sim:

        def streamer() -> OptimizedWebSocketStreamer:
            return OptimizedWebSocketStreamer(
                symbols=[SYMBOL],
                redis_client=private_redis.url,
                channels=["trade"],
                config=stream_config(sim, redis_prefix, private_redis.url, watchdog_s=30.0),
            )

        first = streamer()
        async with first:
            await wait_for(lambda: client.xlen(trade_key) > 20, what="entries")
        stored = entries(client, trade_key)
        # The market goes on: let it trade past what was stored, so the restart misses ids (a
        # restart quick enough to miss none would rightly mark no gap).
        await wait_for(
            lambda: sim.hub.tape.count(sim.clock.now_ms()) > stored[-1][1]["id"] + 5, what="trading on"
        )
        private_redis.pause()
        try:
            second = streamer()
            async with second:
                # Redis cannot tell the streamer where it left off; streaming goes on regardless.
                await wait_for(lambda: second.get_metrics()["received"] > 20, what="frames while paused")
                private_redis.resume()
                await wait_for(lambda: _gaps(client, redis_prefix) != [], what="the restart gap")
                await settle_quietly(second, sim)
        finally:
            private_redis.resume()
    (gap,) = _gaps(client, redis_prefix)
    after = entries(client, trade_key)[len(stored) :]
    assert gap["reason"] == "restart"
    assert int(gap["from_ms"]) == stored[-1][1]["event_ms"]
    assert int(gap["to_ms"]) == after[0][1]["event_ms"]
    assert (int(gap["first_seq"]), int(gap["last_seq"])) == (stored[-1][1]["id"] + 1, after[0][1]["id"] - 1)
    trades = [e["id"] for _, e in entries(client, trade_key)]
    assert trades == sorted(set(trades))
    client.close()
