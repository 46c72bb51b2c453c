"""A mixed run: spot and perpetual symbols, every data type, against the larger of the two weight floors.

``OptimizedDataCollector.collect`` of 3 spot symbols (``ohlcv``, ``trades``) and 3 perpetuals
(``ohlcv``, ``mark_ohlcv``, ``index_ohlcv``, ``premium_ohlcv``, ``funding_rates``,
``open_interest``) over 29 days (the exchange serves open interest for the last 30 days only, and
the collector refuses a start within an hour of that edge; ``--quick``: 1 spot, 1 perpetual, 1 day, perpetual trades over 2 hours), timeframes ``5m``
and ``1h``, against the simulator at Binance's budgets (spot 6,000, USDⓈ-M 2,400 weight a
minute) with 30 ms latency. The two venues have separate budgets and limiters, so the run cannot
end before the slower venue's floor: weight / budget of that venue, each venue's weight counted by
its own client. Perpetual aggregate trades run beside them over the window's last day only: a
page of them weighs 20 in the futures budget (spot's weighs 4), and a simulated perpetual day of
trades costs ~2,460 weight, so 29 days of three perpetuals would alone set a 90-minute floor.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

from benchmarks import harness
from benchmarks.bench_backfill import rate_limit_floor_s
from benchmarks.harness import BenchContext, Row, Table
from data_collector.markets import HOUR_MS

NAME = "mixed"
DESCRIPTION = (
    "mixed spot + perpetual run, every data type, vs the larger of the spot and futures weight floors"
)

SPOT_LIMIT = 6000
FUTURES_LIMIT = 2400
LATENCY_MS = 30.0
SPOT = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
PERPS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]
SPOT_TYPES = ["ohlcv", "trades"]
PERP_TRADE_DAYS = 1
PERP_TYPES = ["ohlcv", "mark_ohlcv", "index_ohlcv", "premium_ohlcv", "funding_rates", "open_interest"]


def _budget(limit: int) -> int:
    return limit - -(-limit // 100)  # rate_limit_margin 0.01, as the limiter computes it


async def _one(ctx: BenchContext, spot: list[str], perps: list[str], days: int) -> dict[str, Any]:
    from data_collector.optimized_collector import OptimizedDataCollector
    from data_collector.simulator import SimulatedExchange

    schema = f"bench_mixed_{uuid.uuid4().hex[:8]}"
    async with SimulatedExchange(
        symbols=spot,
        perpetuals=perps,
        seed=42,
        weight_limit=SPOT_LIMIT,
        futures_weight_limit=FUTURES_LIMIT,
        latency_ms=LATENCY_MS,
    ) as sim:
        end = sim.clock.now_ms() // HOUR_MS * HOUR_MS - HOUR_MS
        start = end - days * 24 * HOUR_MS
        config = {
            "exchange": sim.exchange_config(),
            "futures_exchange": sim.futures_exchange_config(),
            "symbols": [*spot, *perps],
            "timeframes": ["5m", "1h"],
            "database": {"url": ctx.pg_url, "schema": schema},
            "logging": {"file": None},
            "performance": {"concurrent_symbols": 6},
        }
        if not ctx.quick:
            await asyncio.sleep((60.0 - time.time() % 60.0) + 0.2)
        t0 = time.time()
        try:
            async with OptimizedDataCollector(config) as collector:
                # One run: the spot symbols' types and the perpetuals' at once.
                spot_run = collector.collect(symbols=spot, start=start, end=end, data_types=SPOT_TYPES)
                perp_run = collector.collect(symbols=perps, start=start, end=end, data_types=PERP_TYPES)
                # Perpetual aggregate trades over the last PERP_TRADE_DAYS only (see the docstring);
                # the quick form's last 2 hours: a whole day (~2,460 weight) is more than one
                # minute of the futures budget, and the CI smoke run would wait for the next one.
                trade_hours = 2 if ctx.quick else PERP_TRADE_DAYS * 24
                trades_start = max(start, end - trade_hours * HOUR_MS)
                perp_trades = collector.collect(
                    symbols=perps, start=trades_start, end=end, data_types=["trades"]
                )
                reports = [await spot_run] if not perps else []
                if perps:
                    reports = list(await asyncio.gather(spot_run, perp_run, perp_trades))
                elapsed = time.time() - t0
                weights = [c.limiter.stats.weight for c in collector.open_clients()]
        finally:
            admin = await asyncpg.connect(ctx.pg_dsn)
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()
        for report in reports:
            if not report.ok:
                raise RuntimeError(report.summary())
        stats = sim.stats()
        rows: dict[str, int] = {}
        for report in reports:
            for k, v in report.rows_by_type.items():
                rows[k] = rows.get(k, 0) + v
        return {
            "elapsed": elapsed,
            "t0": t0,
            "spot_weight": weights[0],
            "futures_weight": weights[1] if len(weights) > 1 else 0,
            "rows": rows,
            "429": int(stats["429"]),
            "418": int(stats["418"]),
        }


async def run(ctx: BenchContext) -> list[Table]:
    days = 1 if ctx.quick else 29
    spot, perps = (SPOT[:1], PERPS[:1]) if ctx.quick else (SPOT, PERPS)
    table = Table(
        f"mixed run: {len(spot)} spot + {len(perps)} perpetuals x {days} d, every data type, "
        f"budgets {SPOT_LIMIT} / {FUTURES_LIMIT} weight/min, {LATENCY_MS:g} ms"
    )
    runs = [
        await _one(ctx, spot, perps, days) for _ in range(1 if ctx.quick else max(1, min(ctx.repeats, 2)))
    ]
    spot_floor = [r["spot_weight"] / _budget(SPOT_LIMIT) * 60.0 for r in runs]
    fut_floor = [r["futures_weight"] / _budget(FUTURES_LIMIT) * 60.0 for r in runs]
    floor = [max(a, b) for a, b in zip(spot_floor, fut_floor, strict=True)]
    bound = [
        max(
            rate_limit_floor_s(r["spot_weight"], r["t0"] % 60.0, _budget(SPOT_LIMIT)),
            rate_limit_floor_s(r["futures_weight"], r["t0"] % 60.0, _budget(FUTURES_LIMIT)),
        )
        for r in runs
    ]
    table.add(
        Row("floor: max(spot, futures) weight / budget", floor, "s", baseline=True, higher_is_better=False)
    )
    table.add(Row("floor: spot weight / budget", spot_floor, "s", higher_is_better=False))
    table.add(Row("floor: futures weight / budget", fut_floor, "s", higher_is_better=False))
    harness.add_floor_rows(table, bound, runs, "project collect(), both venues at once")
    r0 = runs[0]
    table.notes += [
        f"weight: spot {r0['spot_weight']:,}, futures {r0['futures_weight']:,}; rows by type "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(r0["rows"].items()))
        + f"; 429s {sum(r['429'] for r in runs)}, 418s {sum(r['418'] for r in runs)}",
        harness.elapsed_over_floors(runs, floor, bound),
    ]
    return [table]
