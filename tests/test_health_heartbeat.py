"""The heartbeat key: written with a TTL by a background task, read by the health check."""

from __future__ import annotations

import asyncio
import json
import os
import time

import redis.asyncio as aioredis

from data_collector.config import load_config
from data_collector.health import check_heartbeats, run_checks
from data_collector.heartbeat import Heartbeat, read_heartbeat
from data_collector.redis.keys import heartbeat_key
from tests.support.services import REDIS_URL, PrivateRedis
from tests.support.waiting import wait_for, wait_for_async
from utils.performance_monitor import PerformanceMonitor


async def test_heartbeat_refreshes_with_ttl_and_feeds_the_health_check(redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    monitor = PerformanceMonitor()
    config = load_config({"redis": {"url": REDIS_URL, "prefix": redis_prefix}, "logging": {"file": None}})
    skip = {"database", "exchange", "freshness", "disk"}
    try:
        async with Heartbeat(
            client,
            redis_prefix,
            "streamer",
            ttl_s=5,
            monitor=monitor,
            interval_s=0.05,
            extra=lambda: {"streams": 4},
        ) as beat:
            monitor.record_ws_message(latency_ms=2.0)
            await wait_for(lambda: beat.beats >= 3, what="three beats")
            raw = await client.get(heartbeat_key(redis_prefix, "streamer", beat.instance))
            data = json.loads(raw)
            assert data["component"] == "streamer" and data["pid"] == os.getpid() and data["streams"] == 4
            assert data["last_message_ms"] == monitor.last_message_ms
            assert 0 < await client.ttl(heartbeat_key(redis_prefix, "streamer", beat.instance)) <= 5
            read = await read_heartbeat(client, redis_prefix, "streamer")
            assert read is not None and read["ttl_s"] > 0
            report = await run_checks(config, skip=skip)
            status = {c.name: c.status for c in report.checks}
            assert status[f"heartbeat:streamer:{beat.instance}"] == "ok"
            assert status["heartbeat:collector"] == "warn"
            assert status["stream"] == "ok"  # from the heartbeat's last_message_ms
        assert await client.exists(heartbeat_key(redis_prefix, "streamer", beat.instance)) == 0
        assert await read_heartbeat(client, redis_prefix, "streamer") is None
        await beat.close()  # idempotent
    finally:
        await client.aclose()


async def test_heartbeat_expires_on_its_own(redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        beat = Heartbeat(client, redis_prefix, "collector", ttl_s=1)
        assert await beat.beat()
        assert await read_heartbeat(client, redis_prefix, "collector") is not None

        async def expired() -> bool:
            return await read_heartbeat(client, redis_prefix, "collector") is None

        # Nothing beats again and nothing deletes it: only Redis's 1 s TTL can remove it.
        await wait_for_async(expired, what="the heartbeat's TTL to expire")
    finally:
        await client.aclose()


async def test_heartbeat_survives_redis_outage(private_redis: PrivateRedis) -> None:
    client = aioredis.Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        beat = Heartbeat(client, "hb", "collector", ttl_s=3, interval_s=0.05)
        await beat.start()
        private_redis.pause()
        try:
            await asyncio.sleep(0.8)
            assert beat._task is not None and not beat._task.done()  # noqa: SLF001
        finally:
            private_redis.resume()
        before = beat.beats
        for _ in range(100):
            if beat.beats > before:
                break
            await asyncio.sleep(0.05)
        assert beat.beats > before
        await beat.close()
    finally:
        await client.aclose()


async def test_a_heartbeat_is_stale_after_two_missed_beats_by_redis_clock(redis_prefix: str) -> None:
    """Stale once two beats are missed, timed by the TTL Redis counts down (the key was set with
    ``heartbeat_ttl_s``), so a writer whose wall clock is an hour off is still judged right."""
    client = aioredis.Redis.from_url(REDIS_URL)
    config = load_config({"redis": {"url": REDIS_URL, "prefix": redis_prefix}, "logging": {"file": None}})
    now_ms = int(time.time() * 1000)
    beat = Heartbeat(client, redis_prefix, "streamer", ttl_s=60, instance="skewed")
    try:
        skewed = {**beat.payload(), "ts_ms": now_ms - 3_600_000}  # its host's clock: an hour behind
        key = heartbeat_key(redis_prefix, "streamer", "skewed")
        await client.set(key, json.dumps(skewed), ex=60)
        (row,) = await check_heartbeats(config, client, "streamer", now_ms)
        assert (row.name, row.status) == ("heartbeat:streamer:skewed", "ok"), row.line()
        # 45 s since the beat by Redis's clock (15 s of its 60 left): two beats of 20 s missed.
        await client.pexpire(key, 15_000)
        (row,) = await check_heartbeats(config, client, "streamer", now_ms)
        assert row.status == "warn" and row.detail.startswith("stale: no beat for 45s (one every 20s)"), (
            row.line()
        )
    finally:
        await beat.close()
        await client.aclose()
