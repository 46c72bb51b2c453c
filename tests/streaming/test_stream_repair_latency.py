"""Repaired trades (old event times, written to a ``@repair`` companion stream) are not samples of
the live event->Redis latency; live entries written in the same round trip are."""

from __future__ import annotations

import asyncio
import time

import msgpack

from data_collector.redis.client import RedisEndpoint
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.writer import RedisWriter, StreamName, set_prefix, xadd_prefix
from tests.support.services import REDIS_URL


async def test_repaired_entries_are_not_live_latency_samples(redis_prefix: str) -> None:
    metrics = StreamMetrics()
    writer = RedisWriter(
        RedisEndpoint.from_any(REDIS_URL),
        metrics,
        batch_size=10,
        batch_interval_s=0.01,
        buffer_max=1000,
        gaps_key=f"{redis_prefix}:gaps:sim-okx",
        stream_maxlen=1000,
    )
    heads = {}
    for channel in ("trade", "trade@repair"):
        key = f"{redis_prefix}:stream:sim-okx:{channel}:BTC/USDT"
        heads[channel] = (xadd_prefix(key, 1000), set_prefix(f"{key}:latest"))
        writer.register_stream(heads[channel][0], StreamName(key, channel, "BTC/USDT"))
    now = time.time()
    now_ms = int(now * 1000)
    old_ms = now_ms - 60_000  # a trade repaired a minute after it happened
    for i in range(5):
        xadd, set_head = heads["trade@repair"]
        writer.submit((xadd, set_head, f"{old_ms}-{i}", msgpack.packb({"id": i}), old_ms, now))
    for i in range(5):
        xadd, set_head = heads["trade"]
        writer.submit((xadd, set_head, f"{now_ms}-{100 + i}", msgpack.packb({"id": 100 + i}), now_ms, now))
    task = asyncio.get_running_loop().create_task(writer.run())
    await writer.close(task, 5.0)
    assert metrics.written == 10
    assert len(metrics.event_latency_ms) == 5, "only the live entries are latency samples"
    assert max(metrics.event_latency_ms) < 30_000
    assert len(metrics.receive_latency_ms) == 10
