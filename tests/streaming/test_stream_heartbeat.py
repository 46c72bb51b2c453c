"""The streamer's heartbeat, its /metrics endpoint and the PerformanceMonitor it feeds."""

from __future__ import annotations

import asyncio
import io
import re
import time
import urllib.request

import redis.asyncio as aioredis

from data_collector.cli.stream import run_stream_cli
from data_collector.config import load_config
from data_collector.health import check_heartbeats, check_stream
from data_collector.heartbeat import read_heartbeat
from data_collector.optimized_websocket import monitor_hook
from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL, PrivateRedis
from tests.support.streaming import stream_config, wait_for, wait_for_async
from utils.metrics import Metrics
from utils.performance_monitor import PerformanceMonitor


def test_the_monitor_gets_every_latency_of_a_batch() -> None:
    monitor = PerformanceMonitor()
    hook = monitor_hook(monitor)
    hook(100, [float(v) for v in range(1, 101)])
    hook(1, [500.0])
    ws = monitor.get_summary()["ws_messages"]
    # One sample per message: the median is the batch's, not its worst value.
    assert ws["count"] == 101 and ws["latency_ms"]["window"] == 101
    assert 50.0 <= ws["latency_ms"]["p50"] <= 52.0 and ws["latency_ms"]["max"] == 500.0


async def test_heartbeat_health_and_metrics_while_streaming(redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    monitor = PerformanceMonitor(metrics=Metrics())
    out = io.StringIO()
    stop = asyncio.Event()
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=12, ws_rate=50) as sim:
        config = {
            **stream_config(sim, redis_prefix, channels=["trade"]),
            "symbols": ["SOL/USDT"],
            "metrics": {"heartbeat_ttl_s": 3},
        }
        run = asyncio.create_task(
            run_stream_cli(
                config=config, status_interval_s=0, out=out, stop=stop, monitor=monitor, metrics_port=0
            )
        )
        try:
            beats: list[dict[str, object]] = []

            async def poll() -> None:
                beat = await read_heartbeat(client, redis_prefix, "streamer")
                if beat is not None and beat.get("last_write_ms"):
                    beats.append(beat)

            deadline = time.monotonic() + 10
            while not beats and time.monotonic() < deadline and not run.done():
                await poll()
                await asyncio.sleep(0.2)
            assert beats, f"no streamer heartbeat with a write: {out.getvalue()}"
            beat = beats[-1]
            assert beat["component"] == "streamer" and 0 < int(beat["ttl_s"]) <= 3  # type: ignore[call-overload]
            assert beat["last_message_ms"] and beat["written"]

            cfg = load_config(config)
            now_ms = int(time.time() * 1000)
            stream = await check_stream(cfg, client, now_ms)
            (heartbeat,) = await check_heartbeats(cfg, client, "streamer", now_ms)
            assert (stream.status, heartbeat.status) == ("ok", "ok"), (stream.line(), heartbeat.line())

            match = re.search(r"metrics at (\S+)", out.getvalue())
            assert match, out.getvalue()
            await wait_for(lambda: monitor.get_summary()["ws_messages"]["count"] > 0, what="monitor fed")
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(match[1], timeout=5).read().decode()
            )
            counted = re.search(r"^dc_ws_messages_total (\S+)$", body, re.M)
            assert counted and float(counted[1]) > 0
        finally:
            stop.set()
            metrics = await asyncio.wait_for(run, 30)
    # A clean stop removes the heartbeat, so it cannot look alive.
    assert await read_heartbeat(client, redis_prefix, "streamer") is None
    assert metrics["written"] > 0
    await client.aclose()


async def test_an_unreachable_redis_never_holds_the_heartbeat_or_the_stream_back(
    redis_prefix: str, private_redis: PrivateRedis
) -> None:
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    url = private_redis.url
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=13, ws_rate=50) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=["SOL/USDT"],
            redis_client=url,
            channels=["trade"],
            config={**stream_config(sim, redis_prefix, url), "metrics": {"heartbeat_ttl_s": 3}},
        )
        private_redis.pause()
        try:
            async with streamer:
                # The WebSocket side runs and buffers while Redis answers nothing.
                await wait_for(lambda: streamer.get_metrics()["received"] > 20, what="frames received")
                assert streamer.get_metrics()["written"] == 0
                private_redis.resume()
                await wait_for(lambda: streamer.get_metrics()["written"] > 20, what="written after resume")
                paused_client = aioredis.Redis.from_url(url)
                try:
                    await wait_for_async(
                        lambda: read_heartbeat(paused_client, redis_prefix, "streamer"), what="heartbeat"
                    )
                finally:
                    await paused_client.aclose()
        finally:
            private_redis.resume()
