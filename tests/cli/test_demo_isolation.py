"""The demo never mixes with real data (issue 10, "Demo isolation").

A second simulator with another seed stands in for the real exchange, labelled ``binance``; the
demo's simulator (seed 42) is labelled ``sim-binance``. Real PostgreSQL, real Redis, real ccxt,
and the real scripts as subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio

from data_collector.config import load_config
from data_collector.demo_migration import migrate_demo_rows
from data_collector.health import run_checks
from data_collector.markets import DAY_MS, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.storage import open_store
from tests.support.backfill import pg_rows, write_config
from tests.support.backfill import stored_equals_sim as stored_equals
from tests.support.services import PG_ADMIN_DSN, REDIS_URL
from tests.support.streaming import read_until

ROOT = Path(__file__).resolve().parents[2]
COLLECT = ROOT / "scripts" / "optimized_collection.py"
STREAM = ROOT / "scripts" / "stream_market_data.py"
SYMBOLS = ["SOL/USDT", "BTC/USDT"]
TIMEFRAMES = ["1h", "1d"]
REAL_SEED = 7


def real_config(base_config: dict[str, Any], sim: SimulatedExchange, **extra: Any) -> dict[str, Any]:
    """The stand-in for the real exchange: a simulator, labelled as the real venue."""
    return {
        **base_config,
        "exchange": {**sim.exchange_config(), "name": "binance", "timeout_s": 2.0},
        "symbols": SYMBOLS,
        "timeframes": TIMEFRAMES,
        "performance": {"api_rate_limit": 100_000},
        **extra,
    }


@pytest.fixture
async def real_sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=[*SYMBOLS, "ETH/USDT"], seed=REAL_SEED) as sim:
        yield sim


async def run(script: Path, *args: str, cwd: Path, timeout_s: float = 120) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC__")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def snapshot(schema: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Candles, coverage and instruments: to prove a dry run changes nothing."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        cov = await conn.fetch(f'SELECT * FROM "{schema}".coverage ORDER BY 1, 2, 3, 4, 5')
        inst = await conn.fetch(f'SELECT * FROM "{schema}".instruments ORDER BY id')
    finally:
        await conn.close()
    return await pg_rows(schema), [tuple(r) for r in cov], [tuple(r) for r in inst]


def midnight(now_ms: int) -> int:
    """Today's 00:00 UTC: candles opening before it have all closed."""
    return candle_open_ms(now_ms, "1d")


def check(report: Any, name: str) -> Any:
    (found,) = [c for c in report.checks if c.name == name]
    return found


async def test_demo_script_never_writes_into_the_configured_database_then_a_real_run_writes_all(
    base_config: dict[str, Any], pg_schema: str, real_sim: SimulatedExchange, tmp_path: Path
) -> None:
    user = {**base_config, "symbols": SYMBOLS, "timeframes": TIMEFRAMES}
    path = write_config(tmp_path / "config.yaml", user)
    code, out, err = await run(COLLECT, "--config", str(path), "--demo", cwd=tmp_path)
    assert code == 0, out + err
    demo_db = tmp_path / "data" / "demo.db"
    assert f"SQLite at {demo_db}" in out and "'sim-binance'" in out
    assert await pg_rows(pg_schema) == []  # the configured database got nothing
    with sqlite3.connect(demo_db) as conn:
        labels = conn.execute("SELECT DISTINCT exchange FROM instruments").fetchall()
        demo_rows = conn.execute("SELECT count(*) FROM ohlcv").fetchone()[0]
    assert labels == [("sim-binance",)] and demo_rows > 0

    # The real venue's health check counts none of the demo's rows, even pointed at its file.
    for database in (user["database"], {"url": f"sqlite+aiosqlite:///{demo_db}"}):
        report = await run_checks(load_config({**user, "database": database}), skip={"exchange"})
        assert check(report, "freshness").detail.startswith("no data yet"), database

    # The real venue over the demo's range: every candle is written, the real values stored.
    now_ms = real_sim.clock.now_ms()
    # Up to today's midnight: no candle of the range is still forming.
    start, end = candle_open_ms(now_ms - 30 * DAY_MS, "1d"), candle_open_ms(now_ms, "1d")
    async with OptimizedDataCollector(real_config(base_config, real_sim)) as collector:
        result = await collector.collect(start=start, end=end)
        assert result.ok, result.summary()
        assert result.rows_written == sum(
            len(real_sim.klines(s, tf, start, end)) for s in SYMBOLS for tf in TIMEFRAMES
        )
        await stored_equals(collector, real_sim, start, end, SYMBOLS, TIMEFRAMES)
    assert {r[0] for r in await pg_rows(pg_schema)} == {"binance"}


