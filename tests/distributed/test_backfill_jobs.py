"""Backfill as jobs (issue 17): worker processes on 127.0.0.2/.3/.4 against the per-IP simulator.

The simulator runs in the test's process; each worker is ``data-collector worker`` in its own
process, bound to its own loopback address; the producer is ``run_distributed`` here. Every
worker process is killed at the end, pass or fail.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from data_collector.config import load_config
from data_collector.distributed.engine import ensure_schema, make_app
from data_collector.distributed.jobs import cut_jobs
from data_collector.distributed.ledger import ensure_tables, failed_jobs, job_statuses
from data_collector.distributed.producer import enqueue, run_distributed, wait_done
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import (
    klines_requests,
    pg_rows,
    stored_equals_sim,
    write_config,
)
from tests.support.distributed import ROOT, SYMBOLS, TIMEFRAMES, engine, setup, spawn, workers_ready
from tests.support.services import PG_ADMIN_DSN
from tests.support.waiting import wait_for

#: The issue's size (acceptance 1): 10 symbols x 6 timeframes x 90 days, in jobs of 30 days.
ISSUE_SIZE = (
    ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT", "ADA/USDT", "DOGE/USDT", "DOT/USDT",
     "LTC/USDT", "TRX/USDT"],
    ["1m", "5m", "15m", "1h", "4h", "1d"], 90, 30,
)  # fmt: skip


@pytest.mark.parametrize(
    ("symbols", "timeframes", "days", "window_days"),
    [(SYMBOLS, TIMEFRAMES, 40, 10), pytest.param(*ISSUE_SIZE, marks=pytest.mark.slow)],
)
async def test_three_workers_collect_the_truth_then_a_rerun_asks_nothing(
    base_config: dict[str, Any],
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    symbols: list[str],
    timeframes: list[str],
    days: int,
    window_days: int,
) -> None:
    async with SimulatedExchange(symbols=symbols, seed=17, gaps={}, latency_ms=5) as sim:
        cfg, path, start, end = setup(base_config, sim, tmp_path, days, symbols, timeframes)
        readies = [spawn(procs, path, queue_schema, f"127.0.0.{i}")[1] for i in (2, 3, 4)]
        await workers_ready(readies)
        config = load_config(cfg)
        producer = run_distributed(config, engine(queue_schema), window_days=window_days)
        report = await asyncio.wait_for(producer, 900)
        assert not report.failed, report.summary()
        cut = cut_jobs(config, "x", symbols, timeframes, ["ohlcv"], start, end, window_days)
        assert report.jobs == len(cut) == len({j.key for j in cut})  # one job per window, none twice
        by_ip = sim.stats()["used_weight_1m_by_ip"]
        assert {"127.0.0.2", "127.0.0.3", "127.0.0.4"} <= set(by_ip), by_ip  # every host fetched
        assert report.total("http_429") == 0 and report.total("http_418") == 0
        async with OptimizedDataCollector(cfg) as collector:
            await stored_equals_sim(collector, sim, start, end, symbols, timeframes)
        rows = await pg_rows(cfg["database"]["schema"])
        assert len(rows) == len(set(rows))  # nothing duplicated
        before = klines_requests(sim)
        # The re-run through the command: every job runs again, and asks the exchange nothing.
        rerun = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "data_collector.cli.main", "collect", "--config", str(path), "--distributed",
            "--window-days", str(window_days), "--queue-schema", queue_schema,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(rerun.communicate(), 600)
        assert rerun.returncode == 0, err.decode()[-2000:]
        assert "total: 0 rows written, 0 requests, 0 x 429, 0 x 418" in out.decode(), out.decode()[-2000:]
        assert klines_requests(sim) == before
        assert await pg_rows(cfg["database"]["schema"]) == rows


async def test_a_run_reports_the_jobs_another_run_queued_first_with_their_own_requests(
    base_config: dict[str, Any],
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Run "a" queues every window first; run "b" asks for the same windows, gets a's jobs (one
    queueing lock a window) and waits for them: b's report counts them, rows and requests, as its
    own, and says another run queued them. Each job records its own requests (the calls made
    under it), so the report's total is exactly what the simulator served."""
    async with SimulatedExchange(symbols=SYMBOLS, seed=23, gaps={}, latency_ms=5) as sim:
        cfg, path, start, end = setup(base_config, sim, tmp_path, 20, SYMBOLS, TIMEFRAMES)
        config = load_config(cfg)
        app = make_app(engine(queue_schema))
        async with app.open_async():
            await ensure_schema(app, engine(queue_schema))
            await ensure_tables(app)
            first = await enqueue(app, cut_jobs(config, "a", SYMBOLS, TIMEFRAMES, ["ohlcv"], start, end, 10))
        before = klines_requests(sim)
        run_b = asyncio.create_task(run_distributed(config, engine(queue_schema), window_days=10))
        await workers_ready([spawn(procs, path, queue_schema, "127.0.0.2")[1]])
        report = await asyncio.wait_for(run_b, 300)
        assert not report.failed, report.summary()
        assert report.jobs == len(first) == report.shared, report.summary()
        assert "queued first by another run" in report.summary()
        total = sum(len(sim.klines(s, tf, start, end)) for s in SYMBOLS for tf in TIMEFRAMES)
        assert report.total("written") == total, report.summary()
        assert report.requests == klines_requests(sim) - before > 0, report.summary()
        async with OptimizedDataCollector(cfg) as collector:
            await stored_equals_sim(collector, sim, start, end, SYMBOLS, TIMEFRAMES)


