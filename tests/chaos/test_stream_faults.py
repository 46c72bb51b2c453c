"""Scenario 2, streaming under faults: the simulator drops every connection every few seconds,
stalls (the watchdog must notice), sends malformed frames; the (private) Redis is paused for 5 s
(10 s with --long) and restarted.

Accounting is exact on the trade streams, whose ids are contiguous and a function of the
simulator's wall time (the market goes on while no one listens, a stall only delays delivery, a
consumer that falls too far behind is disconnected): every trade id between the first and the
last seen in Redis is either there exactly once, or lost inside a recorded gap marker's window
(a reconnect's, or an ``overflow`` one for what the buffer dropped while Redis was down).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import redis.asyncio as aioredis

from tests.chaos.report import ScenarioReport
from tests.chaos.servers import RestartableRedis
from tests.support.stream_accounting import account, gap_markers, trade_ids_and_times

simulator = pytest.importorskip("data_collector.simulator")
streamer_mod = pytest.importorskip("data_collector.optimized_websocket")

SYMBOLS = ["BTC/USDT", "ETH/USDT"]
CHANNELS = ["trade", "bookTicker", "kline_1m", "depth"]


@pytest.mark.timeout(900)  # the --long form runs for minutes
async def test_streaming_under_faults(
    restartable_redis: RestartableRedis, scenario_report: ScenarioReport, long_run: bool
) -> None:
    report = scenario_report
    rng = random.Random(3)
    duration_s = 22.0 if not long_run else 90.0
    pause_s = 5.0 if not long_run else 10.0
    prefix = "chaos"
    rate = 100.0  # trade and bookTicker messages per second per stream
    # Smaller than what a pause queues (4 streams x rate x pause_s + depth), so drops happen.
    buffer_max = int(4 * rate * pause_s * 0.6)

    async with simulator.SimulatedExchange(symbols=SYMBOLS, seed=5, ws_rate=rate) as sim:
        config = {
            "exchange": sim.exchange_config(),
            "symbols": SYMBOLS,
            "redis": {
                "url": restartable_redis.url,
                "prefix": prefix,
                "socket_timeout_s": 1,
                "connect_timeout_s": 1,
            },
            "streaming": {
                "channels": CHANNELS,
                "buffer_max": buffer_max,
                "watchdog_s": 2.0,
                "reconnect_min_backoff_s": 0.2,
                "reconnect_max_backoff_s": 2.0,
            },
            "logging": {"file": None},
        }
        streamer = streamer_mod.OptimizedWebSocketStreamer(config=config)
        async with streamer:
            assert await streamer.wait_connected(15)
            started = time.monotonic()

            async def at(offset_s: float) -> None:
                await asyncio.sleep(max(0.0, started + offset_s - time.monotonic()))

            events: list[tuple[float, str]] = []

            def mark(kind: str) -> None:
                events.append((round(time.monotonic() - started, 1), kind))
                report.fault(kind)

            # Faults spaced so that each one's effect is attributable (a frame is never injected
            # while the connection is down, a stall never overlaps a drop).
            plan: list[tuple[float, str]] = [
                (1.0, "malformed"),
                (2.0, "ws_drop"),
                (3.5, "malformed"),
                (5.0, "ws_drop"),
                (6.5, "ws_stall"),
                (11.0, "redis_pause"),
                (11.3, "malformed"),
                (14.0, "ws_drop"),
                (17.0 + (pause_s - 5), "redis_restart"),
                (19.0 + (pause_s - 5), "ws_drop"),
            ]
            if long_run:
                t = 25.0
                while t < duration_s - 10:
                    plan += [(t, "ws_drop"), (t + 1.5, "malformed")]
                    t += rng.uniform(3.0, 6.0)
                plan += [(40.0, "ws_stall"), (50.0, "redis_pause"), (70.0, "redis_restart")]
            plan.sort()
            pausing: asyncio.Task[None] | None = None

            async def pause_redis() -> None:
                restartable_redis.pause()
                try:
                    await asyncio.sleep(pause_s)
                finally:
                    restartable_redis.resume()

            for offset, action in plan:
                await at(offset)
                if action == "ws_drop":
                    if not sim.ws_drop_all():
                        continue
                elif action == "malformed":
                    delivered = sim.ws_connections()
                    sim.ws_malformed()
                    report.extra["malformed_delivered"] = (
                        report.extra.get("malformed_delivered", 0) + delivered
                    )
                elif action == "ws_stall":
                    sim.ws_stall(3.5)  # > watchdog_s: the watchdog must reconnect
                elif action == "redis_pause":
                    pausing = asyncio.create_task(pause_redis())
                elif action == "redis_restart":
                    if pausing is not None:
                        await pausing
                    await asyncio.to_thread(restartable_redis.restart, 0.5, keep_data=True)
                mark(action)
            if pausing is not None:
                await pausing
            if duration_s < plan[-1][0] + 3:
                duration_s = plan[-1][0] + 3
            await at(duration_s)
            # Let the writer catch up, then stop (which flushes).
            for _ in range(100):
                if streamer.get_metrics()["queue_depth"] == 0:
                    break
                await asyncio.sleep(0.1)
        metrics = streamer.get_metrics()
        sent = sim.ws_sent()

    client = aioredis.Redis.from_url(restartable_redis.url, socket_timeout=5)
    try:
        gaps = await gap_markers(client, f"{prefix}:gaps:sim-binance")
        found = dup = lost_in_gap = lost_outside = expected = 0
        for symbol in SYMBOLS:
            key = f"{prefix}:stream:sim-binance:trade:{symbol}"
            trades = await trade_ids_and_times(client, key)
            windows = [(int(g["from_ms"]), int(g["to_ms"])) for g in gaps if g["stream"] == key]
            f, d, g, o = account(trades, windows)
            found += f
            dup += d
            lost_in_gap += g
            lost_outside += o
            if trades:
                ids = [t for t, _ in trades]
                expected += max(ids) - min(ids) + 1
    finally:
        await client.aclose()

    report.expected = expected
    report.found = found
    report.lost = lost_in_gap + lost_outside
    report.duplicated = dup
    report.extra.update(
        lost_in_gaps=lost_in_gap,
        lost_unexplained=lost_outside,
        dropped=metrics["dropped"],
        gap_markers=len(gaps),
        reconnects=metrics["reconnects"],
        malformed=metrics["malformed"],
        redis_errors=metrics["redis_errors"],
        deduplicated=metrics["deduplicated"],
        received=metrics["received"],
        written=metrics["written"],
        sim_sent=sum(v["count"] for v in sent.values()),
        lost_per_reconnect=round((lost_in_gap) / max(1, metrics["reconnects"]), 1),
        rss_growth_mb=round((max(report.rss.series) - report.rss.series[0]) / 2**20),
    )
    # A fault is survived when the streamer came back from it (reconnected, resumed writing) and
    # what it lost is accounted for; checked as a whole below.
    ok = dup == 0 and lost_outside == 0 and metrics["written"] > 0
    report.faults_survived = report.faults_injected if ok else 0

    assert found > 0 and metrics["written"] > 0
    assert dup == 0, "a trade was written twice"
    drops_and_stalls = report.extra.get("f_ws_drop", 0) + report.extra.get("f_ws_stall", 0)
    assert metrics["reconnects"] >= drops_and_stalls, "a dropped or silent connection was not reconnected"
    assert metrics["malformed"] == report.extra["malformed_delivered"], "malformed frames were not counted"
    assert len(gaps) >= metrics["reconnects"], "a reconnect left no gap marker"
    # What the full buffer dropped is marked too (``overflow`` markers): nothing is lost unmarked.
    assert lost_outside == 0, f"{lost_outside} trades lost outside any gap window"
    assert (
        metrics["dropped"]
        <= buffer_max * (report.extra["f_redis_pause"] + report.extra["f_redis_restart"]) + 1000
    )
    assert max(report.rss.series) - report.rss.series[0] < 200 * 2**20, "RSS grew without bound"
    report.outcome = "ok"
