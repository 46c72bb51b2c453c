"""Scenario 1, backfill under faults, end to end with the real script in a subprocess.

During one backfill (``scripts/optimized_collection.py`` against the simulator and a private
PostgreSQL behind the fault proxy):

* 5% of requests fail: 5xx, resets, hangs and malformed bodies;
* a 429 storm (the weight budget cut to nearly nothing until the minute turns);
* PostgreSQL restarted twice (one ``fast``, one ``immediate`` i.e. crash-like);
* a connection killed in the middle of a COPY (``pg_terminate_backend``, the link slowed so the
  COPY is caught in flight);
* the collector SIGKILLed five times and restarted.

The final ``ohlcv`` must equal the simulator's truth: 0 missing (the simulator's maintenance gaps
are absent from the truth too), 0 duplicated, 0 different, 0 × 418.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chaos.helpers import stored_candles
from tests.chaos.proxy import FaultProxy
from tests.chaos.report import ScenarioReport
from tests.chaos.servers import PrivatePostgres
from tests.support.waiting import wait_for

simulator = pytest.importorskip("data_collector.simulator")
pytest.importorskip("data_collector.storage.postgres")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "optimized_collection.py"
DAY_MS = 86_400_000
TIMEFRAMES = ["1m", "5m", "1h"]
TF_CODES: dict[str, int] = {}


def _truth(
    sim: Any, symbols: list[str], start_ms: int, end_ms: int
) -> dict[tuple[str, str, int], tuple[float, ...]]:
    out = {}
    for symbol in symbols:
        for tf in TIMEFRAMES:
            for k in sim.klines(symbol, tf, start_ms, end_ms):
                out[(symbol, tf, int(k[0]))] = tuple(float(x) for x in k[1:6])
    return out


async def _stored(
    pg: PrivatePostgres, schema: str
) -> tuple[dict[tuple[str, str, int], tuple[float, ...]], int]:
    conn = await pg.connect()
    try:
        return await stored_candles(conn, schema)
    finally:
        await conn.close()


class Backfill:
    """The collector subprocess, restarted after every kill or failed run until it exits 0."""

    def __init__(self, config_path: Path, logs: Path, report: ScenarioReport) -> None:
        self.config_path = config_path
        self.logs = logs
        self.report = report
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.exit_codes: list[int] = []
        self.started = asyncio.Event()

    async def run_until_done(self, max_runs: int, keep_going: asyncio.Event) -> int:
        while self.runs < max_runs:
            self.runs += 1
            out = open(self.logs / f"run{self.runs}.out", "wb")  # noqa: ASYNC230 - a log sink
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(SCRIPT),
                    "--config",
                    str(self.config_path),
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=str(self.logs),
                )
                self.report.rss.watch(self.proc.pid)
                self.started.set()
                code = await self.proc.wait()
            finally:
                out.close()
            self.exit_codes.append(code)
            if code == 0 and keep_going.is_set():
                return code
            if code not in (0, 1, -signal.SIGKILL):
                raise AssertionError(f"collector run {self.runs} exited {code}: {self.tail()}")
        raise AssertionError(f"no clean run after {max_runs} runs: {self.exit_codes}; {self.tail()}")

    def kill(self) -> bool:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            return True
        return False

    def tail(self, n: int = 1500) -> str:
        path = self.logs / f"run{self.runs}.out"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


async def _kill_mid_copy(pg: PrivatePostgres, proxy: FaultProxy, within_s: float) -> int:
    """Slow the link so a COPY is in flight for a while, then pg_terminate_backend it."""
    proxy.bandwidth_bps = 400_000
    conn = await pg.connect()
    try:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            killed = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'data_collector' AND state = 'active' AND query ILIKE 'COPY%'"
            )
            if killed:
                return int(killed)
            await asyncio.sleep(0.01)
        return 0
    finally:
        proxy.bandwidth_bps = None
        await conn.close()


async def _storm_429(sim: Any, report: ScenarioReport) -> None:
    """Cut the weight budget to nearly nothing for the rest of the (simulated) minute.

    The simulator's clock is moved to second 55 first, so the storm lasts about 5 s, not up to 60.
    """
    clock, limiter = sim.clock, sim.limiter
    clock.advance((55_000 - clock.now_ms() % 60_000) % 60_000)
    minute = clock.now_ms() // 60_000
    normal = limiter.limit
    before = sim.stats()["429"]
    limiter.limit = max(limiter.current_used(), 1) + 4
    try:
        # Until the simulated minute turns (its limiter then starts a fresh budget).
        await wait_for(lambda: clock.now_ms() // 60_000 > minute, timeout_s=30, what="the minute to turn")
    finally:
        limiter.limit = normal
    report.extra["storm_429s"] = sim.stats()["429"] - before


@pytest.mark.timeout(1200)  # the --long form runs for minutes
async def test_backfill_under_faults(
    private_pg: PrivatePostgres,
    private_pg_schema: str,
    make_proxy: Any,
    scenario_report: ScenarioReport,
    long_run: bool,
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    symbols = (
        ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
        if not long_run
        else ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT"]
    )
    days = 30 if not long_run else 120
    kills = 5 if not long_run else 10
    end_ms = (int(time.time() * 1000) // DAY_MS - 2) * DAY_MS
    start_ms = end_ms - days * DAY_MS
    report = scenario_report

    async with simulator.SimulatedExchange(symbols=symbols, seed=11) as sim:
        sim.set_latency(250, jitter_ms=100)
        proxy = await make_proxy("127.0.0.1", private_pg.port)
        exchange = sim.exchange_config()
        exchange.update({"timeout_s": 2.0, "max_retries": 12})
        config = {
            "exchange": exchange,
            "symbols": symbols,
            "timeframes": TIMEFRAMES,
            "start": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start_ms / 1000)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(end_ms / 1000)),
            "database": {
                "url": f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/postgres",
                "schema": private_pg_schema,
                "connect_timeout_s": 3,
                "command_timeout_s": 10,
            },
            "performance": {"concurrent_symbols": 2, "db_pool_size": 4},
            "logging": {"file": str(tmp_path / "collector.log"), "level": "INFO"},
        }
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        truth = _truth(sim, symbols, start_ms, end_ms)

        backfill = Backfill(config_path, tmp_path, report)
        done_with_faults = asyncio.Event()
        runner = asyncio.create_task(
            backfill.run_until_done(max_runs=kills + 25, keep_going=done_with_faults)
        )

        async def pause(lo: float = 1.0, hi: float = 2.5) -> None:
            await asyncio.sleep(rng.uniform(lo, hi))

        # 5% of requests fail, spread over the four kinds, for the whole run.
        sim.set_faults(error_rate=0.0125, reset_rate=0.0125, hang_rate=0.0125, malformed_rate=0.0125)
        try:
            await backfill.started.wait()
            plan = ["kill", "pg_fast", "kill", "copy_kill", "kill", "storm", "pg_immediate", "kill"]
            plan += ["kill"] * (kills - plan.count("kill"))
            for action in plan:
                await pause()
                if runner.done():
                    break
                if action == "kill":
                    if backfill.kill():
                        report.fault("sigkill")
                elif action in ("pg_fast", "pg_immediate"):
                    await asyncio.to_thread(private_pg.restart, action[3:])
                    report.fault("pg_restart")
                elif action == "copy_kill":
                    n = await _kill_mid_copy(private_pg, proxy, within_s=15)
                    report.fault("copy_killed", n)
                elif action == "storm":
                    await _storm_429(sim, report)
                    report.fault("429_storm")
        finally:
            done_with_faults.set()
        try:
            await asyncio.wait_for(runner, 240 if not long_run else 900)
        finally:
            backfill.kill()
        stats = sim.stats()

    stored, nrows = await _stored(private_pg, private_pg_schema)
    missing = set(truth) - set(stored)
    extra = set(stored) - set(truth)
    different = [k for k in set(truth) & set(stored) if truth[k] != stored[k]]
    report.expected = len(truth)
    report.found = len(stored)
    report.lost = len(missing)
    report.duplicated = nrows - len(stored)
    report.fault("http_faults", sum(stats["faults"].values()))
    report.extra.update(
        runs=backfill.runs,
        exit_codes=",".join(str(c) for c in backfill.exit_codes),
        early_finishes=backfill.exit_codes[:-1].count(0),
        collector_peak_rss_mb=round(report.rss.peak_children / 2**20),
        extra_rows=len(extra),
        different=len(different),
        http_429=stats["429"],
        http_418=stats["418"],
        requests=stats["requests"],
        sim_faults="/".join(f"{k}:{v}" for k, v in stats["faults"].items()),
    )
    # Survived: every fault, if the data is exact and the last run finished cleanly.
    exact = not missing and not extra and not different and report.duplicated == 0
    report.faults_survived = report.faults_injected if exact and backfill.exit_codes[-1] == 0 else 0

    assert report.extra.get("f_sigkill", 0) >= min(kills, 3), f"too few kills landed: {report.line()}"
    assert report.extra.get("f_pg_restart", 0) == 2
    assert report.extra.get("f_copy_killed", 0) >= 1, "no COPY was caught in flight"
    assert stats["418"] == 0, "the collector kept sending through a 429 and got banned"
    assert not missing, f"{len(missing)} candles missing, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} candles not in the truth, e.g. {sorted(extra)[:3]}"
    assert not different, f"{len(different)} candles differ, e.g. {different[:3]}"
    assert report.duplicated == 0
    report.outcome = "ok"
