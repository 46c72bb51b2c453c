"""scripts/health_check.py and data_collector.health against real servers.

Acceptance 7 runs against a private PostgreSQL cluster that the test starts and stops (initdb as
user postgres on a free port), never the shared one.
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiohttp import web

from data_collector.config import load_config
from data_collector.health import exchange_ping_url, run_checks
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS, TIMEFRAME_CODES, candle_open_ms
from data_collector.redis.keys import stream_key
from tests.support.services import PG_ADMIN_DSN, PG_URL, REDIS_URL, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "health_check.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, so that stopping it disturbs nobody."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dc_health_pg_"))
        shutil.chown(self.dir, "postgres")
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def write_config(path: Path, db_url: str, prefix: str, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "database": {"url": db_url, "connect_timeout_s": 2},
        "redis": {"url": REDIS_URL, "prefix": prefix},
        "logging": {"file": None},
        "metrics": {"check_timeout_s": 3},
        "symbols": ["BTC/USDT"],
        "timeframes": ["1m", "1h"],
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_exit_1_naming_postgresql_when_down_and_0_when_back(
    private_pg: PrivatePostgres, tmp_path: Path, redis_prefix: str
) -> None:
    config = str(write_config(tmp_path / "c.yaml", private_pg.url, redis_prefix))
    up = run_script("--config", config, "--skip", "exchange")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "healthy" in up.stdout

    private_pg.stop()
    down = run_script("--config", config, "--skip", "exchange")
    assert down.returncode == 1, down.stdout
    assert f"UNHEALTHY: postgresql: DOWN (connection refused 127.0.0.1:{private_pg.port})" in down.stdout
    as_json = run_script("--config", config, "--skip", "exchange", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["healthy"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}["postgresql"] == "fail"

    private_pg.start()
    back = run_script("--config", config, "--skip", "exchange")
    assert back.returncode == 0, back.stdout


def test_continuous_reports_outage_and_recovery_without_exiting(
    private_pg: PrivatePostgres, tmp_path: Path, redis_prefix: str
) -> None:
    config = str(write_config(tmp_path / "c.yaml", private_pg.url, redis_prefix))
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", config, "--skip", "exchange", "--continuous", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def expect(text: str, limit_s: float = 30) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, "health_check exited:\n" + "".join(seen)
                continue
            seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} not printed; got:\n" + "".join(seen))

    try:
        expect("healthy")
        private_pg.stop()
        expect(f"postgresql: ok -> fail: DOWN (connection refused 127.0.0.1:{private_pg.port})")
        expect("UNHEALTHY")
        time.sleep(2.5)  # a few more rounds while it is down: still running, nothing new printed
        assert proc.poll() is None
        private_pg.start()
        expect("postgresql: fail -> ok")
        expect("healthy")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130  # stopped by Ctrl-C
        rest = proc.stdout.read() if proc.stdout else ""
        assert "stopped" in "".join(seen) + rest + "".join(list(lines.queue))
        assert "Traceback" not in "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_arguments_and_config_exit_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("performance:\n  db_pool_size: -1\n", encoding="utf-8")
    result = run_script("--config", str(bad))
    assert result.returncode == 2
    assert "performance.db_pool_size" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert run_script("--config", str(tmp_path / "missing.yaml")).returncode == 2
    assert run_script("--continuous", "0").returncode == 2
    assert run_script("--skip", "nosuch").returncode == 2


async def create_tables(schema: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    await conn.execute(
        f"""
        CREATE TABLE "{schema}".instruments (id integer PRIMARY KEY, exchange text, symbol text);
        CREATE TABLE "{schema}".ohlcv (instrument_id integer, timeframe smallint, ts bigint,
            open double precision, high double precision, low double precision,
            close double precision, volume double precision,
            PRIMARY KEY (instrument_id, timeframe, ts));
        """
    )
    return conn


async def test_freshness_per_symbol_and_timeframe(pg_schema: str, redis_prefix: str) -> None:
    now_ms = 1_800_000_000_000 - (1_800_000_000_000 % HOUR_MS)
    config = load_config(
        {
            "database": {"url": PG_URL, "schema": pg_schema},
            "redis": {"url": REDIS_URL, "prefix": redis_prefix},
            "symbols": ["BTC/USDT", "ETH/USDT"],
            "timeframes": ["1m", "1h"],
            "logging": {"file": None},
        }
    )
    skip = {"exchange", "stream", "heartbeat", "disk", "redis", "database"}
    report = await run_checks(config, skip=skip, now_ms=now_ms)
    assert report.checks[0].detail == "no data yet (tables not created)"
    assert report.checks[0].status == "warn" and report.healthy

    conn = await create_tables(pg_schema)
    try:
        await conn.execute(
            f'INSERT INTO "{pg_schema}".instruments VALUES (1, $1, $2), (2, $1, $3)',
            "binance",
            "BTC/USDT",
            "ETH/USDT",
        )
        rows = [
            (1, TIMEFRAME_CODES["1m"], now_ms - 2 * MINUTE_MS),
            (1, TIMEFRAME_CODES["1h"], now_ms - HOUR_MS),
            (2, TIMEFRAME_CODES["1m"], now_ms - 3 * HOUR_MS),  # stale
        ]
        await conn.executemany(f'INSERT INTO "{pg_schema}".ohlcv VALUES ($1, $2, $3, 1, 1, 1, 1, 1)', rows)
        report = await run_checks(config, skip=skip, now_ms=now_ms)
        fresh = report.checks[0]
        assert fresh.status == "warn"
        assert fresh.detail.startswith("2/4 fresh")
        assert "ETH/USDT 1m 3.0h old" in fresh.detail and "no data: ETH/USDT 1h" in fresh.detail
        assert fresh.data["age_s"]["BTC/USDT 1m"] == 120

        await conn.execute(
            f'INSERT INTO "{pg_schema}".ohlcv VALUES (2, $1, $2, 1, 1, 1, 1, 1), (2, $3, $4, 1, 1, 1, 1, 1)',
            TIMEFRAME_CODES["1m"],
            now_ms - MINUTE_MS,
            TIMEFRAME_CODES["1h"],
            now_ms - HOUR_MS,
        )
        report = await run_checks(config, skip=skip, now_ms=now_ms)
        assert report.checks[0].status == "ok" and report.checks[0].detail.startswith("4/4 fresh")
    finally:
        await conn.close()


async def test_sqlite_database_and_freshness(tmp_path: Path, redis_prefix: str) -> None:
    db = tmp_path / "candles.db"
    config = load_config(
        {
            "database": {"url": f"sqlite+aiosqlite:///{db}"},
            "redis": {"url": REDIS_URL, "prefix": redis_prefix},
            "symbols": ["SOL/USDT"],
            "timeframes": ["1m"],
            "logging": {"file": None},
        }
    )
    skip = {"exchange", "stream", "heartbeat", "redis"}
    report = await run_checks(config, skip=skip)
    by_name = {c.name: c for c in report.checks}
    assert by_name["sqlite"].status == "warn" and "no database file yet" in by_name["sqlite"].detail
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE instruments (id INTEGER PRIMARY KEY, exchange TEXT, symbol TEXT);"
        "CREATE TABLE ohlcv (instrument_id INTEGER, timeframe INTEGER, ts INTEGER, open REAL, high REAL,"
        " low REAL, close REAL, volume REAL, PRIMARY KEY (instrument_id, timeframe, ts));"
    )
    now_ms = int(time.time() * 1000)
    conn.execute("INSERT INTO instruments VALUES (1, 'binance', 'SOL/USDT')")
    conn.execute(
        "INSERT INTO ohlcv VALUES (1, ?, ?, 1, 1, 1, 1, 1)", (TIMEFRAME_CODES["1m"], now_ms - 60_000)
    )
    conn.commit()
    conn.close()
    report = await run_checks(config, skip=skip, now_ms=now_ms)
    by_name = {c.name: c for c in report.checks}
    assert by_name["sqlite"].status == "ok"
    assert by_name["freshness"].status == "ok", by_name["freshness"].detail
    assert by_name["disk"].status in ("ok", "warn")


async def test_stream_age_from_redis_stream_ids(redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    config = load_config(
        {
            "redis": {"url": REDIS_URL, "prefix": redis_prefix},
            "symbols": ["SOL/USDT"],
            "streaming": {"channels": ["trade"]},
            "logging": {"file": None},
        }
    )
    skip = {"exchange", "freshness", "heartbeat", "disk", "database"}
    report = await run_checks(config, skip=skip)
    stream = next(c for c in report.checks if c.name == "stream")
    assert stream.status == "warn" and stream.detail == "no stream messages yet"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.xadd(stream_key(redis_prefix, "binance", "trade", "SOL/USDT"), {"d": b"x"})
        report = await run_checks(config, skip=skip)
        stream = next(c for c in report.checks if c.name == "stream")
        assert stream.status == "ok", stream.detail
        later = await run_checks(config, skip=skip, now_ms=int(time.time() * 1000) + 120_000)
        assert next(c for c in later.checks if c.name == "stream").status == "warn"
    finally:
        await client.aclose()


@pytest.fixture
async def fake_exchange() -> AsyncIterator[str]:
    """A loopback HTTP server answering the simulator's /api/v3/ping as PROTOCOL.md describes."""

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/api/v3/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/api/v3"
    finally:
        await runner.cleanup()


