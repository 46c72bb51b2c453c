"""The backfill end to end: real ccxt against the simulator, real PostgreSQL (issue 3's acceptance).

Sizes are CI-sized; the benchmark-sized forms are marked slow or live in benchmarks/.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from data_collector.backfill.plan import plan_backfill
from data_collector.markets import DAY_MS, MINUTE_MS, TIMEFRAME_CODES, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.storage import open_store
from tests.support.backfill import (
    RANGE_START_MS,
    SYMBOLS,
    TIMEFRAMES,
    config_for,
    count_rows,
    floats,
    klines_requests,
    local_iso,
    run_script,
    start_script,
    stored_equals_sim,
    write_config,
)
from tests.support.services import PG_ADMIN_DSN, free_port
from tests.support.streaming import read_until

TIMEFRAME_CODE_1M = TIMEFRAME_CODES["1m"]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=SYMBOLS, seed=7, gaps={}) as exchange:
        yield exchange


async def test_user_snippet_verbatim(base_config: dict[str, Any], sim: SimulatedExchange) -> None:
    config = config_for(base_config, sim)
    start = datetime.now() - timedelta(days=3)  # naive: taken as UTC
    end = datetime.now() - timedelta(days=1)
    from data_collector.optimized_collector import OptimizedDataCollector

    collector = OptimizedDataCollector(config)
    await collector.initialize()
    await collector.collect_all_data_concurrent(symbol="SOL/USDT", start_date=start, end_date=end)
    try:
        frame = await collector.load_ohlcv("SOL/USDT", "1h", start, end)
        assert len(frame) in (47, 48) and str(frame.index.tz) == "UTC"
        gaps = await collector.find_gaps("SOL/USDT", "1m", start, end)
        assert gaps == []
    finally:
        await collector.close()
        await collector.close()


@pytest.mark.parametrize("days", [5, pytest.param(90, marks=pytest.mark.slow)])
async def test_three_symbols_all_timeframes_exact_then_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, days: int
) -> None:
    start = candle_open_ms(sim.clock.now_ms() - (days + 2) * DAY_MS, "1d")
    end = start + days * DAY_MS
    async with OptimizedDataCollector(config_for(base_config, sim)) as collector:
        report = await collector.collect(start=start, end=end)
        assert report.ok, report.summary()
        await stored_equals_sim(collector, sim, start, end)
        assert report.rows_written == sum(
            len(sim.klines(s, tf, start, end)) for s in SYMBOLS for tf in TIMEFRAMES
        )
        before = sim.stats()["requests"]
        again = await collector.collect(start=start, end=end)
        assert again.rows_written == 0 and again.requests == 0 and again.ok
        assert sim.stats()["requests"] == before
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await conn.fetch(
            f"SELECT symbol, timeframe, (extract(epoch from ts) * 1000)::bigint AS ts, open, high, low, "
            f'close, volume FROM "{pg_schema}".ohlcv_view ORDER BY symbol, timeframe, ts'
        )
        dupes = await conn.fetchval(
            f'SELECT count(*) FROM (SELECT 1 FROM "{pg_schema}".ohlcv_view '
            f"GROUP BY symbol, timeframe, ts HAVING count(*) > 1) d"
        )
    finally:
        await conn.close()
    assert dupes == 0
    view: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for r in rows:
        view.setdefault((r["symbol"], r["timeframe"]), []).append(
            (r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"])
        )
    for s in SYMBOLS:
        for tf in TIMEFRAMES:
            assert view[(s, tf)] == [floats(k) for k in sim.klines(s, tf, start, end)], (s, tf)


async def test_maintenance_gap_is_exchange_side_and_not_refetched(base_config: dict[str, Any]) -> None:
    gap = (RANGE_START_MS + DAY_MS + 3 * 3_600_000, RANGE_START_MS + DAY_MS + 5 * 3_600_000 + 17 * MINUTE_MS)
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=3, gaps={"SOL/USDT": [gap]}) as sim:
        config = config_for(base_config, sim, symbols=["SOL/USDT"], timeframes=["1m", "1h"])
        start, end = RANGE_START_MS, RANGE_START_MS + 3 * DAY_MS
        async with OptimizedDataCollector(config) as collector:
            report = await collector.collect(start=start, end=end)
            assert report.ok and report.exchange_gaps >= 1
            gaps = await collector.find_gaps("SOL/USDT", "1m", start, end)
            assert [(g.start_ms, g.end_ms, g.kind) for g in gaps] == [(gap[0], gap[1], "exchange")]
            hourly = await collector.find_gaps("SOL/USDT", "1h", start, end)
            assert all(g.kind == "exchange" for g in hourly) and hourly
            await stored_equals_sim(collector, sim, start, end, ["SOL/USDT"], ["1m", "1h"])
            before = klines_requests(sim)
            again = await collector.repair_gaps("SOL/USDT", "1m", start, end)
            assert again.requests == 0 and klines_requests(sim) == before


async def test_injected_faults_complete_and_correct(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    start, end = RANGE_START_MS, RANGE_START_MS + 4 * DAY_MS
    config = config_for(base_config, sim, exchange={"timeout_s": 0.5, "max_retries": 12})
    async with OptimizedDataCollector(config) as collector:
        sim.set_faults(error_rate=0.0125, reset_rate=0.0125, hang_rate=0.0125, malformed_rate=0.0125)
        report = await collector.collect(start=start, end=end)
        sim.set_faults()
        assert report.ok, report.summary()
        faults = sim.stats()["faults"]
        assert sum(faults.values()) > 0  # the run really went through faults
        assert report.retries >= sum(faults.values()) - faults.get("outage", 0)
        await stored_equals_sim(collector, sim, start, end)


async def test_weight_budget_crossing_a_minute_without_bans(
    base_config: dict[str, Any], long_run: bool
) -> None:
    # The full form (--long): >10,000 weight against 6,000/min. The short form keeps the shape at a
    # smaller scale. Small pages make many requests from little data. The simulator's clock is set
    # a few seconds before a minute boundary, so the run exhausts one minute's budget, waits for
    # the boundary and goes on, without waiting for the wall clock's own minute.
    limit, days, page, lead_ms = (6000, 21, 20, 25_000) if long_run else (400, 3, 50, 4_000)
    async with SimulatedExchange(symbols=SYMBOLS, seed=11, gaps={}, weight_limit=limit) as sim:
        now_ms = sim.clock.now_ms()
        sim.clock.advance(60_000 - now_ms % 60_000 - lead_ms)
        start = candle_open_ms(sim.clock.now_ms() - (days + 2) * DAY_MS, "1d")
        config = config_for(
            base_config, sim, performance={"api_rate_limit": 100_000}, exchange={"ohlcv_page_limit": page}
        )
        async with OptimizedDataCollector(config) as collector:
            report = await collector.collect(start=start, end=start + days * DAY_MS)
            stats = sim.stats()
            assert report.ok, report.summary()
            assert stats["weight"] > limit * 1.5  # the workload really needs more than a minute
            if long_run:
                assert stats["weight"] > 10_000
            assert collector.client.limiter.stats.waits > 0  # the budget was used up, then waited out
            assert stats["418"] == 0 and report.http_418 == 0
            assert stats["429"] <= 1
            await stored_equals_sim(collector, sim, start, start + days * DAY_MS)


async def test_sigkill_at_three_points_then_resume(
    base_config: dict[str, Any], pg_schema: str, tmp_path: Path
) -> None:
    days = 10
    async with SimulatedExchange(symbols=SYMBOLS, seed=5, gaps={}, latency_ms=40) as sim:
        start = RANGE_START_MS
        end = start + days * DAY_MS
        # Few pages in flight: each write holds a few pages, so a run cannot go from the last kill
        # point to complete in one write (with the default 32 pages it sometimes did, leaving
        # nothing for the restart to prove).
        performance = {"pages_in_flight": 2, "pages_in_flight_per_pair": 1}
        config = config_for(
            base_config, sim, start=local_iso(start), end=local_iso(end), performance=performance
        )
        path = write_config(tmp_path / "config.yaml", config)
        total = sum(len(sim.klines(s, tf, start, end)) for s in SYMBOLS for tf in TIMEFRAMES)
        for fraction in (0.1, 0.3, 0.55):
            proc = await start_script(path, tmp_path)
            try:
                # polling the database is the point: kill once this much is stored
                while proc.returncode is None and await count_rows(pg_schema) < total * fraction:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            finally:
                if proc.returncode is None:
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        # What the restart must fetch: exactly the pages of the ranges with no coverage.
        store = open_store(config)
        await store.initialize()
        try:
            expected_pages = 0
            for s in SYMBOLS:
                inst = await store.ensure_instrument("sim-binance", s, base=s.split("/")[0], quote="USDT")
                for tf in TIMEFRAMES:
                    plan = plan_backfill(
                        s,
                        tf,
                        start,
                        end,
                        covered=await store.coverage(inst.id, tf),
                        listing_ms=inst.listing_ms,
                        server_now_ms=sim.clock.now_ms(),
                    )
                    expected_pages += len(plan.pages)
                    if inst.listing_ms is None and plan.pages:
                        expected_pages += 1  # the listing lookup of a symbol killed before it
        finally:
            await store.close()
        assert expected_pages > 0
        before = klines_requests(sim)
        code, out, err = await run_script("--config", str(path), cwd=tmp_path)
        assert code == 0, out + err
        assert klines_requests(sim) - before <= expected_pages + 3  # at most one listing lookup per symbol
        assert klines_requests(sim) - before >= expected_pages - 3
        async with OptimizedDataCollector(config) as collector:
            await stored_equals_sim(collector, sim, start, end)


BAD_CASES = [
    "unknown symbol",
    "unknown timeframe",
    "start after end",
    "malformed yaml",
    "database down",
    "exchange down",
]


@pytest.mark.parametrize("case", BAD_CASES)
async def test_bad_input_one_line_and_exit_code(
    case: str, base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, tmp_path: Path
) -> None:
    config = config_for(base_config, sim, start="3d", end="1d")
    args: list[str] = []
    expected = 2
    if case == "unknown symbol":
        args = ["--symbols", "NOPE/USDT"]
    elif case == "unknown timeframe":
        args = ["--timeframes", "1m,7m"]
    elif case == "start after end":
        args = ["--start", "1d", "--end", "3d"]
    elif case == "database down":
        config["database"] = {
            "url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
            "connect_timeout_s": 2,
        }
        expected = 1
    elif case == "exchange down":
        port = free_port()
        config["exchange"]["urls"] = {
            "api": {"public": f"http://127.0.0.1:{port}/api/v3", "private": f"http://127.0.0.1:{port}/api/v3"}
        }
        expected = 1
    path = write_config(tmp_path / "config.yaml", config)
    if case == "malformed yaml":
        path.write_text("database: {url: [unclosed\n", encoding="utf-8")
    code, out, err = await run_script("--config", str(path), *args, cwd=tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert await count_rows(pg_schema) == 0


async def test_demo_without_database_or_redis(tmp_path: Path) -> None:
    closed = free_port()
    config = {
        "database": {"url": f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/none"},
        "redis": {"url": f"redis://127.0.0.1:{closed}/0"},
        "logging": {"file": "logs/demo.log"},
    }
    path = write_config(tmp_path / "config.yaml", config)
    code, out, err = await run_script("--config", str(path), "--demo", cwd=tmp_path, timeout_s=120)
    assert code == 0, out + err
    assert "SQLite" in out and "18/18 pairs complete" in out
    assert (tmp_path / "data" / "demo.db").exists()
    assert "SOL/USDT 1h, last rows:" in out


async def test_repair_gaps_refetches_holes(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str
) -> None:
    start, end = RANGE_START_MS, RANGE_START_MS + 2 * DAY_MS
    config = config_for(base_config, sim, symbols=["SOL/USDT"], timeframes=["1m", "1h"])
    async with OptimizedDataCollector(config) as collector:
        assert (await collector.collect(start=start, end=end)).ok
        inst = await collector.instrument("SOL/USDT")
        lost = (start + 100 * MINUTE_MS, start + 130 * MINUTE_MS)
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(
                f'DELETE FROM "{pg_schema}".ohlcv WHERE instrument_id = $1 AND timeframe = $2 '
                "AND ts >= $3 AND ts < $4",
                inst.id,
                TIMEFRAME_CODE_1M,
                *lost,
            )
        finally:
            await conn.close()
        gaps = await collector.find_gaps("SOL/USDT", "1m", start, end)
        assert [(g.start_ms, g.end_ms, g.kind) for g in gaps] == [(*lost, "hole")]
        report = await collector.repair_gaps("SOL/USDT", "1m", start, end)
        assert report.gaps_found == 1 and report.gaps_repaired == 1 and report.rows_written == 30
        assert await collector.find_gaps("SOL/USDT", "1m", start, end) == []
        await stored_equals_sim(collector, sim, start, end, ["SOL/USDT"], ["1m"])


async def test_sigint_stops_gracefully_and_the_next_run_resumes(
    base_config: dict[str, Any], pg_schema: str, tmp_path: Path
) -> None:
    async with SimulatedExchange(symbols=SYMBOLS, seed=9, gaps={}, latency_ms=40) as sim:
        start, end = RANGE_START_MS, RANGE_START_MS + 10 * DAY_MS
        config = config_for(base_config, sim, start=local_iso(start), end=local_iso(end))
        path = write_config(tmp_path / "config.yaml", config)
        # The simulator answers 30 of the run's ~70 requests and holds the rest: the SIGINT then
        # surely lands mid-run, however slow or fast this machine is (a poll on the row count
        # alone once saw the 1.2 s run finish first, and the run rightly exited 0).
        sim.hold_rest(after=30)
        proc = await start_script(path, tmp_path, capture=True)
        while proc.returncode is None and (  # noqa: ASYNC110
            sim.rest_held == 0 or await count_rows(pg_schema) == 0
        ):
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        stopping = await read_until(proc.stderr, b"stopping:", timeout_s=60)
        sim.release_rest()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        err = stopping + err
        assert proc.returncode == 130, out.decode() + err.decode()
        assert "interrupted" in out.decode() and "Traceback" not in err.decode()
        stored = await count_rows(pg_schema)
        total = sum(len(sim.klines(s, tf, start, end)) for s in SYMBOLS for tf in TIMEFRAMES)
        assert 0 < stored < total
        code, out2, err2 = await run_script("--config", str(path), cwd=tmp_path)
        assert code == 0, out2 + err2
        assert "skipped (already stored) 0" in out2  # nothing stored before was fetched again
        async with OptimizedDataCollector(config) as collector:
            await stored_equals_sim(collector, sim, start, end)
