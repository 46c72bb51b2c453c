"""Memory while the streamer closes a long hole in the trades table (issue 15: "memory stays bounded
while a long gap is repaired").

A hole of one symbol (all aggregate trades of a window) is handed to the streamer's
:class:`~data_collector.streaming.trade_holes.TradeGapCloser`, which runs the trade backfill over
it into PostgreSQL, against the simulator. The peak of Python's traced allocations during the
job is printed for a short hole (the baseline) and a long one; bounded memory means the peak does
not grow with the hole (the backfill holds at most its page slots and write queue). A one-minute
hole goes first, untraced (ccxt's modules are imported once per streamer). Each job runs in a
thread of its own with its own exchange client and database pool; tracemalloc sees every thread.

    python -m benchmarks trade_holes          # 2 h and 32 h of tape (about 12k and 200k trades)
    python -m benchmarks trade_holes --quick  # 1 h and 4 h
"""

from __future__ import annotations

import time
import tracemalloc
import uuid

import asyncpg

from benchmarks.harness import BenchContext, Row, Table
from data_collector.config import load_config
from data_collector.markets import HOUR_MS
from data_collector.storage import open_store
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.trade_holes import Hole, TradeGapCloser

NAME = "trade_holes"
DESCRIPTION = "peak memory of the streamer's trade backfill job closing a short and a long hole"
SYMBOL = "BTC/USDT"


async def _close_hole(ctx: BenchContext, hours: int) -> tuple[float, float, int]:
    """(peak traced MB, seconds, trades stored) for a hole of ``hours`` of tape."""
    from data_collector.simulator import SimulatedExchange

    schema = f"bench_holes_{uuid.uuid4().hex[:8]}"
    async with SimulatedExchange(symbols=[SYMBOL], seed=42) as sim:
        end_ms = sim.clock.now_ms() - HOUR_MS
        tape = sim.agg_trades(SYMBOL, end_ms - hours * HOUR_MS, end_ms)
        first, last = tape[0], tape[-1]
        count = len(tape)
        del tape
        config = load_config(
            {
                "exchange": sim.exchange_config(),
                "symbols": [SYMBOL],
                "data_types": ["trades"],
                "database": {"url": ctx.pg_url, "schema": schema},
                "performance": {"api_rate_limit": 100_000},
                "logging": {"file": None},
            }
        )
        store = open_store(config)
        await store.initialize()
        try:
            inst = await store.ensure_instrument(
                sim.exchange_config()["name"], SYMBOL, base="BTC", quote="USDT"
            )
            closer = TradeGapCloser(config, StreamMetrics())
            # A first, one-minute hole before the other (untraced): ccxt's modules are imported
            # once per streamer, not per hole.
            warm = sim.agg_trades(SYMBOL, end_ms - (hours + 1) * HOUR_MS, end_ms - hours * HOUR_MS - 1)[-60:]
            closer.submit(
                Hole(SYMBOL, int(warm[0]["a"]), int(warm[-1]["a"]) + 1, int(warm[0]["T"]), int(warm[-1]["T"]))
            )
            await closer.closed_one.wait()
            closer.closed_one.clear()
            tracemalloc.start()
            t0 = time.perf_counter()
            try:
                closer.submit(
                    Hole(SYMBOL, int(first["a"]), int(last["a"]) + 1, int(first["T"]), int(last["T"]))
                )
                await closer.closed_one.wait()
                elapsed = time.perf_counter() - t0
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
                await closer.close()
            stored = len(await store.load_trades(inst.id, int(first["T"]), int(last["T"]) + 1))
            if stored != count:
                raise RuntimeError(f"the hole of {count} trades left {count - stored} unstored")
        finally:
            await store.close()
            admin = await asyncpg.connect(ctx.pg_dsn)
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()
    return peak / 2**20, elapsed, count


async def run(ctx: BenchContext) -> list[Table]:
    short, long = (1, 4) if ctx.quick else (2, 32)
    table = Table(f"Closing a hole in the trades table by the trade backfill: {short} h vs {long} h of tape")
    notes = []
    sizes: list[tuple[int, float]] = []
    for hours, baseline in ((short, True), (long, False)):
        peaks, seconds, count = [], [], 0
        for _ in range(1 if ctx.quick else max(1, min(ctx.repeats, 2))):
            peak, elapsed, count = await _close_hole(ctx, hours)
            peaks.append(peak)
            seconds.append(elapsed)
        row = table.add(
            Row(f"peak traced memory, {hours} h hole", peaks, "MB", baseline=baseline, higher_is_better=False)
        )
        sizes.append((count, row.median))
        notes.append(
            f"{hours} h hole: {count:,} trades, closed in {min(seconds):.1f}-{max(seconds):.1f} s (traced)"
        )
    (n0, m0), (n1, m1) = sizes
    table.notes += [
        *notes,
        f"the long hole has {n1 / n0:.1f}x the trades and {m1 / m0:.1f}x the peak (the job holds at most "
        "the backfill's page slots, 32 pages of 1,000 trades, and its write queue; below that the peak grows)",
    ]
    return [table]
