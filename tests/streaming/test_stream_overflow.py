"""Issue 11, defect 3: a buffer overflow while Redis is down leaves exact gap markers.

The real streamer reads the simulator's trade streams into a private Redis that is paused
(SIGSTOP) until the buffer has overflowed, then resumed. Checked against the simulator's truth
(its trade ids are contiguous per stream): every trade it sent is in its Redis stream exactly
once or inside exactly one ``overflow`` marker of that stream, and each marker covers only
trades that are missing, so it is no wider than what was dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.redis.client import RedisEndpoint
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.server import VENUE_NAME
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.reader import MarketDataReader
from data_collector.streaming.writer import GapMarker, RedisWriter
from tests.support.services import REDIS_URL, PrivateRedis
from tests.support.streaming import entries, sent_by_stream, settle_quietly, stream_config, wait_for

SYMBOLS = ["BTC/USDT", "ETH/USDT"]


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _overflow_markers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    out = []
    for _, fields in client.xrange(f"{prefix}:gaps:{VENUE_NAME}"):
        marker = {k.decode(): v.decode() for k, v in fields.items()}
        assert marker["reason"] == "overflow", marker  # nothing else happened to the connections
        out.append(marker)
    return out


async def _run(prefix: str, private_redis: PrivateRedis, *, buffer_max: int, overflow_by: int) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    async with SimulatedExchange(symbols=SYMBOLS, seed=21, ws_rate=400) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=SYMBOLS,
            redis_client=private_redis.url,
            channels=["trade"],
            config=stream_config(sim, prefix, private_redis.url, watchdog_s=30.0, buffer_max=buffer_max),
        )
        async with streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: streamer.get_metrics()["written"] > 100, what="entries before the pause")
            private_redis.pause()
            try:
                # While paused, only the streamer's own counters are read (Redis would block).
                # Past the socket timeout the write in flight goes unanswered: its entries are
                # sent again, or dropped as unconfirmed (some of them did land, some may not).
                await wait_for(
                    lambda: (
                        streamer.get_metrics()["dropped"] >= overflow_by
                        and streamer.get_metrics()["unconfirmed"] > 0
                    ),
                    timeout_s=30,
                    what="the buffer to overflow",
                )
            finally:
                private_redis.resume()
            await wait_for(
                lambda: client.xlen(f"{prefix}:gaps:{VENUE_NAME}") > 0, what="the overflow markers"
            )
            await settle_quietly(streamer, sim)
        metrics = streamer.get_metrics()

    markers = _overflow_markers(client, prefix)
    missing_total = 0
    for (channel, symbol), sent in sent_by_stream(sim, SYMBOLS).items():
        assert channel == "trade"
        key = f"{prefix}:stream:{VENUE_NAME}:trade:{symbol}"
        truth = range(sent["last_id"] - sent["count"] + 1, sent["last_id"] + 1)
        stored = [_id(i) for i, _ in entries(client, key)]
        stored_ids = [seq for _, seq in stored]
        assert len(stored_ids) == len(set(stored_ids)), "a trade was written twice"
        assert set(stored_ids) <= set(truth)
        mine = [m for m in markers if m["stream"] == key]
        spans = []
        for m in mine:
            assert (m["channel"], m["symbol"]) == ("trade", symbol)
            first, last = _id(m["first_id"]), _id(m["last_id"])
            # A trade's entry id is <trade ms>-<trade id>: the marker names the dropped ids, and
            # its window the dropped events' times (E), which run at or after their trade times.
            covered = range(first[1], last[1] + 1)
            assert int(m["count"]) == len(covered)
            assert first[0] <= int(m["from_ms"]) <= int(m["to_ms"]) and last[0] <= int(m["to_ms"])
            assert int(m["from_ms"]) - first[0] < 1000 and int(m["to_ms"]) - last[0] < 1000
            assert not set(covered) & set(stored_ids), f"{m} covers trades that are in Redis"
            spans.append(covered)
        for trade_id in truth:
            hits = sum(trade_id in span for span in spans)
            if trade_id in stored_ids:
                assert hits == 0
            else:
                assert hits == 1, f"trade {trade_id} of {symbol} is missing, covered by {hits} markers"
                missing_total += 1
    assert metrics["dropped"] >= overflow_by
    # What is missing is what the buffer dropped (never sent) plus, of what was sent without a
    # reply and then dropped, whatever did not land.
    assert metrics["dropped"] <= missing_total <= metrics["dropped"] + metrics["unconfirmed"]
    assert metrics["gaps"] == len(markers) > 0
    client.close()


async def test_buffer_overflow_is_covered_by_exact_gap_markers(
    redis_prefix: str, private_redis: PrivateRedis
) -> None:
    await _run(redis_prefix, private_redis, buffer_max=200, overflow_by=400)


@pytest.mark.slow
async def test_long_buffer_overflow_is_covered_by_exact_gap_markers(
    redis_prefix: str, private_redis: PrivateRedis
) -> None:
    await _run(redis_prefix, private_redis, buffer_max=2000, overflow_by=8000)


async def test_gap_markers_past_the_cap_are_merged_never_dropped(redis_prefix: str) -> None:
    metrics = StreamMetrics()
    gkey = f"{redis_prefix}:gaps:binance"
    writer = RedisWriter(
        RedisEndpoint.from_any(REDIS_URL),
        metrics,
        batch_size=10,
        batch_interval_s=0.01,
        buffer_max=2,
        gaps_key=gkey,
        stream_maxlen=1000,
    )
    submitted = [GapMarker("a", "trade", "A/USDT", 10 * i, 10 * i + 5, "reconnect") for i in range(1, 6)]
    submitted += [GapMarker("b", "trade", "B/USDT", 100, 200, "restart")]
    submitted += [GapMarker("b", "trade", "B/USDT", 300, 310, "overflow", "300-1", "310-4", 7)]
    for marker in submitted:
        writer.submit_gap(marker)
    task = asyncio.get_running_loop().create_task(writer.run())
    await writer.close(task, 5.0)
    async with MarketDataReader(REDIS_URL, prefix=redis_prefix) as reader:
        written = await reader.gaps()
    assert metrics.gaps == len(submitted) and metrics.dropped == 0
    # At most the cap, plus one per stream that had none waiting.
    assert [(g["stream"], g["from_ms"], g["to_ms"], g["reason"]) for g in written] == [
        ("a", 10, 15, "reconnect"),
        ("a", 20, 55, "reconnect"),
        ("b", 100, 310, "restart,overflow"),
    ]
    # A merge of a marker without entry ids has none: its bounds are the times only.
    assert "first_id" not in written[2] and "count" not in written[2]
    for marker in submitted:
        assert any(
            g["stream"] == marker.stream and g["from_ms"] <= marker.from_ms and marker.to_ms <= g["to_ms"]
            for g in written
        )
