"""Distributed backfill (issue 17): 1 host vs 3 hosts, and the jobs' overhead, in one run.

Each case gets a fresh simulator (fresh per-IP weight counters) and a fresh PostgreSQL schema.
Hosts are ``data-collector worker`` processes bound to 127.0.0.2, .3, .4 (the simulator counts
weight per client IP, as Binance does); the producer (``run_distributed``) runs here. The
simulator's weight budget per IP is set so one host needs a little over 3 minutes of budget:
weight-bound, as a backfill is. Every case starts just after a minute boundary (the floors are
then the same), and the time is the producer's: plan, enqueue, wait, report (the workers are up
before it starts). The in-process case is today's collector, ``collect`` on the same work in
this process, timed from its open to its report.

Targets: 3 hosts >= 2.7x 1 host's throughput, 0 x 418; the jobs' overhead <= 5% of the
in-process run's wall time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench_backfill import _schema, rate_limit_floor_s
from benchmarks.harness import BenchContext, Row, Table

NAME = "distributed"
DESCRIPTION = "distributed backfill: 1 vs 3 worker hosts (weight-bound), job overhead vs in-process"

ROOT = Path(__file__).resolve().parent.parent
LATENCY_MS = 20.0
#: (symbols, timeframes, days): the full form is near the issue's 10 x 6 x 90 in weight per host.
FULL = (
    ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"],
    ["1m", "5m", "15m", "1h", "4h", "1d"],
    60,
)
QUICK = (["BTC/USDT", "ETH/USDT"], ["1h", "4h"], 20)
#: Days of one job's window.
WINDOW_DAYS = 30.0
#: Minutes of budget one host needs: 6.5, so 1 host and the in-process run cross 6 minute
#: boundaries and 3 hosts 2 (the budget is a step function of the minute: with these, the floors'
#: ratio is 3 and the in-process run's floor is 1 host's).
BUDGET_MINUTES = 6.5


def _klines_weight(days: int, timeframes: list[str], symbols: int) -> int:
    """Weight of the run's klines requests when cut in job windows (2 a page of 1000)."""
    from data_collector.markets import TIMEFRAME_MS

    pages = 0
    for tf in timeframes:
        per_window = -(-int(WINDOW_DAYS * 86_400_000) // TIMEFRAME_MS[tf] // 1000)
        pages += per_window * -(-days // int(WINDOW_DAYS))
    return 2 * pages * symbols


def _spawn(config: Path, schema: str, address: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp / f"ready.{address}"
    cmd = [
        sys.executable, "-m", "data_collector.cli.main", "worker", "--config", str(config),
        "--source-address", address, "--queue-schema", schema, "--ready-file", str(ready),
        "--concurrency", "4",
    ]  # fmt: skip
    with (tmp / f"worker.{address}.log").open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    return proc, ready


async def _align() -> float:
    """Wait for just after a minute boundary; the seconds into the minute at the start."""
    await asyncio.sleep((60.0 - time.time() % 60.0) + 0.2)
    return time.time() % 60.0


async def _case(
    ctx: BenchContext, hosts: int, form: tuple[list[str], list[str], int], limit: int
) -> dict[str, Any]:
    """One run: ``hosts`` worker processes (0: in-process ``collect``); its seconds and figures."""
    from data_collector.config import load_config
    from data_collector.distributed.engine import EngineSettings
    from data_collector.distributed.producer import run_distributed
    from data_collector.markets import DAY_MS, candle_open_ms
    from data_collector.optimized_collector import OptimizedDataCollector
    from data_collector.simulator import SimulatedExchange

    symbols, timeframes, days = form
    schema = f"bench_dist_{uuid.uuid4().hex[:8]}"
    queue = f"bench_q_{uuid.uuid4().hex[:8]}"
    await _schema(ctx.pg_dsn, True, schema)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with SimulatedExchange(
            symbols=symbols, seed=42, weight_limit=limit, latency_ms=LATENCY_MS, gaps={}
        ) as sim:
            end = candle_open_ms(sim.clock.now_ms(), "1d") - DAY_MS
            start = end - days * DAY_MS
            cfg = {
                "exchange": {**sim.exchange_config(), "weight_limit": limit},
                "symbols": symbols,
                "timeframes": timeframes,
                "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start / 1000)),
                "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end / 1000)),
                "database": {"url": ctx.pg_url, "schema": schema},
                "logging": {"file": None},
            }
            config = load_config(cfg)
            with tempfile.TemporaryDirectory() as tmp_name:
                tmp = Path(tmp_name)
                path = tmp / "config.yaml"
                path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
                readies = []
                for i in range(hosts):
                    proc, ready = _spawn(path, queue, f"127.0.0.{i + 2}", tmp)
                    procs.append(proc)
                    readies.append(ready)
                deadline = time.monotonic() + 120
                while not all(r.exists() for r in readies):
                    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                        logs = "".join(p.read_text()[-500:] for p in tmp.glob("worker.*.log"))  # noqa: ASYNC240
                        raise RuntimeError(f"workers did not start: {logs}")
                    await asyncio.sleep(0.1)
                into = await _align() if not ctx.quick else 0.0
                began = time.perf_counter()
                if hosts:
                    engine = EngineSettings(dsn=ctx.pg_dsn, schema=queue)
                    report = await run_distributed(config, engine, window_days=WINDOW_DAYS)
                    if report.failed:
                        raise RuntimeError(report.summary())
                    rows = report.total("written", report.workers)
                else:
                    async with OptimizedDataCollector(config) as collector:
                        done = await collector.collect()
                    if done.failures:
                        raise RuntimeError(f"pairs failed: {done.failures}")
                    rows = done.rows_written
                elapsed = time.perf_counter() - began
            stats = sim.stats()
            return {
                "s": elapsed,
                "rows": rows,
                "weight": stats["weight"],
                "429": stats["429"],
                "418": stats["418"],
                "into": into,
            }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        await _schema(ctx.pg_dsn, False, schema)
        await _schema(ctx.pg_dsn, False, queue)


async def run(ctx: BenchContext) -> list[Table]:
    import os

    form = QUICK if ctx.quick else FULL
    symbols, timeframes, days = form
    weight = _klines_weight(days, timeframes, len(symbols))
    limit = 6000 if ctx.quick else int(weight / BUDGET_MINUTES)
    repeats = 1 if ctx.quick else ctx.repeats
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {"in-process": [], "1 host": [], "3 hosts": []}
    for _ in range(repeats):
        for label, hosts in (("in-process", 0), ("1 host", 1), ("3 hosts", 3)):
            runs[label].append(await _case(ctx, hosts, form, limit))
    load1 = os.getloadavg()[0]
    title = (
        f"{len(symbols)} symbols x {len(timeframes)} timeframes x {days} days, jobs of {WINDOW_DAYS:g} days, "
        f"{limit} weight/min per IP (klines weight {weight}), {LATENCY_MS:g} ms latency"
    )
    speed = Table(f"Weight-bound backfill, throughput: {title}")
    wall = Table("Wall time, same work: today's in-process collector vs 1 worker host through jobs")
    speed.add(
        Row(
            "1 host (worker on 127.0.0.2)",
            [r["rows"] / r["s"] for r in runs["1 host"]],
            "rows/s",
            baseline=True,
        )
    )
    speed.add(Row("3 hosts (127.0.0.2/.3/.4)", [r["rows"] / r["s"] for r in runs["3 hosts"]], "rows/s"))
    wall.add(
        Row(
            "in-process collect",
            [r["s"] for r in runs["in-process"]],
            "s",
            baseline=True,
            higher_is_better=False,
        )
    )
    wall.add(Row("1 host through jobs", [r["s"] for r in runs["1 host"]], "s", higher_is_better=False))
    worst = {k: max(r[k] for rs in runs.values() for r in rs) for k in ("429", "418")}
    floors = {
        label: [
            rate_limit_floor_s(r["weight"] // max(1, 1 if label != "3 hosts" else 3), r["into"], limit)
            for r in rs
        ]
        for label, rs in runs.items()
    }
    speed.notes += [
        f"429s: {worst['429']}, 418s: {worst['418']} (worst run); target 3 hosts >= 2.7x, 0 x 418",
        "floors (s, the budget's earliest end): "
        + ", ".join(f"{k} {', '.join(f'{f:.0f}' for f in v)}" for k, v in floors.items()),
        "weight spent (every address, the producer's included): "
        + ", ".join(f"{k} {', '.join(str(r['weight']) for r in v)}" for k, v in runs.items()),
        f"load average (1 min) {load0:.1f} at the start, {load1:.1f} at the end",
    ]
    overhead = [(j["s"] - b["s"]) / b["s"] for j, b in zip(runs["1 host"], runs["in-process"], strict=True)]
    wall.notes += [
        "jobs' overhead (1 host - in-process) / in-process: "
        + ", ".join(f"{o:+.1%}" for o in overhead)
        + "; target <= 5%",
        "the jobs' time includes the producer's own exchange connection and a 0.5 s status poll",
    ]
    return [speed, wall]
