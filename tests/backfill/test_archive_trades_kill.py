"""SIGKILL the aggTrades archive backfill twice, restart it: the tables end as an uninterrupted run's,
and the restart downloads only the days without any coverage (a day cut by the kill is finished by
REST from where its coverage ends)."""

from __future__ import annotations

from pathlib import Path

from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.archives import ArchiveSettings
from data_collector.storage.trades import TradeCoverage
from tests.backfill.test_trades_kill import _rows, restart_matches
from tests.support.backfill import kill_when_stored, schema_config, start_script

SYMBOL = "SOL/USDT"
DAYS = 8


def _untouched_days(start: int, cover: list[TradeCoverage]) -> int:
    return sum(
        1
        for d in range(DAYS)
        if not any(c.start_ms < start + (d + 1) * DAY_MS and start + d * DAY_MS < c.end_ms for c in cover)
    )


async def test_sigkill_during_agg_trades_archive_ingest_then_restart_converges(
    schemas: tuple[str, ...], tmp_path: Path
) -> None:
    clean, killed = schemas
    probe = SimulatedExchange(symbols=[SYMBOL], seed=19)
    start = (probe.clock.now_ms() - 40 * DAY_MS) // DAY_MS * DAY_MS
    end = start + DAYS * DAY_MS
    # Trading 6 hours a day: thousands of trades a day, one batch per file.
    gaps = [(start + d * DAY_MS + 3 * HOUR_MS, start + d * DAY_MS + 21 * HOUR_MS) for d in range(DAYS)]
    archive = ArchiveSettings(slow_s=0.3, cache_dir=tmp_path / "zips")
    async with SimulatedExchange(symbols=[SYMBOL], seed=19, gaps={SYMBOL: gaps}, archive=archive) as sim:
        sim.archive.inject("slow")  # every file: the run lasts long enough to be killed twice
        total = len(sim.agg_trades(SYMBOL, start, end))

        def config(schema: str) -> Path:
            exchange = {"archive": {"url": sim.archive_url, "downloads_in_flight": 1}}
            return schema_config(
                tmp_path, schema, sim, start, end, symbols=[SYMBOL], data_types=["trades"], exchange=exchange
            )

        proc = await start_script(config(clean), tmp_path)
        assert await proc.wait() == 0
        want_trades, want_cover, n = await _rows(clean)
        assert n == total > 20_000
        assert sim.archive.stats["zip"] == DAYS

        path = config(killed)
        for fraction in (0.25, 0.6):

            async def trades() -> int:
                return (await _rows(killed))[2]

            await kill_when_stored(path, tmp_path, trades, fraction * total, f"{fraction:.0%} of the trades")
        _, cover, stored = await _rows(killed)
        assert 0 < stored < total
        untouched = _untouched_days(start, cover)
        assert 0 < untouched < DAYS
        sim.archive.stats.clear()
        await restart_matches(path, tmp_path, killed, (want_trades, want_cover, total))
        assert sim.archive.stats["zip_requests"] == untouched
