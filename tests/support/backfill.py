"""Backfill test helpers: the simulator's truth against the store, the collection script, configs."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from data_collector.markets import DAY_MS, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.support.services import PG_ADMIN_DSN, PG_URL
from tests.support.waiting import wait_for_async

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "optimized_collection.py"
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
TIMEFRAMES = ["1m", "5m", "15m", "1h", "4h", "1d"]
#: A fixed, past range (so the forming candle never interferes): midnight 40 days ago, +N days.
RANGE_START_MS = candle_open_ms(int(datetime.now().timestamp() * 1000) - 40 * DAY_MS, "1d")


def floats(kline: list[Any]) -> tuple[int, float, float, float, float, float]:
    return (int(kline[0]), *(float(x) for x in kline[1:6]))  # type: ignore[return-value]


def config_for(base_config: dict[str, Any], sim: SimulatedExchange, **extra: Any) -> dict[str, Any]:
    exchange = {**sim.exchange_config(), "timeout_s": 2.0}
    exchange.update(extra.pop("exchange", {}))
    performance = {"api_rate_limit": 100_000, **extra.pop("performance", {})}
    return {
        **base_config,
        "exchange": exchange,
        "symbols": SYMBOLS,
        "timeframes": TIMEFRAMES,
        "performance": performance,
        **extra,
    }


async def stored_equals_sim(
    collector: OptimizedDataCollector,
    sim: SimulatedExchange,
    start_ms: int,
    end_ms: int,
    symbols: list[str] = SYMBOLS,
    timeframes: list[str] = TIMEFRAMES,
) -> None:
    for symbol in symbols:
        inst = await collector.instrument(symbol)
        for tf in timeframes:
            want = [floats(k) for k in sim.klines(symbol, tf, start_ms, end_ms)]
            got = await collector.store.load(inst.id, tf, start_ms, end_ms)
            assert len(got) == len(want), (symbol, tf)
            assert got == want, (symbol, tf)


def klines_requests(sim: SimulatedExchange) -> int:
    return int(sim.stats()["endpoints"].get("klines", 0))


def schema_config(
    tmp_path: Path, schema: str, sim: SimulatedExchange, start_ms: int, end_ms: int, **extra: Any
) -> Path:
    """A config file for the collection script: ``schema`` on the test PostgreSQL, ``[start, end)``."""
    base = {"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}}
    cfg = config_for(base, sim, start=local_iso(start_ms), end=local_iso(end_ms), **extra)
    return write_config(tmp_path / f"{schema}.yaml", cfg)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def run_script(*args: str, cwd: Path | None = None, timeout_s: float = 90) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=cwd or ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def count_rows(schema: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.ohlcv")
        return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".ohlcv')) if exists else 0
    finally:
        await conn.close()


def local_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat()


async def pg_rows(schema: str) -> list[tuple[Any, ...]]:
    """Every stored candle with its venue label, sorted; [] when the tables do not exist."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.ohlcv") is None:
            return []
        rows = await conn.fetch(
            f"SELECT i.exchange, i.symbol, o.timeframe, o.ts, o.open, o.high, o.low, o.close, o.volume "
            f'FROM "{schema}".ohlcv o JOIN "{schema}".instruments i ON i.id = o.instrument_id ORDER BY 1, 2, 3, 4'
        )
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


async def start_script(config_path: Path, cwd: Path, *, capture: bool = False) -> asyncio.subprocess.Process:
    """The collection script on ``config_path``, running in ``cwd`` (output captured or dropped)."""
    out = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--config", str(config_path), cwd=str(cwd), stdout=out, stderr=out
    )


async def kill_when_stored(
    config_path: Path, cwd: Path, stored: Callable[[], Awaitable[int]], at_least: float, what: str
) -> None:
    """Start the collection script, SIGKILL it once ``stored()`` reaches ``at_least``; it must be
    running then (a run that ended first fails the test)."""
    proc = await start_script(config_path, cwd)
    try:

        async def past() -> bool:
            return await stored() >= at_least or proc.returncode is not None

        await wait_for_async(past, timeout_s=90, what=what)
        assert proc.returncode is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        assert await proc.wait() == -signal.SIGKILL


async def assert_trades_exactly_covered(collector: OptimizedDataCollector, symbols: list[str]) -> None:
    """Each symbol's trade coverage is disjoint id ranges holding exactly the stored ids, each once."""
    for symbol in symbols:
        inst = await collector.instrument(symbol)
        ids = [t[0] for t in await collector.store.load_trades(inst.id, 0, 2**62)]
        covered = await collector.store.trade_coverage(inst.id)
        assert all(a.end_id < b.first_id for a, b in zip(covered, covered[1:], strict=False)), symbol
        assert ids == [i for c in covered for i in range(c.first_id, c.end_id)], symbol


async def assert_again_asks_nothing(
    collector: OptimizedDataCollector, ranges: list[tuple[int, int]], requests: Callable[[], int]
) -> None:
    """Collecting ``ranges`` again makes no request (``requests()``: the simulator's count) and writes nothing."""
    before = requests()
    for start, end in ranges:
        again = await collector.collect(start=start, end=end)
        assert again.ok and again.requests == 0 and again.rows_written == 0, again.summary()
    assert requests() == before
