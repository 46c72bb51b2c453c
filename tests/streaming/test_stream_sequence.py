"""Issue 15, gap detection by sequence: trade and aggTrade ids are contiguous per symbol, so the
streamer checks continuity on every event, and a skipped id or a reconnect opens a gap marker
naming exactly the missing ids (``first_seq``..``last_seq``), from the last stored id to the next
received one. Checked against the simulator, whose tape goes on while the streamer is away.
"""

from __future__ import annotations

import redis

from data_collector.simulator import SimulatedExchange
from data_collector.simulator.server import VENUE_NAME
from tests.support.services import REDIS_URL
from tests.support.stream_accounting import account_by_id
from tests.support.streaming import entries, gap_entries, settle_quietly, streamer_on, wait_for

SYMBOLS = ["BTC/USDT", "SOL/USDT"]
CHANNELS = ["trade", "aggTrade"]


async def test_a_skipped_id_and_a_reconnect_are_marked_exactly_by_id(redis_prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    async with SimulatedExchange(symbols=SYMBOLS, seed=31, ws_rate=50) as sim:
        async with streamer_on(sim, redis_prefix, SYMBOLS, CHANNELS) as streamer:
            assert await streamer.wait_connected()

            def stored(channel: str, symbol: str) -> int:
                return int(client.xlen(f"{redis_prefix}:stream:{VENUE_NAME}:{channel}:{symbol}"))

            await wait_for(
                lambda: all(stored(c, s) for c in CHANNELS for s in SYMBOLS),
                timeout_s=60,
                what="every stream",
            )
            # An event lost in flight, within a connection: 3 trades and 2 aggregate trades.
            sim.ws_faults.skip_trade_id("SOL/USDT", 3)
            sim.ws_faults.skip_trade_id("BTC/USDT", 2)
            await wait_for(
                lambda: sum(m["reason"] == "sequence" for m in gap_entries(client, redis_prefix)) >= 4,
                timeout_s=60,
                what="a sequence gap on every stream",
            )
            sim.ws_drop_all()  # the tape goes on while the streamer reconnects: an id hole
            await wait_for(lambda: streamer.get_metrics()["reconnects"] >= 1, what="a reconnect")
            counts = {(c, s): stored(c, s) for c in CHANNELS for s in SYMBOLS}
            await wait_for(
                lambda: all(stored(*k) > n for k, n in counts.items()), timeout_s=60, what="flowing again"
            )
            await settle_quietly(streamer, sim)

    markers = gap_entries(client, redis_prefix)
    reasons = set()
    for channel in CHANNELS:
        for symbol in SYMBOLS:
            key = f"{redis_prefix}:stream:{VENUE_NAME}:{channel}:{symbol}"
            ids = [e["id"] for _, e in entries(client, key)]
            mine = [m for m in markers if m["stream"] == key]
            found, dup, unmarked, wrongly = account_by_id(ids, mine)
            assert dup == 0 and ids == sorted(ids)
            assert unmarked == 0 and wrongly == 0, (channel, symbol, unmarked, wrongly, mine)
            assert all(m.get("first_seq") is not None for m in mine), mine
            assert any(m["reason"] == "sequence" for m in mine), mine
            skipped = 3 if symbol == "SOL/USDT" else 2
            assert sum(int(m["count"]) for m in mine if m["reason"] == "sequence") == skipped
            reasons |= {m["reason"] for m in mine}
    # The trade tape moved on during the reconnect: its markers name the ids it missed.
    assert "reconnect" in reasons
    client.close()
