"""Backfill as jobs with ``venues:`` (issue 17): Binance and OKX, each with its own markets, rate
limiter and label, cut into jobs keyed by (venue label, market, data type, timeframe, window) and
run by two ``data-collector worker`` processes (127.0.0.2, 127.0.0.3) that open the venue a job
names from their own config. Every worker process is killed at the end, pass or fail.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from data_collector.config import load_config
from data_collector.distributed.jobs import config_version
from data_collector.distributed.producer import plan_jobs, run_distributed
from data_collector.markets import DAY_MS, MINUTE_MS
from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.support import two_venues as two
from tests.support.backfill import RANGE_START_MS, local_iso, pg_rows, write_config
from tests.support.distributed import ROOT, engine, spawn, workers_ready

TIMEFRAMES = ["15m", "1h"]


async def test_two_workers_collect_both_venues_exactly_then_a_rerun_asks_nothing(
    base_config: dict[str, Any],
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    settings = OkxSettings(swaps=["BTC/USDT"])
    async with SimulatedExchange(
        symbols=["BTC/USDT", "ETH/USDT"], perpetuals=["BTC/USDT:USDT"], seed=7, gaps={}, okx=settings
    ) as sim:
        # Not on a window's or a page's edge; OKX pages 100 candles newest first, so 15m is 3 pages.
        start, end = RANGE_START_MS + 7 * MINUTE_MS, RANGE_START_MS + 3 * DAY_MS
        cfg = two.venues_config(
            base_config, [two.binance_venue(sim), two.okx_venue(sim)], timeframes=TIMEFRAMES
        )
        cfg["start"], cfg["end"] = local_iso(start), local_iso(end)
        path = write_config(tmp_path / "config.yaml", cfg)
        readies = [spawn(procs, path, queue_schema, f"127.0.0.{i}")[1] for i in (2, 3)]
        await workers_ready(readies)
        config = load_config(cfg)
        jobs = await plan_jobs(config, "plan", 1)
        # One job per (label, market, timeframe, window), three labels, none twice.
        assert {(j.venue, j.symbol) for j in jobs} == {
            ("sim-binance", "BTC/USDT"),
            ("sim-binanceusdm", "BTC/USDT:USDT"),
            ("sim-okx", "BTC/USDT"),
            ("sim-okx", "BTC/USDT:USDT"),
        }
        assert len({j.key for j in jobs}) == len(jobs) and {j.config_version for j in jobs} == {
            config_version(config)
        }
        report = await asyncio.wait_for(run_distributed(config, engine(queue_schema), window_days=1), 600)
        assert not report.failed, report.summary()
        assert report.jobs == len(jobs)
        assert report.total("http_429") == 0 and report.total("http_418") == 0
        assert len(report.workers) == 2, report.summary()  # both hosts took jobs
        assert await two.stored_rows(cfg["database"]["schema"]) == two.truth_rows(sim, TIMEFRAMES, start, end)
        rows = await pg_rows(cfg["database"]["schema"])
        assert len(rows) == len(set(rows))  # nothing twice
        okx_before, binance_before = two.candle_requests(sim), two.binance_candle_requests(sim)
        # The re-run through the command: every job runs again, and asks neither venue anything.
        rerun = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "data_collector.cli.main", "collect", "--config", str(path), "--distributed",
            "--window-days", "1", "--queue-schema", queue_schema,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(rerun.communicate(), 600)
        assert rerun.returncode == 0, err.decode()[-2000:]
        assert f"{len(jobs)} jobs, 0 not done" in out.decode(), out.decode()[-2000:]
        assert "total: 0 rows written, 0 requests, 0 x 429, 0 x 418" in out.decode(), out.decode()[-2000:]
        assert (two.candle_requests(sim), two.binance_candle_requests(sim)) == (okx_before, binance_before)
        assert await pg_rows(cfg["database"]["schema"]) == rows


def test_the_version_covers_the_venues(base_config: dict[str, Any]) -> None:
    """A worker whose venues differ from the producer's has another version (it is refused)."""
    sim_urls = {"api": {"rest": "http://127.0.0.1:1"}}
    okx = {"id": "okx", "name": "sim-okx", "urls": sim_urls, "symbols": ["BTC/USDT"]}
    binance = {"id": "binance", "name": "sim-binance", "symbols": ["BTC/USDT"]}
    one = load_config(two.venues_config(base_config, [binance, okx]))
    versions = {
        config_version(one),
        config_version(load_config(two.venues_config(base_config, [binance]))),
        config_version(load_config(two.venues_config(base_config, [binance, {**okx, "name": "sim-okx2"}]))),
        config_version(load_config(two.venues_config(base_config, [binance, {**okx, "urls": {}}]))),
    }
    assert len(versions) == 4
    # Symbols are the jobs' own: another venue symbol list is the same version.
    assert (
        config_version(load_config(two.venues_config(base_config, [binance, {**okx, "symbols": ["X/USDT"]}])))
        in versions
    )
