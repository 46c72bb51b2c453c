"""Two workers behind one IP share its budget through Redis (issue 17, acceptance 4).

Both ``data-collector worker --source-address 127.0.0.2 --share-budget`` processes spend the
simulator's per-IP budget together. CI form: the Redis budget counted every weight the simulator
received (the wiring) and nothing was refused. The ``slow`` form needs 3 minutes of budget.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from data_collector.config import load_config
from data_collector.distributed.engine import ensure_schema, make_app
from data_collector.distributed.jobs import cut_jobs
from data_collector.distributed.ledger import ensure_tables, job_statuses
from data_collector.distributed.producer import enqueue, wait_done
from data_collector.simulator import SimulatedExchange
from tests.support.distributed import SYMBOLS, engine, setup, spawn, workers_ready
from tests.support.services import REDIS_URL


def budget_spent(prefix: str) -> int:
    """Weight counted in the shared budget's Redis keys (every minute's)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        return sum(int(client.get(k) or 0) for k in client.scan_iter(match=f"*{prefix}:budget*"))
    finally:
        client.close()


async def run_two_behind_one_ip(
    base_config: dict[str, Any],
    sim: SimulatedExchange,
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    days: int,
    limit: int,
) -> dict[str, Any]:
    cfg, path, start, end = setup(
        base_config, sim, tmp_path, days=days, exchange={"weight_limit": limit, "rate_limit_margin": 0}
    )
    readies = [spawn(procs, path, queue_schema, "127.0.0.2", "--share-budget")[1] for _ in range(2)]
    await workers_ready(readies)
    config = load_config(cfg)
    app = make_app(engine(queue_schema))
    async with app.open_async():
        await ensure_schema(app, engine(queue_schema))
        await ensure_tables(app)
        jobs = cut_jobs(config, "r", SYMBOLS, ["1h", "4h"], ["ohlcv"], start, end, 1)
        ids = await enqueue(app, jobs)
        await asyncio.wait_for(wait_done(app, ids), 400)
        assert await job_statuses(app, ids) == {"succeeded": len(ids)}
    return sim.stats()


@pytest.mark.parametrize(
    ("days", "limit"),
    [
        (4, 6000),
        # slow: 2 symbols x 2 timeframes x 30 one-day jobs, 120 klines requests (240 weight) + 2 x 21
        # to start; at 100 weight a minute, 3 minutes of budget.
        pytest.param(30, 100, marks=pytest.mark.slow),
    ],
)
async def test_two_workers_behind_one_ip_spend_one_budget(
    base_config: dict[str, Any],
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    redis_prefix: str,
    days: int,
    limit: int,
) -> None:
    async with SimulatedExchange(symbols=SYMBOLS, seed=4, gaps={}, weight_limit=limit) as sim:
        stats = await run_two_behind_one_ip(base_config, sim, queue_schema, procs, tmp_path, days, limit)
    assert stats["429"] == 0 and stats["418"] == 0
    assert set(stats["used_weight_1m_by_ip"]) <= {"127.0.0.2"}
    if stats["weight"] <= limit:
        # Within a minute's keys (each expires a minute after its first hit): every weight the
        # simulator charged went through the shared budget first.
        assert budget_spent(redis_prefix) == stats["weight"] > 0
    else:
        assert stats["weight"] > 2 * limit  # 3 minutes of budget spent, none refused
