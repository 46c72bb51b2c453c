"""Backfill end to end against the simulator: the project's collector vs the user's "before" loop.

Setup: the simulator at 6,000 weight/min with 30 ms added latency; 6 timeframes
(1m 5m 15m 1h 4h 1d) over 6 months (full) or 3 days (--quick).

* Baseline: a sequential ccxt loop (ccxt's own throttler on) writing each page with pandas
  ``to_sql(method='multi', chunksize=1000)``: the user's "before". It runs on a shorter range
  (14 days, 1 day in --quick) and is compared in candles/s; its time for the full range is
  extrapolated in the notes.
* Project: ``OptimizedDataCollector.collect`` in a child process (so its peak RSS is its own),
  into a fresh PostgreSQL schema, with a fresh simulator per run (fresh weight counters), on the
  shipped defaults (``api_rate_limit: null``: the exchange's weight budget is the only limit).
* For many symbols the weight budget sets a floor: a run of W weight that starts s0 seconds into
  the server's minute cannot finish before the k-th minute boundary, k = ceil(W / 6000) - 1, i.e.
  floor = (60 - s0) + 60 (k - 1). Full runs start right after a minute boundary.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.harness import BenchContext, Row, Table
from data_collector.markets import DAY_MS, DEFAULT_TIMEFRAMES, candle_open_ms

NAME = "backfill"
DESCRIPTION = (
    "backfill end to end vs the simulator (6,000 weight/min, 30 ms): collector vs ccxt loop + to_sql"
)

WEIGHT_LIMIT = 6000
LATENCY_MS = 30.0
ALL_SYMBOLS = [
    "BTC/USDT",
    "ETH/USDT",
    "SOL/USDT",
    "BNB/USDT",
    "XRP/USDT",
    "ADA/USDT",
    "DOGE/USDT",
    "AVAX/USDT",
    "DOT/USDT",
    "LINK/USDT",
]
ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import asyncio, json, resource, sys, time
from data_collector.optimized_collector import OptimizedDataCollector
IMPORT_RSS_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

async def main():
    spec = json.loads(sys.stdin.read())
    t0 = time.time()
    async with OptimizedDataCollector(spec["config"]) as collector:
        report = await collector.collect(start=spec["start"], end=spec["end"])
    elapsed = time.time() - t0
    print(json.dumps({
        "t0": t0, "elapsed_s": elapsed, "rows": report.rows_written, "candles": report.candles_fetched,
        "requests": report.requests, "http_429": report.http_429, "http_418": report.http_418,
        "failures": report.failures, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "import_rss_mb": IMPORT_RSS_MB,
    }))

asyncio.run(main())
"""


async def run_child(spec: bytes) -> dict[str, Any]:
    """Run :data:`CHILD` on ``spec`` (JSON: config, start, end); its result line, parsed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        # `python -c` puts its working directory first on sys.path: the checkout's package.
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(spec)
    if proc.returncode != 0:
        raise RuntimeError(f"collector child failed: {err.decode()[-500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _schema(dsn: str, create: bool, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if create:
            await conn.execute(f'CREATE SCHEMA "{name}"')
        else:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def _project_run(
    ctx: BenchContext, symbols: list[str], days: int, align_to_minute: bool
) -> dict[str, Any]:
    from data_collector.simulator import SimulatedExchange

    schema = f"bench_backfill_{uuid.uuid4().hex[:8]}"
    await _schema(ctx.pg_dsn, True, schema)
    try:
        async with SimulatedExchange(
            symbols=symbols, seed=42, weight_limit=WEIGHT_LIMIT, latency_ms=LATENCY_MS
        ) as sim:
            end = candle_open_ms(sim.clock.now_ms(), "1d") - DAY_MS
            start = end - days * DAY_MS
            config = {
                "exchange": sim.exchange_config(),
                "symbols": symbols,
                "timeframes": list(DEFAULT_TIMEFRAMES),
                "database": {"url": ctx.pg_url, "schema": schema},
                "logging": {"file": None},
            }
            spec = json.dumps({"config": config, "start": start, "end": end}).encode()
            if align_to_minute:
                # Start just after a minute boundary, so the floor is the same for every run.
                await asyncio.sleep((60.0 - time.time() % 60.0) + 0.2)
            result = await run_child(spec)
            stats = sim.stats()
            result["weight"] = stats["weight"]
            result["sim_429"] = stats["429"]
            result["sim_418"] = stats["418"]
            if result["failures"]:
                raise RuntimeError(f"pairs failed: {result['failures']}")
            return result
    finally:
        await _schema(ctx.pg_dsn, False, schema)


def rate_limit_floor_s(weight: int, start_s_in_minute: float, limit: int = WEIGHT_LIMIT) -> float:
    """The earliest a run of ``weight`` can end, given the budget and where in the minute it starts."""
    boundaries = math.ceil(weight / limit) - 1
    if boundaries <= 0:
        return 0.0
    return (60.0 - start_s_in_minute) + 60.0 * (boundaries - 1)


async def _baseline_run(ctx: BenchContext, symbol: str, days: int) -> tuple[float, int]:
    """The user's "before": sequential ccxt with its throttler, pandas to_sql per page."""
    import ccxt.async_support as ccxt
    import pandas as pd
    from sqlalchemy.ext.asyncio import create_async_engine

    from data_collector.simulator import SimulatedExchange

    schema = f"bench_baseline_{uuid.uuid4().hex[:8]}"
    await _schema(ctx.pg_dsn, True, schema)
    engine = create_async_engine(ctx.pg_url)
    try:
        async with SimulatedExchange(
            symbols=[symbol], seed=42, weight_limit=WEIGHT_LIMIT, latency_ms=LATENCY_MS
        ) as sim:
            exchange = ccxt.binance(sim.ccxt_config())
            try:
                end = candle_open_ms(sim.clock.now_ms(), "1d") - DAY_MS
                start = end - days * DAY_MS
                await exchange.load_markets()
                total = 0
                started = time.perf_counter()
                for timeframe in DEFAULT_TIMEFRAMES:
                    since = start
                    while since < end:
                        ohlcv = await exchange.fetch_ohlcv(symbol, timeframe, since, 1000)
                        ohlcv = [c for c in ohlcv if c[0] < end]
                        if not ohlcv:
                            break
                        frame = pd.DataFrame(ohlcv, columns=["ts", "open", "high", "low", "close", "volume"])
                        frame["symbol"] = symbol
                        frame["timeframe"] = timeframe
                        async with engine.begin() as conn:
                            await conn.run_sync(
                                lambda sync_conn, frame=frame: frame.to_sql(
                                    "ohlcv",
                                    sync_conn,
                                    schema=schema,
                                    if_exists="append",
                                    index=False,
                                    method="multi",
                                    chunksize=1000,
                                )
                            )
                        total += len(ohlcv)
                        since = ohlcv[-1][0] + 1
                return time.perf_counter() - started, total
            finally:
                await exchange.close()
    finally:
        await engine.dispose()
        await _schema(ctx.pg_dsn, False, schema)


