"""Scheduled incremental collection (issue 17): a periodic job, one run per tick over 2 workers.

Two ``data-collector worker --incremental '* * * * * *'`` processes (a tick a second) on
127.0.0.2/.3 against the simulator in the test's process. The workers measure the simulator's
clock offset once, at start: the clock stands still LEAD_S before a 1m close while they start
(however long that takes) and runs on as if from the first worker's question, so every worker's
clock is a little behind the simulator's, never ahead. The test sees the series brought up to date
before that close, the new candle land after it, a tick in the same minute ask the exchange
nothing, and every tick run once.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from data_collector.config import load_config
from data_collector.distributed.incremental import TASK, _series, _series_of, plan_venues
from data_collector.distributed.jobs import TASK as BACKFILL_TASK
from data_collector.distributed.jobs import config_version
from data_collector.markets import HOUR_MS, MINUTE_MS, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.support import two_venues as two
from tests.support.backfill import config_for, local_iso, pg_rows, stored_equals_sim, write_config
from tests.support.distributed import ROOT, SYMBOLS, spawn, workers_ready
from tests.support.services import PG_ADMIN_DSN
from tests.support.waiting import wait_for, wait_for_async

#: Seconds between the workers' start (on the simulator's clock) and the next candle's close.
LEAD_S = 4


class _Queue:
    """Reads of the queue's tables (the engine's schema) for the test's conditions."""

    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self.conn, self.schema = conn, schema

    async def settled_after(self, at_s: float) -> bool:
        """A tick scheduled at or after ``at_s`` succeeded and no backfill job waits or runs."""
        row = await self.conn.fetchrow(
            f"""SELECT
                  count(*) FILTER (WHERE task_name = $1 AND status = 'succeeded'
                                   AND (args->>'timestamp')::bigint >= $3) AS ticks,
                  count(*) FILTER (WHERE task_name = $2 AND status IN ('todo', 'doing')) AS pending
                FROM "{self.schema}".procrastinate_jobs""",
            TASK,
            BACKFILL_TASK,
            int(at_s) + 1,
        )
        return bool(row["ticks"]) and not row["pending"]

    async def ticks_per_timestamp(self) -> list[int]:
        rows = await self.conn.fetch(
            f'SELECT count(*) AS n FROM "{self.schema}".procrastinate_jobs WHERE task_name = $1 '
            "GROUP BY args->>'timestamp'",
            TASK,
        )
        return [int(r["n"]) for r in rows]

    async def backfill_keys(self) -> list[str]:
        rows = await self.conn.fetch(
            f'SELECT queueing_lock FROM "{self.schema}".procrastinate_jobs WHERE task_name = $1',
            BACKFILL_TASK,
        )
        return [str(r["queueing_lock"]) for r in rows]


async def _stored_is(schema: str, n: int) -> bool:
    """``n`` candles stored (more is a failure at once: the series ran ahead of the clock)."""
    stored = len(await pg_rows(schema))
    assert stored <= n, f"{stored} candles stored, expected {n} at most"
    return stored == n


class _TimeAsked:
    """A condition: a worker asked the exchange's time; ``before_s``: the last moment none had."""

    def __init__(self, sim: SimulatedExchange) -> None:
        self.sim, self.before_s = sim, time.time()

    def __call__(self) -> bool:
        if self.sim.stats()["endpoints"].get("time", 0):
            return True
        self.before_s = time.time()
        return False