async def test_sigkilled_worker_jobs_finish_elsewhere_identical_to_a_clean_run(
    base_config: dict[str, Any],
    sim: SimulatedExchange,
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # 1 request per second per address: the run lasts long enough to kill a worker in it.
    cfg, path, start, end = setup(
        base_config,
        sim,
        tmp_path,
        days=30,
        performance={"api_rate_limit": 60},
        exchange={"ohlcv_page_limit": 100},
    )
    spawned = [spawn(procs, path, queue_schema, f"127.0.0.{i}") for i in (2, 3, 4)]
    await workers_ready([r for _, r in spawned])
    config = load_config(cfg)
    # The weight the victim spent starting (markets, clock); more is a job's page request.
    started = sim.stats()["used_weight_1m_by_ip"]["127.0.0.2"]
    run = asyncio.create_task(run_distributed(config, engine(queue_schema), window_days=5))
    victim = spawned[0][0]
    try:
        await wait_for(
            lambda: sim.stats()["used_weight_1m_by_ip"]["127.0.0.2"] > started,
            60,
            "the victim to fetch a page",
        )
        victim.send_signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        victim.wait()
        report = await asyncio.wait_for(run, 120)
    finally:
        run.cancel()
    assert not report.failed, report.summary()
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        # The victim's jobs were put back by the stalled-job retry and finished by the others.
        retried_at = await conn.fetchval(
            f"SELECT min(at) FROM \"{queue_schema}\".procrastinate_events WHERE type = 'deferred_for_retry'"
        )
    finally:
        await conn.close()
    assert retried_at is not None and (retried_at - killed_at).total_seconds() < 30  # the issue's bound
    async with OptimizedDataCollector(cfg) as collector:
        await stored_equals_sim(collector, sim, start, end, SYMBOLS, TIMEFRAMES)
    rows = await pg_rows(cfg["database"]["schema"])
    assert len(rows) == len(set(rows))


async def test_bad_input_one_line_each_and_no_job_lost(
    base_config: dict[str, Any],
    sim: SimulatedExchange,
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Acceptance 5: an unreachable queue, another config version, a job for an unknown venue."""
    cfg, path, start, end = setup(base_config, sim, tmp_path, days=2)
    # An unreachable queue: one line, exit 1.
    down = subprocess.run(  # noqa: ASYNC221 - a short-lived process, nothing else runs
        [sys.executable, "-m", "data_collector.cli.main", "worker", "--config", str(path),
         "--queue", "postgresql://postgres@127.0.0.1:1/test"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 1
    assert down.stderr.strip().count("\n") == 0 and "job queue (PostgreSQL) is unreachable" in down.stderr
    # Jobs of this config wait (no worker yet); a worker of another config refuses in one line.
    config = load_config(cfg)
    app = make_app(engine(queue_schema))
    async with app.open_async():
        await ensure_schema(app, engine(queue_schema))
        await ensure_tables(app)
        good = cut_jobs(config, "r1", SYMBOLS[:1], ["1h"], ["ohlcv"], start, end, 10)
        bad = replace(good[0], venue="nowhere-exchange")
        ids = await enqueue(app, [*good, bad])
        other = write_config(
            tmp_path / "other.yaml", {**cfg, "exchange": {**cfg["exchange"], "name": "elsewhere"}}
        )
        refused = subprocess.run(  # noqa: ASYNC221
            [sys.executable, "-m", "data_collector.cli.main", "worker", "--config", str(other),
             "--queue-schema", queue_schema],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().count("\n") == 0 and "differs from the waiting jobs'" in refused.stderr
        # A worker of the right config runs the good job; the unknown venue's fails, stays visible.
        _, ready = spawn(procs, path, queue_schema, "127.0.0.2")
        await workers_ready([ready])
        await asyncio.wait_for(wait_done(app, ids), 60)
        statuses = await job_statuses(app, ids)
        failed = await failed_jobs(app, ids)
    assert statuses == {"succeeded": len(good), "failed": 1}
    assert [f["key"] for f in failed] == [bad.key]
    assert "unknown venue 'nowhere-exchange'" in str(failed[0]["error"])
    assert "Traceback" not in (tmp_path / "worker.0.log").read_text()