async def test_exchange_ping_through_configured_url(fake_exchange: str, redis_prefix: str) -> None:
    def config(url: str) -> Any:
        return load_config(
            {
                "exchange": {"urls": {"api": {"public": url}}},
                "redis": {"prefix": redis_prefix},
                "logging": {"file": None},
            }
        )

    assert exchange_ping_url(config(fake_exchange)) == fake_exchange + "/ping"
    assert (
        exchange_ping_url(load_config({"logging": {"file": None}})) == "https://api.binance.com/api/v3/ping"
    )
    only = set(["database", "redis", "freshness", "stream", "heartbeat", "disk"])
    report = await run_checks(config(fake_exchange), skip=only)
    assert report.checks[0].status == "ok" and "HTTP 200" in report.checks[0].detail
    closed = f"http://127.0.0.1:{free_port()}/api/v3"
    report = await run_checks(config(closed), skip=only)
    assert report.checks[0].status == "fail"
    assert report.checks[0].detail == f"UNREACHABLE (connection refused {closed}/ping)"
    assert not report.healthy


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    """A database of the test's own: schemas named by reserved words (``order``, ``user``) exist
    once per database, so a database per test keeps parallel runs apart. Dropped after."""
    name = f"dc_health_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def server_version_shown() -> str:
    """The first word of ``SHOW server_version`` (``15.20`` of ``15.20 (Debian 15.20-0+deb12u1)``)."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


@pytest.mark.parametrize("schema", ["order", "user"])
async def test_health_check_reads_freshness_from_a_reserved_word_schema(
    own_database: str, redis_prefix: str, tmp_path: Path, schema: str
) -> None:
    from data_collector.optimized_collector import OptimizedDataCollector
    from data_collector.simulator import SimulatedExchange

    symbols, timeframes = ["BTC/USDT", "ETH/USDT"], ["1m", "1h"]
    async with SimulatedExchange(symbols=symbols, seed=11, gaps={}) as sim:
        end_ms = candle_open_ms(sim.clock.now_ms() - 2 * DAY_MS, "1h")
        start_ms = end_ms - 6 * HOUR_MS
        config: dict[str, Any] = {
            "database": {"url": PG_URL.rsplit("/", 1)[0] + f"/{own_database}", "schema": schema},
            "redis": {"url": REDIS_URL, "prefix": redis_prefix},
            "exchange": {**sim.exchange_config(), "timeout_s": 5.0},
            "performance": {"api_rate_limit": 100_000},
            "metrics": {"check_timeout_s": 20},
            "logging": {"file": None},
            "symbols": symbols,
            "timeframes": timeframes,
            "start": datetime.fromtimestamp(start_ms / 1000, UTC).isoformat(),
            "end": datetime.fromtimestamp(end_ms / 1000, UTC).isoformat(),
        }
        async with OptimizedDataCollector(config) as collector:
            report = await collector.collect()
        assert report.ok, report.summary()
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        # The simulator runs on this loop: wait for the script without blocking it.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--config",
            str(path),
            "--json",
            *("--skip", "stream", "--skip", "heartbeat", "--skip", "disk"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        newest = {(s, tf): sim.klines(s, tf, start_ms, end_ms)[-1][0] for s in symbols for tf in timeframes}
    assert proc.returncode == 0, out.decode() + err.decode()
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    fresh = checks["freshness"]
    assert fresh["status"] == "ok", fresh["detail"]
    assert fresh["detail"].startswith("4/4 fresh"), fresh["detail"]
    assert fresh["data"]["age_s"] == {
        f"{s} {tf}": (end_ms - open_ms) / 1000 for (s, tf), open_ms in newest.items()
    }
    assert checks["postgresql"]["status"] == "ok"
    assert checks["postgresql"]["detail"].endswith(f"PostgreSQL {await server_version_shown()}")
    assert checks["exchange"]["status"] == "ok", checks["exchange"]["detail"]


async def test_health_check_prints_the_server_version(redis_prefix: str, tmp_path: Path) -> None:
    """15.20 was printed as "PostgreSQL 15.0": asyncpg's ServerVersion keeps 20 in ``micro``."""
    config = str(write_config(tmp_path / "c.yaml", PG_URL, redis_prefix))
    result = run_script("--config", config, "--json", *("--skip", "exchange", "--skip", "freshness"))
    assert result.returncode == 0, result.stdout + result.stderr
    version = await server_version_shown()
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["postgresql"]["detail"] == f"up 127.0.0.1:5432, PostgreSQL {version}"