async def run(ctx: BenchContext) -> list[Table]:
    quick = ctx.quick
    repeats = 1 if quick else ctx.repeats
    days = 3 if quick else 183
    baseline_days = 1 if quick else 14
    many = 2 if quick else 10

    base_rates: list[float] = []
    base_times: list[float] = []
    for _ in range(repeats):
        seconds, candles = await _baseline_run(ctx, ALL_SYMBOLS[0], baseline_days)
        base_rates.append(candles / seconds)
        base_times.append(seconds)

    one = [await _project_run(ctx, ALL_SYMBOLS[:1], days, align_to_minute=False) for _ in range(repeats)]
    lots = [
        await _project_run(ctx, ALL_SYMBOLS[:many], days, align_to_minute=not quick) for _ in range(repeats)
    ]

    speed = Table(f"Backfill, 6 timeframes x {days} days: candles/s")
    speed.add(Row(f"ccxt loop + to_sql, 1 symbol, {baseline_days} d", base_rates, "candles/s", baseline=True))
    speed.add(Row("collector, 1 symbol", [r["candles"] / r["elapsed_s"] for r in one], "candles/s"))
    speed.add(Row(f"collector, {many} symbols", [r["candles"] / r["elapsed_s"] for r in lots], "candles/s"))

    times = Table(f"Backfill, 6 timeframes x {days} days: wall time")
    candles_one = one[0]["candles"]
    est = [candles_one / rate for rate in base_rates]
    times.add(
        Row("ccxt loop + to_sql, 1 symbol (extrapolated)", est, "s", baseline=True, higher_is_better=False)
    )
    times.add(Row("collector, 1 symbol", [r["elapsed_s"] for r in one], "s", higher_is_better=False))
    times.add(Row(f"collector, {many} symbols", [r["elapsed_s"] for r in lots], "s", higher_is_better=False))
    floors = [rate_limit_floor_s(r["weight"], r["t0"] % 60.0) for r in lots]
    if any(floors):
        times.add(Row(f"rate-limit floor, {many} symbols", floors, "s", higher_is_better=False))

    worst_rss = max(r["peak_rss_mb"] for r in one + lots)
    worst_429 = max(r["sim_429"] for r in one + lots)
    worst_418 = max(r["sim_418"] for r in one + lots)
    times.notes += [
        f"simulator: {WEIGHT_LIMIT} weight/min, {LATENCY_MS:.0f} ms latency; 1 symbol = "
        f"{candles_one:,} candles, {one[0]['requests']} requests",
        f"1 symbol target < 10 s: median {sorted(r['elapsed_s'] for r in one)[len(one) // 2]:.1f} s "
        f"(baseline measured {sorted(base_times)[len(base_times) // 2]:.1f} s for {baseline_days} d)",
        f"{many} symbols: weight {lots[0]['weight']:,}, {lots[0]['requests']:,} requests; "
        + (
            "floor "
            + ", ".join(f"{f:.1f}" for f in floors)
            + " s; elapsed/floor "
            + ", ".join(f"{r['elapsed_s'] / f:.2f}" for r, f in zip(lots, floors, strict=True) if f)
            + " (target <= 1.10)"
            if any(floors)
            else "the weight budget is not binding at this size"
        ),
        f"429s (worst run) {worst_429}, 418s {worst_418} (targets: <= 1, 0); peak RSS {worst_rss:.0f} MB "
        "(target <= 200 MB); per run, 1 symbol: "
        + ", ".join(f"{r['peak_rss_mb']:.0f}" for r in one)
        + f" MB; {many} symbols: "
        + ", ".join(f"{r['peak_rss_mb']:.0f}" for r in lots)
        + f" MB (of which importing the collector, i.e. ccxt, SQLAlchemy and asyncpg, takes"
        f" {max(r['import_rss_mb'] for r in one + lots):.0f} MB)",
        "shipped defaults (api_rate_limit: null, concurrent_symbols: 5): the exchange's weight budget is the only limit",
    ]
    return [speed, times]
