"""Exit codes, logs and errors as the README documents them (issue 10, part 5), on the real scripts.

Each point runs ``scripts/optimized_collection.py``, ``scripts/stream_market_data.py`` or
``scripts/health_check.py`` as a subprocess against the simulator, the test's PostgreSQL schema
and Redis prefix. Ctrl-C in the other phases is checked where those phases are tested: during
the backfill in ``tests/backfill/test_collector_e2e.py``, during ``--stream`` in
``test_collection_script_stream.py``, in ``stream_market_data.py`` in
``test_stream_reader_cli.py`` and in ``health_check.py --continuous`` in ``test_health_check.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from data_collector.config import load_config
from data_collector.errors import ConfigError
from data_collector.markets import DAY_MS, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from data_collector.storage import open_store
from tests.support.backfill import pg_rows, stored_equals_sim, write_config
from tests.support.services import REDIS_URL
from tests.support.streaming import read_until

ROOT = Path(__file__).resolve().parents[2]
COLLECT = ROOT / "scripts" / "optimized_collection.py"
STREAM = ROOT / "scripts" / "stream_market_data.py"
HEALTH = ROOT / "scripts" / "health_check.py"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=["SOL/USDT", "BTC/USDT"], seed=11, gaps={}) as exchange:
        yield exchange


def sim_config(base_config: dict[str, Any], sim: SimulatedExchange, **extra: Any) -> dict[str, Any]:
    return {
        **base_config,
        "exchange": {**sim.exchange_config(), "timeout_s": 5.0},
        "timeframes": ["1h"],
        "performance": {"api_rate_limit": 100_000},
        "streaming": {"channels": ["trade"]},
        **extra,
    }


async def start(
    script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DC__")}
    return await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, cwd=cwd, env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def run(script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await start(script, *args, cwd=cwd, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), out.decode(), err.decode()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def two_days(sim: SimulatedExchange) -> tuple[int, int, list[str]]:
    """The two whole days before today's midnight, and their ``--start``/``--end`` arguments."""
    from datetime import UTC, datetime

    end_ms = candle_open_ms(sim.clock.now_ms(), "1d")
    start_ms = end_ms - 2 * DAY_MS

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")

    return start_ms, end_ms, ["--start", iso(start_ms), "--end", iso(end_ms)]


async def test_unknown_symbol_among_several_fails_its_pair_and_the_others_are_collected(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, tmp_path: Path
) -> None:
    config = sim_config(base_config, sim)
    path = write_config(tmp_path / "config.yaml", config)
    start_ms, end_ms, span = two_days(sim)
    code, out, err = await run(
        COLLECT, "--config", str(path), "--symbols", "SOL/USDTT,BTC/USDT", *span, cwd=tmp_path
    )
    assert code == 1, out + err
    assert "FAILED SOL/USDTT 1h: unknown symbol 'SOL/USDTT'" in out, out
    assert "Traceback" not in err
    assert {row[1] for row in await pg_rows(pg_schema)} == {"BTC/USDT"}
    async with OptimizedDataCollector({**config, "symbols": ["BTC/USDT"]}) as collector:
        await stored_equals_sim(collector, sim, start_ms, end_ms, ["BTC/USDT"], ["1h"])

    # Alone, an unknown symbol leaves nothing to collect: the input is what to fix (exit 2).
    code, out, err = await run(COLLECT, "--config", str(path), "--symbols", "SOL/USDTT", *span, cwd=tmp_path)
    assert code == 2 and "unknown symbol 'SOL/USDTT'" in one_line(err), out + err
    # A malformed symbol is a usage error however many others there are.
    for bad in ("BTCUSDT,BTC/USDT", "a b,BTC/USDT"):
        code, out, err = await run(COLLECT, "--config", str(path), "--symbols", bad, *span, cwd=tmp_path)
        assert code == 2 and one_line(err).startswith("error: --symbols:"), (bad, out + err)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DC__DATABASE__ULR": "x"}, "environment: unknown key 'DC__DATABASE__ULR (database.ulr)'"),
        ({"DC__DATABSE__URL": "x"}, "environment: DC__DATABSE__URL: unknown section 'databse'"),
        (
            {"DC__EXCHANGE__ID": "nosuchexchange"},
            "environment: DC__EXCHANGE__ID (exchange.id): 'nosuchexchange'",
        ),
        ({}, "config.yaml: exchange.id: 'nosuchexchange' is not a ccxt exchange id"),
    ],
)
async def test_config_errors_exit_2_naming_the_file_or_the_variable(
    base_config: dict[str, Any], tmp_path: Path, env: dict[str, str], named: str
) -> None:
    config = {**base_config, "exchange": {"id": "binance" if env else "nosuchexchange"}}
    write_config(tmp_path / "config.yaml", config)
    code, out, err = await run(COLLECT, cwd=tmp_path, env=env)
    assert code == 2 and named in one_line(err), out + err