async def test_demo_script_refuses_the_configured_database_as_its_own(
    base_config: dict[str, Any], pg_schema: str, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "config.yaml", base_config)
    db = base_config["database"]
    code, out, err = await run(
        COLLECT, "--config", str(path), "--demo", "--demo-db", db["url"], "--demo-schema", db["schema"],
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "configured database" in err, out + err
    assert await pg_rows(pg_schema) == []


async def test_rows_of_another_label_are_never_trusted_in_one_database(
    base_config: dict[str, Any], pg_schema: str, real_sim: SimulatedExchange
) -> None:
    """Demo rows (sim-binance) and the real venue's share one database and stay apart."""
    async with SimulatedExchange(symbols=SYMBOLS, seed=42) as demo_sim:
        now_ms = demo_sim.clock.now_ms()
        start = candle_open_ms(now_ms - 3 * DAY_MS, "1d")
        demo = {**real_config(base_config, demo_sim), "exchange": demo_sim.exchange_config()}
        async with OptimizedDataCollector(demo) as collector:
            assert (await collector.collect(start=start)).ok
            demo_ids = {s: (await collector.instrument(s)).id for s in SYMBOLS}
        # Up to the newest closed hour: fresh, had the health check trusted them.
        real = load_config(real_config(base_config, real_sim))
        report = await run_checks(real, skip={"exchange"})
        assert check(report, "freshness").detail == "no data yet", check(report, "freshness")

        async with OptimizedDataCollector(real) as collector:
            result = await collector.collect(start=start)
            assert result.ok, result.summary()
            await stored_equals(collector, real_sim, start, midnight(now_ms), SYMBOLS, TIMEFRAMES)
            for symbol in SYMBOLS:
                inst = await collector.instrument(symbol)
                assert inst.exchange == "binance" and inst.id != demo_ids[symbol]
                # Coverage is per label: the real instrument's covers only what the real run wrote.
                demo_cov = await collector.store.coverage(demo_ids[symbol], "1h")
                real_cov = await collector.store.coverage(inst.id, "1h")
                assert demo_cov and real_cov and demo_cov[0].start_ms == real_cov[0].start_ms == start
        # The demo's rows are still the demo simulator's, untouched by the real run.
        async with OptimizedDataCollector(demo) as collector:
            await stored_equals(collector, demo_sim, start, midnight(now_ms), SYMBOLS, TIMEFRAMES)
        report = await run_checks(real, skip={"exchange"})
        assert check(report, "freshness").status == "ok", check(report, "freshness")


async def test_demo_streamer_writes_under_sim_binance_and_the_health_check_ignores_it(
    redis_prefix: str, tmp_path: Path
) -> None:
    user = {"redis": {"url": REDIS_URL, "prefix": redis_prefix}, "logging": {"file": None}}
    path = write_config(tmp_path / "config.yaml", user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC__")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(STREAM), "--config", str(path), "--demo", "--symbols", "SOL/USDT",
        "--channels", "trade,kline_1m", "--status-interval", "0.3", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        seen = await read_until(proc.stdout, b" written ", timeout_s=60)
        assert f"{redis_prefix}:*:sim-binance:*".encode() in seen
        assert await client.xlen(f"{redis_prefix}:stream:sim-binance:trade:SOL/USDT") > 0
        assert [k async for k in client.scan_iter(match=f"{redis_prefix}:*:binance:*")] == []
        report = await run_checks(load_config(user), skip={"exchange", "database", "freshness"})
        assert check(report, "stream").detail == "no stream messages yet", check(report, "stream")
        (streamer,) = [c for c in report.checks if c.name.startswith("heartbeat:streamer:")]
        assert streamer.status == "warn" and "'sim-binance'" in streamer.detail, streamer
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        await client.aclose()
    assert proc.returncode == 130, err.decode()  # stopped by Ctrl-C


async def test_config_name_defaults_to_id_and_is_checked_like_a_key_part(tmp_path: Path) -> None:
    assert load_config({"exchange": {"id": "kraken"}}).exchange.name == "kraken"
    assert load_config({}).exchange.name == "binance"
    path = write_config(tmp_path / "config.yaml", {"exchange": {"name": "my venue"}})
    code, out, err = await run(COLLECT, "--config", str(path), cwd=tmp_path)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {path}: exchange.name: must be a venue label such as 'binance': "
        "1-64 letters, digits, '_', '.', '@' or '-'"
    ], err


async def test_migration_removes_exactly_the_old_demo_rows(
    base_config: dict[str, Any], pg_schema: str, real_sim: SimulatedExchange, tmp_path: Path
) -> None:
    # The old behaviour: the demo's simulator (seed 42, default market) stored as 'binance'.
    async with SimulatedExchange(symbols=SYMBOLS, seed=42) as demo_sim:
        now_ms = demo_sim.clock.now_ms()
        start = candle_open_ms(now_ms - 10 * DAY_MS, "1d")
        old_demo = real_config(base_config, demo_sim)
        async with OptimizedDataCollector(old_demo) as collector:
            assert (await collector.collect(start=start)).ok
            demo_listing = (await collector.instrument("SOL/USDT")).listing_ms
        demo_count = len(await pg_rows(pg_schema))
        # Real rows under 'binance' too: an earlier range of the demo's symbols, and ETH/USDT.
        earlier = start - 5 * DAY_MS
        async with OptimizedDataCollector(real_config(base_config, real_sim)) as collector:
            assert (await collector.collect(start=earlier, end=start)).ok
            assert (await collector.collect(symbols=["ETH/USDT"], start=start)).ok
            eth_listing = (await collector.instrument("ETH/USDT")).listing_ms
        before = await snapshot(pg_schema)
        real_count = len(before[0]) - demo_count
        assert demo_count > 0 and real_count > 0

        # A dry run reports and changes nothing.
        async with open_store(load_config(old_demo)) as store:
            dry = await migrate_demo_rows(store)
        assert dry.simulated_rows == demo_count and dry.kept_rows == real_count
        assert set(dry.listings_reset) == set(SYMBOLS) and not dry.applied
        assert await snapshot(pg_schema) == before

        # The script's dry run says the same; --apply removes exactly the simulated rows.
        path = write_config(tmp_path / "config.yaml", {**base_config, "exchange": demo_sim.exchange_config()})
        code, out, err = await run(COLLECT, "--config", str(path), "--migrate-demo-rows", cwd=tmp_path)
        assert code == 0 and f"{demo_count:,} simulated rows to remove" in out, out + err
        assert await snapshot(pg_schema) == before
        code, out, err = await run(
            COLLECT, "--config", str(path), "--migrate-demo-rows", "--apply", cwd=tmp_path
        )
        assert code == 0 and f"{demo_count:,} simulated rows removed" in out, out + err
        rows, coverage, instruments = await snapshot(pg_schema)
        # What the real venue wrote: ETH/USDT, and the demo's symbols before the demo's range.
        assert rows == [r for r in before[0] if r[1] == "ETH/USDT" or r[3] < start]
        assert len(rows) == real_count
        listing = {r[2]: r[6] for r in instruments}
        assert (
            listing["SOL/USDT"] is None and listing["BTC/USDT"] is None and listing["ETH/USDT"] == eth_listing
        )
        assert demo_listing is not None
        # No coverage is left over the demo's range for the demo's symbols; ETH's is intact.
        ids = {r[2]: r[0] for r in instruments}
        for r in coverage:
            if r[0] in (ids["SOL/USDT"], ids["BTC/USDT"]):
                assert r[4] <= start, r
        assert any(r[0] == ids["ETH/USDT"] and r[4] > start for r in coverage)

        # Idempotent: a second apply finds nothing.
        after = await snapshot(pg_schema)
        async with open_store(load_config(old_demo)) as store:
            again = await migrate_demo_rows(store, apply=True)
        assert not again.changes and "nothing to do" in again.summary() and again.kept_rows == real_count
        assert await snapshot(pg_schema) == after

    # The real venue now fills the demo's range with its own values.
    async with OptimizedDataCollector(real_config(base_config, real_sim)) as collector:
        result = await collector.collect(start=start)
        assert result.ok, result.summary()
        assert result.rows_written >= sum(
            len(real_sim.klines(s, tf, start, midnight(now_ms))) for s in SYMBOLS for tf in TIMEFRAMES
        )
        await stored_equals(collector, real_sim, earlier, midnight(now_ms), SYMBOLS, TIMEFRAMES)
        await stored_equals(collector, real_sim, start, midnight(now_ms), ["ETH/USDT"], TIMEFRAMES)
