"""Aggregate trades: DB ingest against pandas to_sql, and the REST backfill against its weight floor.

* Ingest: 1,000,000 trades of 10 instruments (200,000 in --quick), in pages of 1,000, handed to
  ``PostgresCandleStore.write_trades`` 10 pages per call by 2 writer tasks from a bounded queue
  (what the collector does); into a fresh range, and with the first half of every page already
  stored. Baseline: pandas ``to_sql(method='multi', chunksize=1000)`` of the same rows (a
  20,000-row sample), in the same run; cases take turns within every repeat.
* Backfill: ``OptimizedDataCollector.collect(data_types=['trades'])`` of one symbol against the
  simulator at a small weight budget (600/min, so the budget and not the machine sets the pace)
  with 30 ms latency. Floors: the budget's continuous floor, weight / budget (aggTrades weight x
  pages, plus the start-up requests), and the minute-boundary floor: the limiter fires each
  minute's budget at once, so a run of W weight started s0 s into the server's minute cannot end
  before boundary k = ceil(W / budget) - 1, i.e. (60 - s0) + 60 (k - 1) s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from benchmarks import harness
from benchmarks.bench_backfill import rate_limit_floor_s
from benchmarks.harness import BenchContext, Row, Table, WriterCases, take_turns
from data_collector.config import load_config
from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.store import StoreSettings
from data_collector.storage.trades import TRADE_COLUMNS, TradeBatch, TradeCoverage

NAME = "trades"
DESCRIPTION = "trades ingest into PostgreSQL vs pandas to_sql; REST trade backfill vs its weight floor"

PAGE = 1000
PAGES_PER_WRITE = 10
WRITERS = 2
INSTRUMENTS = 10
T0 = 1_700_000_000_000
WEIGHT_LIMIT = 600
LATENCY_MS = 30.0


def _page(iid: int, first: int, n: int) -> TradeBatch:
    ids = range(first, first + n)
    trades = [
        (i, T0 + 37 * i, 100.0 + (i % 977) / 100, 0.5 + i % 13, 3 * i, 3 * i + 2, i % 3 == 0) for i in ids
    ]
    return TradeBatch(
        iid, trades, [TradeCoverage(ids[0], ids[-1] + 1, T0 + 37 * ids[0] + 1, T0 + 37 * ids[-1])]
    )


def _first_half(p: TradeBatch) -> TradeBatch:
    half = list(p.trades[: len(p.trades) // 2])
    return TradeBatch(
        p.instrument_id, half, [TradeCoverage(half[0][0], half[-1][0] + 1, half[0][1] + 1, half[-1][1])]
    )


def make_pages(total: int) -> list[TradeBatch]:
    """``total`` trades over :data:`INSTRUMENTS` instruments, pages of :data:`PAGE` ids."""
    return harness.make_pages(total, INSTRUMENTS, PAGE, _page)


def first_halves(pages: Sequence[TradeBatch]) -> list[TradeBatch]:
    return harness.first_halves(pages, _first_half)


async def run_writers(store: PostgresCandleStore, pages: Sequence[TradeBatch]) -> float:
    return await harness.run_writers(store.write_trades, pages, PAGES_PER_WRITE, WRITERS)


def pandas_to_sql(dsn: str, schema: str, pages: Sequence[TradeBatch]) -> float:
    import pandas as pd

    frame = pd.DataFrame(
        [(p.instrument_id, *t) for p in pages for t in p.trades], columns=list(TRADE_COLUMNS)
    )
    return harness.pandas_to_sql(frame, dsn, schema, "trades")


async def ingest(ctx: BenchContext) -> Table:
    total = 200_000 if ctx.quick else 1_000_000
    pandas_n = 5_000 if ctx.quick else 20_000
    pages = make_pages(total)
    halves = first_halves(pages)
    schema = f"bench_trades_{uuid.uuid4().hex[:8]}"
    config = load_config({"database": {"url": ctx.pg_url, "schema": schema}, "logging": {"file": None}})
    store = PostgresCandleStore(StoreSettings.from_config(config))
    admin = await asyncpg.connect(ctx.pg_dsn)
    table = Table(
        f"Trades ingest into PostgreSQL, {total:,} trades ({INSTRUMENTS} instruments, pages of {PAGE})"
    )
    try:
        await store.initialize()

        cases_of = WriterCases(
            admin, schema, ("trades", "trade_coverage"), lambda p: run_writers(store, p), pages, halves, total
        )
        reset, check = cases_of.reset, cases_of.check
        await run_writers(store, pages[: WRITERS * PAGES_PER_WRITE * 2])
        fresh, half_present = cases_of.fresh, cases_of.half_present

        async def ceiling() -> float:
            await reset()
            records = [
                [(p.instrument_id, *t) for p in pages[i : i + PAGES_PER_WRITE] for t in p.trades]
                for i in range(0, len(pages), PAGES_PER_WRITE)
            ]
            conns = [await asyncpg.connect(ctx.pg_dsn) for _ in range(WRITERS)]
            try:
                started = time.perf_counter()
                for i in range(0, len(records), WRITERS):
                    await asyncio.gather(
                        *(
                            c.copy_records_to_table(
                                "trades", schema_name=schema, records=r, columns=TRADE_COLUMNS
                            )
                            for c, r in zip(conns, records[i : i + WRITERS], strict=False)
                        )
                    )
                elapsed = time.perf_counter() - started
            finally:
                for c in conns:
                    await c.close()
            await check(total)
            return total / elapsed

        async def pandas_way() -> float:
            await reset()
            return pandas_n / await asyncio.to_thread(pandas_to_sql, ctx.pg_dsn, schema, make_pages(pandas_n))

        cases = [
            ("pandas to_sql(method='multi', chunksize=1000)", pandas_way, True, f"{pandas_n:,}-trade sample"),
            ("project write_trades, fresh range, 2 writers", fresh, False, ""),
            ("project write_trades, half the trades present, 2 writers", half_present, False, ""),
            ("plain COPY, prebuilt rows, no conflict handling, 2 conns (ceiling)", ceiling, False, ""),
        ]
        await take_turns(table, cases, ctx.repeats, "trades/s")
        rates = [r.median for r in table.rows]
        table.notes += [
            f"the writer, then the ceiling: {rates[1] / rates[3]:.0%} of a bare COPY of the same rows into the "
            "same table (primary key and BRIN index) on this machine in this run",
            "trades/s counts every trade handed to the writer, written or skipped as already stored; "
            "half present = the first half of every page stored before the timed run",
            _target("fresh range", rates[1], 500_000, rates[0]),
            _target("half present", rates[2], 300_000, rates[0]),
        ]
        return table
    finally:
        await store.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def _target(what: str, rate: float, target: float, pandas_rate: float) -> str:
    met = "met" if rate >= target else "NOT met"
    return f"target {what}: >= {target:,.0f} trades/s; measured {rate:,.0f} ({rate / pandas_rate:,.0f}x pandas): {met}"


async def backfill(ctx: BenchContext) -> Table:
    from data_collector.optimized_collector import OptimizedDataCollector
    from data_collector.simulator import SimulatedExchange

    hours = 6 if ctx.quick else 100
    table = Table(
        f"REST trade backfill, 1 symbol x {hours} h, simulator at {WEIGHT_LIMIT} weight/min, {LATENCY_MS:g} ms"
    )
    runs: list[dict[str, Any]] = []
    for _ in range(1 if ctx.quick else max(1, min(ctx.repeats, 2))):
        schema = f"bench_trades_{uuid.uuid4().hex[:8]}"
        async with SimulatedExchange(
            symbols=["BTC/USDT"], seed=42, weight_limit=WEIGHT_LIMIT, latency_ms=LATENCY_MS
        ) as sim:
            end = sim.clock.now_ms() // HOUR_MS * HOUR_MS - DAY_MS
            config = {
                "exchange": sim.exchange_config(),
                "symbols": ["BTC/USDT"],
                "data_types": ["trades"],
                "database": {"url": ctx.pg_url, "schema": schema},
                "logging": {"file": None},
            }
            if not ctx.quick:
                await asyncio.sleep((60.0 - time.time() % 60.0) + 0.2)
            t0 = time.time()
            try:
                async with OptimizedDataCollector(config) as collector:
                    report = await collector.collect(start=end - hours * HOUR_MS, end=end)
                elapsed = time.time() - t0
            finally:
                admin = await asyncpg.connect(ctx.pg_dsn)
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await admin.close()
            if not report.ok:
                raise RuntimeError(report.summary())
            stats = sim.stats()
            pages = int(stats["endpoints"].get("aggTrades", 0))
            runs.append(
                {
                    "elapsed": elapsed,
                    "t0": t0,
                    "weight": int(stats["weight"]),
                    "pages": pages,
                    "trades": report.trades_fetched,
                    "429": int(stats["429"]),
                    "418": int(stats["418"]),
                }
            )
    budget = WEIGHT_LIMIT - -(-WEIGHT_LIMIT // 100)  # rate_limit_margin 0.01, as the limiter computes it
    cont = [r["weight"] / budget * 60.0 for r in runs]
    bound = [rate_limit_floor_s(r["weight"], r["t0"] % 60.0, budget) for r in runs]
    table.add(Row("floor: weight / budget", cont, "s", baseline=True, higher_is_better=False))
    harness.add_floor_rows(table, bound, runs, "project collect(data_types=['trades'])")
    r0 = runs[0]
    table.notes += [
        f"{r0['trades']:,} trades, {r0['pages']:,} aggTrades requests (weight 4 each), total weight {r0['weight']:,} "
        f"(with exchangeInfo, time, the listing and the id look-ups); 429s {sum(r['429'] for r in runs)}, "
        f"418s {sum(r['418'] for r in runs)}",
        harness.elapsed_over_floors(runs, cont, bound),
    ]
    return table


async def run(ctx: BenchContext) -> list[Table]:
    return [await ingest(ctx), await backfill(ctx)]
