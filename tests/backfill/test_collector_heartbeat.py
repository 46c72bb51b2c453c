"""The collection script keeps the collector's heartbeat fresh, and the health check sees it."""

from __future__ import annotations

import io
import time
from typing import Any

import redis.asyncio as aioredis

from data_collector.backfill.report import CollectionReport
from data_collector.cli.collect import run_collection
from data_collector.config import load_config
from data_collector.health import check_heartbeats
from data_collector.heartbeat import read_heartbeat
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL


async def test_heartbeat_while_collecting_and_gone_after(base_config: dict[str, Any]) -> None:
    seen: dict[str, Any] = {}
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=3, gaps={}) as sim:
        config = load_config(
            {
                **base_config,
                "exchange": sim.exchange_config(),
                "symbols": ["SOL/USDT"],
                "timeframes": ["1h"],
                "start": "3d",
                "performance": {"api_rate_limit": 100_000},
            }
        )
        client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=2)
        try:

            async def during(collector: OptimizedDataCollector, report: CollectionReport) -> None:
                seen["beat"] = await read_heartbeat(client, config.redis.prefix, "collector")
                (seen["check"],) = await check_heartbeats(
                    config, client, "collector", int(time.time() * 1000)
                )

            code = await run_collection(config, stream=io.StringIO(), after=during)
            after = await read_heartbeat(client, config.redis.prefix, "collector")
        finally:
            await client.aclose()
    assert code == 0
    assert seen["beat"] is not None and seen["beat"]["component"] == "collector"
    assert seen["beat"]["ttl_s"] > 0
    assert seen["check"].status == "ok", seen["check"]
    assert after is None  # a clean stop removes the heartbeat instead of leaving it to go stale
