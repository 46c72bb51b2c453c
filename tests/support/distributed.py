"""Worker processes and configs of the distributed tests (tests/distributed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from data_collector.distributed.engine import EngineSettings
from data_collector.markets import DAY_MS, candle_open_ms
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import config_for, local_iso, write_config
from tests.support.services import PG_ADMIN_DSN
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
TIMEFRAMES = ["1h", "4h"]


def spawn(
    procs: list[subprocess.Popen[bytes]], config: Path, schema: str, address: str, *extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    ready = config.with_name(f"ready.{len(procs)}")
    log = config.with_name(f"worker.{len(procs)}.log")
    cmd = [
        sys.executable, "-m", "data_collector.cli.main", "worker", "--config", str(config),
        "--source-address", address, "--queue-schema", schema, "--heartbeat", "0.5", "--stalled", "2",
        "--ready-file", str(ready), *extra,
    ]  # fmt: skip
    # stderr to a file, not a pipe nobody reads while the worker runs.
    with log.open("ab") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
    procs.append(proc)
    return proc, ready


def engine(schema: str) -> EngineSettings:
    return EngineSettings(dsn=PG_ADMIN_DSN, schema=schema, heartbeat_s=0.5, stalled_s=2.0)


def setup(
    base_config: dict[str, Any],
    sim: SimulatedExchange,
    tmp_path: Path,
    days: int,
    symbols: list[str] = SYMBOLS,
    timeframes: list[str] = TIMEFRAMES,
    **extra: Any,
) -> tuple[dict[str, Any], Path, int, int]:
    end = candle_open_ms(sim.clock.now_ms(), "1d")
    start = end - days * DAY_MS
    cfg = config_for(
        base_config,
        sim,
        symbols=symbols,
        timeframes=timeframes,
        start=local_iso(start),
        end=local_iso(end),
        **extra,
    )
    return cfg, write_config(tmp_path / "config.yaml", cfg), start, end


async def workers_ready(readies: list[Path]) -> None:
    await wait_for(lambda: all(r.exists() for r in readies), 60, "the workers to take jobs")
