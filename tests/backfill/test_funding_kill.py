"""SIGKILL a perpetual backfill (funding rates and mark candles) at three points, restart it: the
tables end as an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import config_for, kill_when_stored, local_iso, start_script, write_config
from tests.support.services import PG_ADMIN_DSN, PG_URL, dropped_schemas

PERPS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]


async def _tables(schema: str) -> tuple[list[Any], list[Any], list[Any], int]:
    """Funding rows, funding and mark coverage (merged per key), and how many candles are stored."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.funding") is None:
            return [], [], [], 0
        # By symbol: instrument ids follow the order in which runs first met the symbols.
        ids = {r[0]: r[1] for r in await conn.fetch(f'SELECT id, symbol FROM "{schema}".instruments')}
        funding = sorted((ids[r[0]], *r[1:]) for r in await conn.fetch(f'SELECT * FROM "{schema}".funding'))
        # Two writers may each store a range touching the other's; compare the merged record.
        cover = sorted(
            (ids[r[0]], *r[1:])
            for r in await conn.fetch(
                f"SELECT instrument_id, timeframe, kind, range_agg(int8range(start_ms, end_ms))::text "
                f'FROM "{schema}".coverage GROUP BY 1, 2, 3'
            )
        )
        candles = sorted((ids[r[0]], *r[1:]) for r in await conn.fetch(f'SELECT * FROM "{schema}".ohlcv'))
        return funding, cover, candles, len(candles)
    finally:
        await conn.close()


async def test_sigkill_at_three_points_then_restart_leaves_funding_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    async with (
        dropped_schemas(2) as (clean, killed),
        SimulatedExchange(symbols=["BTC/USDT"], perpetuals=PERPS, seed=5) as sim,
    ):
        # Slow answers, one symbol and one page at a time: the run lasts long enough to be
        # killed three times. A symbol's candles take about 2.5 s and its funding page arrives
        # after 2 s, so each kill (at 60 %, 35 % and 10 % of a symbol: 1.5, 0.9 and 0.25 s into
        # it) strikes while the funding of the symbol is asked for and not yet stored.
        sim.set_latency(100.0, endpoint="fapi/v1/markPriceKlines")
        sim.set_latency(2000.0, endpoint="fapi/v1/fundingRate")
        start = (sim.clock.now_ms() - 120 * DAY_MS) // HOUR_MS * HOUR_MS + 4321
        end = start + 100 * DAY_MS

        def config(schema: str) -> Path:
            base = {"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}}
            cfg = config_for(
                base,
                sim,
                symbols=PERPS,
                timeframes=["1h"],
                data_types=["funding_rates", "mark_ohlcv"],
                futures_exchange={**sim.futures_exchange_config(), "timeout_s": 10.0, "ohlcv_page_limit": 99},
                start=local_iso(start),
                end=local_iso(end),
                performance={"pages_in_flight_per_pair": 1, "concurrent_symbols": 1},
            )
            return write_config(tmp_path / f"{schema}.yaml", cfg)

        proc = await start_script(config(clean), tmp_path)
        assert await proc.wait() == 0
        want = await _tables(clean)
        total = want[3]
        assert total > len(PERPS) * 99 * 24  # the simulator's maintenance gaps lack a few
        assert len(want[0]) >= len(PERPS) * 299

        path = config(killed)
        for fraction in (0.2, 0.45, 0.7):

            async def candles() -> int:
                return (await _tables(killed))[3]

            await kill_when_stored(
                path, tmp_path, candles, fraction * total, f"{fraction:.0%} of the candles"
            )
            funding, _, _, stored = await _tables(killed)
            assert 0 < stored < total
            assert len(funding) < len(want[0]), "the kill came after every funding page"
        proc = await start_script(path, tmp_path)
        assert await proc.wait() == 0
        got = await _tables(killed)
        assert got[0] == want[0]
        assert got[1] == want[1]
        assert got[2] == want[2]
