"""Scenario 2b: the streamer process SIGKILLed three times and restarted (scripts/stream_market_data.py).

Nothing may be written twice, and what a killed process had not yet written must show up as a
recorded gap (a consumer cannot tell a restart from a reconnect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from tests.chaos.helpers import end_streamer, streamer_process
from tests.chaos.report import ScenarioReport
from tests.support.services import REDIS_URL
from tests.support.stream_accounting import account, account_by_id, gap_markers, trade_ids_and_times
from tests.support.waiting import wait_for, wait_for_async

simulator = pytest.importorskip("data_collector.simulator")
pytest.importorskip("data_collector.optimized_websocket")


async def test_streamer_sigkilled_and_restarted(
    redis_prefix: str, scenario_report: ScenarioReport, long_run: bool, tmp_path: Path
) -> None:
    report = scenario_report
    kills = 3 if not long_run else 10
    async with simulator.SimulatedExchange(symbols=["SOL/USDT"], seed=4, ws_rate=200.0) as sim:
        config: dict[str, Any] = {
            "exchange": sim.exchange_config(),
            "symbols": ["SOL/USDT"],
            "redis": {"url": REDIS_URL, "prefix": redis_prefix},
            "streaming": {"channels": ["trade"]},
            "performance": {"ws_batch_interval": 0.2, "ws_batch_size": 1000},
            "logging": {"file": None},
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        codes = []
        probe = aioredis.Redis.from_url(REDIS_URL)
        stream_key = f"{redis_prefix}:stream:sim-binance:trade:SOL/USDT"
        for run in range(kills + 1):
            before = await probe.xlen(stream_key)
            async with streamer_process(path, tmp_path / f"stream{run}.out", report) as proc:
                # Run until it has connected and this process has written to Redis (the restart
                # then has entries of its own to not write twice), then kill it mid-buffer.
                async def wrote(before: int = before) -> bool:
                    return bool(await probe.xlen(stream_key) >= before + 200)

                await wait_for_async(wrote, timeout_s=30, what=f"run {run} writing trades")
                codes.append(await end_streamer(proc, run < kills, report))
            # The simulator has seen the dead process's socket close before the next one starts.
            await wait_for(lambda: sim.ws_connections() == 0, what="the old connection closed")
        await probe.aclose()

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        key = f"{redis_prefix}:stream:sim-binance:trade:SOL/USDT"
        trades = await trade_ids_and_times(client, key)
        gaps = await gap_markers(client, f"{redis_prefix}:gaps:sim-binance")
    finally:
        await client.aclose()
    windows = [(int(g["from_ms"]), int(g["to_ms"])) for g in gaps if g["stream"] == key]
    found, dup, in_gap, outside = account(trades, windows, slack_ms=500)
    ids = [t for t, _ in trades]
    report.expected = max(ids) - min(ids) + 1 if ids else 0
    report.found = found
    report.lost = in_gap + outside
    report.duplicated = dup
    report.extra.update(
        exit_codes=",".join(map(str, codes)), gap_markers=len(windows), lost_unrecorded=outside
    )
    assert found > 0
    assert dup == 0, "an entry was written twice across a restart"
    assert codes[-1] in (0, 130), (tmp_path / f"stream{kills}.out").read_text()[-1500:]
    report.faults_survived = report.faults_injected
    assert outside == 0, (
        f"{outside} trades lost across {kills} SIGKILL+restart with no gap marker "
        "(a restarted streamer must mark its downtime and its unwritten buffer)"
    )
    # Trade ids are contiguous: each restart reads the newest stored id from Redis and marks
    # exactly the ids from it to the first one received, no more and no fewer.
    mine = [g for g in gaps if g["stream"] == key]
    _, _, unmarked, wrongly = account_by_id(ids, mine)
    report.extra.update(unmarked_ids=unmarked, wrongly_marked_ids=wrongly)
    assert all(g.get("first_seq") is not None for g in mine), mine
    assert unmarked == 0 and wrongly == 0, (unmarked, wrongly, mine)
    report.outcome = "ok"