async def test_periodic_incremental_runs_once_per_tick_lands_new_candles_and_idles_free(
    base_config: dict[str, Any], queue_schema: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    async with SimulatedExchange(symbols=SYMBOLS, seed=17, gaps={}, latency_ms=5) as sim:
        boundary = candle_open_ms(sim.clock.now_ms(), "1m") + 2 * MINUTE_MS  # a candle's close to come
        start = boundary - 30 * MINUTE_MS
        # The clock stands LEAD_S before that close while the workers start (however long they take).
        sim.clock.freeze(boundary - LEAD_S * 1000)
        cfg = config_for(
            base_config, sim, symbols=SYMBOLS, timeframes=["1m"], start=local_iso(start), end=None
        )
        path = write_config(tmp_path / "config.yaml", cfg)
        schema = cfg["database"]["schema"]
        readies = [
            spawn(procs, path, queue_schema, f"127.0.0.{i}", "--incremental", "* * * * * *")[1]
            for i in (2, 3)
        ]
        time_asked = _TimeAsked(sim)
        await wait_for(time_asked, 60, "a worker to ask the exchange's time")
        await workers_ready(readies)
        # The clock runs again as if from the first worker's question (0.2 s more): no worker's clock
        # is ahead of the simulator's.
        elapsed_ms = int((time.time() - time_asked.before_s) * 1000)
        sim.clock.freeze(boundary - LEAD_S * 1000 + elapsed_ms + 200)
        sim.clock.unfreeze()
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            queue = _Queue(conn, queue_schema)
            # The first ticks bring both series up to the candle forming now: 29 closed candles each.
            await wait_for_async(lambda: _stored_is(schema, 2 * 29), 30, "the series brought up to date")
            assert sim.clock.now_ms() < boundary, "the workers took longer than LEAD_S to catch up"
            # The clock passes the close: a tick after it brings the new candle of each symbol.
            await wait_for_async(lambda: _stored_is(schema, 2 * 30), 30, "the new candles")
            # A tick in the same minute: nothing new, not one request.
            asked = sim.stats()["requests"]
            later_s = time.time()
            await wait_for_async(lambda: queue.settled_after(later_s), 30, "another tick")
            assert sim.clock.now_ms() < boundary + MINUTE_MS
            assert sim.stats()["requests"] == asked
            # Each tick ran once, though both workers defer every tick; no window was queued twice.
            per_tick = await queue.ticks_per_timestamp()
            assert len(per_tick) >= 3 and set(per_tick) == {1}, per_tick
            keys = await queue.backfill_keys()
            assert keys and len(keys) == len(set(keys)), keys
            assert all(p.poll() is None for p in procs)
        finally:
            await conn.close()
        rows = await pg_rows(schema)
        assert len(rows) == len(set(rows)) == 2 * 30
        async with OptimizedDataCollector(cfg) as collector:
            await stored_equals_sim(collector, sim, start, boundary, SYMBOLS, ["1m"])


def test_bad_cron_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "data_collector.cli.main", "worker", "--incremental", "every 5 minutes"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "--incremental 'every 5 minutes' is not a cron expression" in done.stderr


def test_series_of_a_tick_skip_what_a_market_lacks(base_config: dict[str, Any]) -> None:
    types = ["ohlcv", "funding_rates", "open_interest", "trades"]
    config = load_config({**base_config, "timeframes": ["1m", "5m"], "data_types": types})
    assert _series(config, "BTC/USDT") == [("ohlcv", "1m"), ("ohlcv", "5m"), ("trades", "-")]
    assert _series(config, "BTC/USDT:USDT") == [
        ("ohlcv", "1m"), ("ohlcv", "5m"), ("funding_rates", "-"), ("open_interest", "5m"), ("trades", "-"),
    ]  # fmt: skip


async def test_a_tick_plans_every_venue_under_its_label_then_nothing_once_collected(
    base_config: dict[str, Any],
) -> None:
    """With ``venues:`` a tick plans every venue's series under its own label and the whole
    config's version (as the producer does); once they are collected it plans nothing, and a
    series with a job waiting is left to it."""
    settings = OkxSettings(swaps=["BTC/USDT"])
    async with SimulatedExchange(
        symbols=["BTC/USDT"], perpetuals=["BTC/USDT:USDT"], seed=9, gaps={}, okx=settings
    ) as sim:
        sim.clock.freeze()  # no candle closes between the collection and the next tick
        now = sim.clock.now_ms()
        cfg = two.venues_config(base_config, [two.binance_venue(sim), two.okx_venue(sim)], timeframes=["1h"])
        cfg["start"] = local_iso(now - 5 * HOUR_MS)
        config = load_config(cfg)
        async with contextlib.AsyncExitStack() as stack:
            venues = [
                (venue, await stack.enter_async_context(OptimizedDataCollector(venue)))
                for _, venue in config.venue_configs()
            ]
            jobs = await plan_venues(venues, config, "inc-1", 1, set())
            assert {(j.venue, j.symbol) for j in jobs} == {
                ("sim-binance", "BTC/USDT"),
                ("sim-binanceusdm", "BTC/USDT:USDT"),
                ("sim-okx", "BTC/USDT"),
                ("sim-okx", "BTC/USDT:USDT"),
            }
            assert {j.config_version for j in jobs} == {config_version(config)}
            busy = {_series_of(jobs[0].key)}
            assert {j.key for j in await plan_venues(venues, config, "inc-2", 1, busy)} == {
                j.key for j in jobs[1:]
            }
            for _, collector in venues:
                await collector.collect()
            requests = (two.candle_requests(sim), two.binance_candle_requests(sim))
            assert await plan_venues(venues, config, "inc-3", 1, set()) == []
            assert (two.candle_requests(sim), two.binance_candle_requests(sim)) == requests
