"""Scenario 5, soak: streaming at 5,000 msg/s into Redis alongside a backfill into PostgreSQL.

CI runs 20 s, ``--long`` 60 s (600 s with ``DC_CHAOS_SOAK_S``). After a warm-up (the first
third), RSS must grow by less than 10%, and neither open file descriptors nor asyncio tasks may
grow. Every message the simulator sent reaches Redis (or is counted as dropped), none twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgpack
import psutil
import pytest
import redis.asyncio as aioredis

from tests.chaos.report import ScenarioReport
from tests.support.services import PG_URL, REDIS_URL
from tests.support.waiting import wait_for_async

simulator = pytest.importorskip("data_collector.simulator")
streamer_mod = pytest.importorskip("data_collector.optimized_websocket")
collector_mod = pytest.importorskip("data_collector.optimized_collector")

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT"]
#: trade + bookTicker on 5 symbols at 500 msg/s each: 5,000 msg/s.
RATE = 500.0
DAY_MS = 86_400_000


async def _trade_ids(client: aioredis.Redis, key: str) -> list[int]:
    ids: list[int] = []
    last = "-"
    while True:
        rows = await client.xrange(key, min=last, max="+", count=10_000)
        if last != "-":
            rows = rows[1:]
        if not rows:
            return ids
        ids.extend(int(msgpack.unpackb(f[b"d"])["id"]) for _, f in rows)
        last = rows[-1][0].decode()


def _streamer_tasks(streamer: Any) -> int:
    """asyncio tasks on the streamer's own loop (counted there, thread-safely)."""
    loop = getattr(streamer, "_loop", None)
    if loop is None or loop.is_closed():
        return 0

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(10)


def _tasks(streamer: Any) -> int:
    """asyncio tasks on this loop plus on the streamer's own loop."""
    return len(asyncio.all_tasks()) + _streamer_tasks(streamer)