async def test_an_unknown_data_type_exits_2_with_one_line(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    write_config(tmp_path / "config.yaml", {**base_config, "data_types": ["ohlcv", "tardes"]})
    code, out, err = await run(COLLECT, cwd=tmp_path, env={})
    assert code == 2, out + err
    assert one_line(err) == err.strip() and "config.yaml: data_types: unknown data type 'tardes'" in err, err


async def test_misspelled_section_is_refused_by_every_script(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "config.yaml", base_config)
    env = {"DC__DATABSE__URL": "sqlite+aiosqlite:///x.db"}
    for script in (COLLECT, STREAM, HEALTH):
        code, out, err = await run(script, "--config", str(path), cwd=tmp_path, env=env)
        assert code == 2 and "DC__DATABSE__URL" in one_line(err), (script.name, out + err)


async def test_ctrl_c_while_initializing_exits_130(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, tmp_path: Path
) -> None:
    """The exchange accepts the connection and never answers: the run is inside ``initialize``."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    exchange = json.loads(json.dumps(sim.exchange_config()).replace(sim.rest_url, f"http://127.0.0.1:{port}"))
    config = sim_config(base_config, sim, exchange={**exchange, "timeout_s": 60.0})
    path = write_config(tmp_path / "config.yaml", config)
    proc = await start(COLLECT, "--config", str(path), cwd=tmp_path)
    try:
        await asyncio.wait_for(connected.wait(), 60)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert proc.returncode == 130, out.decode() + err.decode()
    assert one_line(err.decode()) == "stopped before the backfill started; nothing was written"
    assert await pg_rows(pg_schema) == []


async def test_log_file_gets_every_error_line_and_the_summary(
    base_config: dict[str, Any], sim: SimulatedExchange, tmp_path: Path
) -> None:
    log_file = tmp_path / "logs" / "run.log"
    config = sim_config(base_config, sim, logging={"file": str(log_file), "level": "INFO"})
    path = write_config(tmp_path / "config.yaml", config)
    _, _, span = two_days(sim)
    code, out, err = await run(
        COLLECT, "--config", str(path), "--symbols", "SOL/USDTT,BTC/USDT", *span, cwd=tmp_path
    )
    assert code == 1, out + err
    logged = log_file.read_text(encoding="utf-8")
    assert "ERROR data_collector.backfill.run: SOL/USDTT 1h failed: unknown symbol 'SOL/USDTT'" in logged
    summary = out[out.index("Collection finished with failures") :]
    for line in summary.splitlines():
        assert line.strip() in logged, line  # the whole summary, line by line

    # An error that ends the run: the line printed on stderr is in the file too.
    sim_down = {**config["exchange"], "urls": {"api": {"public": "http://127.0.0.1:9/api/v3"}}}
    path = write_config(tmp_path / "config.yaml", {**config, "exchange": {**sim_down, "max_retries": 0}})
    code, out, err = await run(COLLECT, "--config", str(path), "--symbols", "BTC/USDT", cwd=tmp_path)
    assert code == 1, out + err
    line = one_line(err)
    assert line.startswith("error: exchange binance is unreachable")
    assert f"ERROR data_collector.cli: {line}" in log_file.read_text(encoding="utf-8")


async def test_stream_script_refuses_a_symbol_the_exchange_does_not_list(
    base_config: dict[str, Any], sim: SimulatedExchange, redis_prefix: str, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "config.yaml", sim_config(base_config, sim))
    code, out, err = await run(STREAM, "--config", str(path), "--symbols", "SOL/USDTT,BTC/USDT", cwd=tmp_path)
    assert code == 2, out + err
    assert (
        one_line(err) == f"error: unknown symbol 'SOL/USDTT': the exchange at {sim.rest_url} does not list it"
    )
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert [k async for k in client.scan_iter(match=f"{redis_prefix}:*")] == []
    finally:
        await client.aclose()


async def test_stream_script_refuses_an_unlisted_perpetual_and_a_spot_symbol_on_futures(
    base_config: dict[str, Any], redis_prefix: str, tmp_path: Path
) -> None:
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=["BTC/USDT:USDT"], seed=11) as futures:
        config = {**sim_config(base_config, futures), "exchange": futures.futures_exchange_config()}
        path = write_config(tmp_path / "config.yaml", config)
        unlisted = await run(STREAM, "--config", str(path), "--symbols", "ETH/USDT:USDT", cwd=tmp_path)
        spot = await run(STREAM, "--config", str(path), "--symbols", "BTC/USDT", cwd=tmp_path)
    code, out, err = unlisted
    assert code == 2, out + err
    assert one_line(err) == (
        f"error: unknown symbol 'ETH/USDT:USDT': the exchange at {futures.futures_rest_url} does not list it"
    )
    code, out, err = spot
    assert code == 2, out + err
    assert one_line(err).startswith("error: BTC/USDT is a spot symbol: exchange.id 'binanceusdm' streams")
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert [k async for k in client.scan_iter(match=f"{redis_prefix}:*")] == []
    finally:
        await client.aclose()


async def test_heartbeats_are_per_instance_and_the_health_check_lists_them_all(
    base_config: dict[str, Any], sim: SimulatedExchange, redis_prefix: str, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "config.yaml", sim_config(base_config, sim, symbols=["BTC/USDT"]))
    args = ("--config", str(path), "--status-interval", "0.3")
    named = await start(STREAM, *args, cwd=tmp_path, env={"DC__METRICS__INSTANCE": "alpha"})
    default = await start(STREAM, *args, cwd=tmp_path)
    try:
        for proc in (named, default):
            await read_until(proc.stdout, b" written ", timeout_s=60)
        code, out, err = await run(
            HEALTH, "--config", str(path), "--json", "--skip", "postgresql", "--skip", "exchange",
            "--skip", "freshness", "--skip", "heartbeat:collector", cwd=tmp_path,
        )  # fmt: skip
        assert code == 0, out + err
        rows = {row["name"]: row for row in json.loads(out)["checks"]}
        beats = sorted(name for name in rows if name.startswith("heartbeat:"))
        host_pid = [name for name in beats if name.endswith(f"-{default.pid}")]
        assert len(beats) == 2 and "heartbeat:streamer:alpha" in beats and len(host_pid) == 1, beats
        assert all(rows[name]["status"] == "ok" for name in beats), rows
        assert rows["heartbeat:streamer:alpha"]["data"]["pid"] == named.pid
        # The skipped checks are gone from the table under the names it shows for them.
        assert not {"postgresql", "exchange", "freshness"} & set(rows) and "redis" in rows
    finally:
        for proc in (named, default):
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in (named, default)]
    assert codes == [130, 130]


async def test_health_check_skips_by_the_names_its_table_shows(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "config.yaml", base_config)
    code, out, err = await run(HEALTH, "--config", str(path), "--skip", "exchange", cwd=tmp_path)
    shown = {line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 4}
    assert "postgresql" in shown and "redis" in shown, out + err
    for name in ("postgresql", "redis", "heartbeat:streamer"):
        code, out, err = await run(
            HEALTH, "--config", str(path), "--skip", "exchange", "--skip", name, cwd=tmp_path
        )
        assert code in (0, 1) and "Traceback" not in err, out + err
        rows = {line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 4}
        assert name not in rows and rows, (name, out)
    code, out, err = await run(HEALTH, "--config", str(path), "--skip", "postgres", cwd=tmp_path)
    assert code == 2 and "invalid choice: 'postgres'" in one_line(err)


async def test_postgres_scheme_is_refused_by_the_config_and_by_open_store_alike(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    url = "postgres://postgres@127.0.0.1:5432/test"
    config = {**base_config, "database": {**base_config["database"], "url": url}}
    path = write_config(tmp_path / "config.yaml", config)
    code, out, err = await run(COLLECT, "--config", str(path), cwd=tmp_path)
    assert code == 2 and "database.url: must start with postgresql+asyncpg://" in one_line(err), out + err
    with pytest.raises(ConfigError, match="must start with postgresql"):
        open_store(config)
    with pytest.raises(ConfigError, match="must start with postgresql"):
        load_config(config)


async def test_open_interest_beyond_30_days_exits_2_with_one_line_and_writes_nothing(
    base_config: dict[str, Any], pg_schema: str, tmp_path: Path
) -> None:
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=["BTC/USDT:USDT"], seed=3) as perp_sim:
        config = {
            **sim_config(base_config, perp_sim),
            "futures_exchange": {**perp_sim.futures_exchange_config(), "timeout_s": 5.0},
            "symbols": ["BTC/USDT:USDT"],
            "data_types": ["funding_rates", "open_interest"],
        }
        path = write_config(tmp_path / "config.yaml", config)
        code, out, err = await run(COLLECT, "--config", str(path), "--start", "40d", cwd=tmp_path)
        assert code == 2, out + err
        line = one_line(err)
        assert "open_interest: the exchange serves only the last 30 days" in line and "or later" in line, line
        assert not any(k.startswith("fapi/v1/fundingRate") for k in perp_sim.stats()["endpoints"])
        assert await pg_rows(pg_schema) == []
