"""SIGKILL the archive backfill twice, restart it: the table ends as an uninterrupted run's, and the
restart downloads only the files whose days are not covered."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from data_collector.markets import DAY_MS
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.archives import ArchiveSettings
from tests.support.backfill import (
    config_for,
    kill_when_stored,
    local_iso,
    pg_rows,
    start_script,
    write_config,
)
from tests.support.services import PG_ADMIN_DSN, PG_URL

SYMBOL = "ETH/USDT"
START_MS = 1_709_337_600_000  # 2024-03-02
DAYS = 20


async def _covered_days(schema: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.coverage") is None:
            return 0
        rows = await conn.fetch(f'SELECT start_ms, end_ms FROM "{schema}".coverage')
        return sum(
            1
            for d in range(DAYS)
            if any(s <= START_MS + d * DAY_MS and START_MS + (d + 1) * DAY_MS <= e for s, e in rows)
        )
    finally:
        await conn.close()


async def test_sigkill_during_archive_ingest_then_restart_converges(
    schemas: tuple[str, ...], tmp_path: Path
) -> None:
    clean, killed = schemas
    end = START_MS + DAYS * DAY_MS
    async with SimulatedExchange(
        symbols=[SYMBOL], seed=13, gaps={}, archive=ArchiveSettings(slow_s=0.15)
    ) as sim:
        sim.archive.inject("slow")  # every file: the run lasts long enough to be killed twice

        def config(schema: str) -> Path:
            base = {"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}}
            exchange = {"archive": {"url": sim.archive_url, "downloads_in_flight": 1}}
            cfg = config_for(
                base,
                sim,
                symbols=[SYMBOL],
                timeframes=["1m"],
                start=local_iso(START_MS),
                end=local_iso(end),
                exchange=exchange,
            )
            return write_config(tmp_path / f"{schema}.yaml", cfg)

        proc = await start_script(config(clean), tmp_path)
        assert await proc.wait() == 0
        want = await pg_rows(clean)
        assert len(want) == DAYS * 1440

        path = config(killed)
        for share in (0.25, 0.6):
            await kill_when_stored(
                path, tmp_path, lambda: _covered_days(killed), share * DAYS, f"{share:.0%} of the days stored"
            )
        covered = await _covered_days(killed)
        assert 0 < covered < DAYS
        sim.archive.stats.clear()
        proc = await start_script(path, tmp_path)
        assert await proc.wait() == 0
        assert await pg_rows(killed) == want
        assert sim.archive.stats["zip_requests"] == DAYS - covered