@pytest.mark.timeout(1500)  # the --long form runs for minutes
async def test_soak_streaming_alongside_backfill(
    pg_schema: str, redis_prefix: str, scenario_report: ScenarioReport, long_run: bool
) -> None:
    report = scenario_report
    duration_s = float(os.environ.get("DC_CHAOS_SOAK_S", 60 if long_run else 20))
    me = psutil.Process()
    samples: list[tuple[float, int, int, int]] = []  # (t, rss, fds, tasks)
    rates: list[int] = []  # messages written so far, once a second
    end_ms = (int(time.time() * 1000) // DAY_MS - 1) * DAY_MS

    async with simulator.SimulatedExchange(symbols=SYMBOLS, seed=9, ws_rate=RATE) as sim:
        config: dict[str, Any] = {
            "exchange": sim.exchange_config(),
            "symbols": SYMBOLS,
            "timeframes": ["1m"],
            "database": {"url": PG_URL, "schema": pg_schema},
            "redis": {"url": REDIS_URL, "prefix": redis_prefix},
            "streaming": {"channels": ["trade", "bookTicker"]},
            # The backfill is capped at 10 requests/s (~10k candles/s): the PostgreSQL is shared.
            "performance": {
                "ws_batch_size": 500,
                "concurrent_symbols": 2,
                "db_pool_size": 4,
                "api_rate_limit": 600,
                # The HTTP pool grows to requests_in_flight connections at the first burst that
                # needs them, which may come after the warm-up: bounded, not a leak. These are the
                # bounds the fd and task limits below were set with.
                "requests_in_flight": 16,
                "pages_in_flight": 12,
                "pages_in_flight_per_pair": 8,
            },
            "logging": {"file": None},
        }
        streamer = streamer_mod.OptimizedWebSocketStreamer(config=config, store_candles=False)
        collector = collector_mod.OptimizedDataCollector(config)
        await collector.initialize()
        backfill_runs = 0
        rows_written = 0
        stopping = False

        async def backfill_forever() -> None:
            # A new (older) 60-day range each round, so the backfill never runs out of work.
            nonlocal backfill_runs, rows_written
            round_end = end_ms
            while not stopping:
                result = await collector.collect(start=round_end - 60 * DAY_MS, end=round_end)
                backfill_runs += 1
                rows_written += result.rows_written
                round_end -= 60 * DAY_MS

        # The streamer runs as a script would run it: start() from outside an event loop puts it
        # on a thread and loop of its own (uvloop), beside the simulator and the backfill here.
        await asyncio.to_thread(streamer.start)
        try:
            assert await streamer.wait_connected(15)
            # The baseline of tasks and descriptors is taken once the streamer is past its start:
            # every stream has been written to Redis.
            probe = aioredis.Redis.from_url(REDIS_URL)

            async def every_stream_written() -> bool:
                keys = [
                    f"{redis_prefix}:stream:sim-binance:{c}:{s}"
                    for c in ("trade", "bookTicker")
                    for s in SYMBOLS
                ]
                return all([await probe.xlen(k) for k in keys])

            await wait_for_async(every_stream_written, timeout_s=30, what="every stream written")
            await probe.aclose()
            tasks_before = _tasks(streamer)
            fds_before = me.num_fds()
            backfill = asyncio.create_task(backfill_forever())
            started = time.monotonic()
            written_at_start = streamer.get_metrics()["written"]
            written_in_window = 0
            try:
                while (elapsed := time.monotonic() - started) < duration_s:
                    await asyncio.sleep(1.0)
                    assert not backfill.done(), backfill.exception()
                    # Growth is judged on the streamer's loop: the backfill's tasks on this loop
                    # rise and fall with its rounds; they are checked as leaks once it has stopped.
                    samples.append((elapsed, me.memory_info().rss, me.num_fds(), _streamer_tasks(streamer)))
                    rates.append(streamer.get_metrics()["written"])
                    report.rss.sample()
                written_in_window = streamer.get_metrics()["written"] - written_at_start
            finally:
                stopping = True
                collector.request_stop()
                try:
                    await asyncio.wait_for(backfill, 30)
                except (asyncio.CancelledError, TimeoutError):
                    pass
                except Exception as exc:  # noqa: BLE001 - reported below
                    report.extra["backfill_error"] = type(exc).__name__
                await collector.close()
            tasks_after = _tasks(streamer)
            fds_after = me.num_fds()
            # Quiesce the simulator first, so no message is in flight when the streamer stops: its
            # market goes on through a stall, so stop its clock (nothing is due any more).
            sim.clock.freeze()
            produced = -1
            for _ in range(200):  # until the streamer has read everything sent (it may lag)
                # Streams a busy tick deferred are still built once after the freeze: wait for
                # the count to settle too.
                sent_now = sum(v["count"] for v in sim.ws_sent().values())
                if sent_now == produced and streamer.get_metrics()["received"] >= produced:
                    break
                produced = sent_now
                await asyncio.sleep(0.05)
            metrics_before_stop = streamer.get_metrics()
        finally:
            await streamer.astop()
        metrics = streamer.get_metrics()
        sent = sim.ws_sent()

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        found = dup = 0
        for symbol in SYMBOLS:
            ids = await _trade_ids(client, f"{redis_prefix}:stream:sim-binance:trade:{symbol}")
            found += len(set(ids))
            dup += len(ids) - len(set(ids))
        written_bt = sum(
            [await client.xlen(f"{redis_prefix}:stream:sim-binance:bookTicker:{s}") for s in SYMBOLS]
        )
    finally:
        await client.aclose()

    sent_total = sum(v["count"] for v in sent.values())
    per_s = [b - a for a, b in zip(rates, rates[1:], strict=False)]
    warm = [s for s in samples if s[0] >= duration_s / 3]
    rss0, fds0 = warm[0][1], warm[0][2]
    rss_growth = (max(s[1] for s in warm) - rss0) / rss0
    fd_growth = max(s[2] for s in warm) - fds0
    thirds = [
        sorted(s[3] for s in warm if lo <= s[0] < hi)
        for lo, hi in ((duration_s / 3, 2 * duration_s / 3), (2 * duration_s / 3, duration_s + 1))
    ]
    task_growth = thirds[1][len(thirds[1]) // 2] - thirds[0][len(thirds[0]) // 2]
    report.expected = sent_total
    report.found = metrics["written"]
    report.lost = max(0, sent_total - metrics["written"] - metrics["dropped"])
    report.duplicated = dup
    report.extra.update(
        duration_s=round(duration_s),
        msg_per_s=round(written_in_window / duration_s),
        dropped=metrics["dropped"],
        deduplicated=metrics["deduplicated"],
        trades_in_redis=found,
        book_tickers_in_redis=written_bt,
        backfill_rows=rows_written,
        backfill_rounds=backfill_runs,
        rss_growth_pct=round(rss_growth * 100, 1),
        fd_growth=fd_growth,
        task_growth=task_growth,
        tasks_leaked=tasks_after - tasks_before,
        fds_leaked=fds_after - fds_before,
        rss_mb=f"{rss0 / 2**20:.0f}->{warm[-1][1] / 2**20:.0f}",
        p99_ms=metrics_before_stop["latency_ms"]["event_to_redis"].get("p99"),
        min_msg_per_s=min(per_s[len(per_s) // 3 :], default=0),
        median_msg_per_s=sorted(per_s)[len(per_s) // 2] if per_s else 0,
    )
    assert dup == 0
    assert metrics["written"] + metrics["dropped"] == sent_total, "messages vanished without a count"
    assert rss_growth < 0.10, f"RSS grew {rss_growth:.1%} after warm-up"
    assert fd_growth <= 4, f"{fd_growth} more file descriptors after warm-up"
    assert task_growth <= 8, f"{task_growth} more asyncio tasks (median) after warm-up"
    assert tasks_after <= tasks_before, f"{tasks_after - tasks_before} asyncio tasks outlived the backfill"
    assert fds_after <= fds_before + 2, f"{fds_after - fds_before} file descriptors outlived the backfill"
    report.outcome = "ok"
