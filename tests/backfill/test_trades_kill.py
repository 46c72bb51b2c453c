"""SIGKILL the trades backfill at three points, restart it: the tables end as an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.simulator import SimulatedExchange
from data_collector.storage.trades import TradeCoverage, merge_trade_coverage
from tests.support.backfill import config_for, kill_when_stored, local_iso, start_script, write_config
from tests.support.services import PG_ADMIN_DSN, PG_URL

SYMBOL = "SOL/USDT"


async def _rows(schema: str) -> tuple[list[Any], list[Any], int]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.trades") is None:
            return [], [], 0
        trades = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT instrument_id, id, ts, price, qty, first_trade_id, last_trade_id, buyer_maker "
                f'FROM "{schema}".trades ORDER BY instrument_id, id'
            )
        ]
        rows = await conn.fetch(f'SELECT first_id, end_id, start_ms, end_ms FROM "{schema}".trade_coverage')
        # Two writers may each store a range that touches the other's; reads merge them.
        cover = merge_trade_coverage(TradeCoverage(*r) for r in rows)
        return trades, cover, len(trades)
    finally:
        await conn.close()


async def restart_matches(path: Path, cwd: Path, schema: str, want: tuple[list[Any], list[Any], int]) -> None:
    """Run the script on ``path`` to the end: ``schema``'s trades and coverage are ``want``'s, whole."""
    proc = await start_script(path, cwd)
    assert await proc.wait() == 0
    got_trades, got_cover, _ = await _rows(schema)
    want_trades, want_cover, total = want
    assert got_trades == want_trades
    assert got_cover == want_cover
    assert len(want_cover) == 1 and want_cover[0].end_id - want_cover[0].first_id == total


async def test_sigkill_at_three_points_then_restart_matches_an_uninterrupted_run(
    schemas: tuple[str, ...], tmp_path: Path
) -> None:
    clean, killed = schemas
    async with SimulatedExchange(symbols=[SYMBOL], seed=11, gaps={}) as sim:
        # Slow answers and few pages in flight: the run lasts long enough to be killed three times.
        sim.set_latency(60.0, endpoint="aggTrades")
        start = (sim.clock.now_ms() - 6 * DAY_MS) // HOUR_MS * HOUR_MS + 1234
        end = start + 10 * HOUR_MS
        total = len(sim.agg_trades(SYMBOL, start, end))

        def config(schema: str) -> Path:
            base = {"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}}
            cfg = config_for(
                base,
                sim,
                symbols=[SYMBOL],
                data_types=["trades"],
                start=local_iso(start),
                end=local_iso(end),
                performance={"pages_in_flight_per_pair": 2},
            )
            return write_config(tmp_path / f"{schema}.yaml", cfg)

        proc = await start_script(config(clean), tmp_path)
        assert await proc.wait() == 0
        want_trades, want_cover, n = await _rows(clean)
        assert n == total > 20_000

        path = config(killed)
        for fraction in (0.2, 0.45, 0.7):

            async def trades() -> int:
                return (await _rows(killed))[2]

            await kill_when_stored(path, tmp_path, trades, fraction * total, f"{fraction:.0%} of the trades")
            assert 0 < (await _rows(killed))[2] < total
        await restart_matches(path, tmp_path, killed, (want_trades, want_cover, total))
