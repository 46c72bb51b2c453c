"""Scenario 3, hangs: every call to PostgreSQL, Redis and the exchange returns or fails within its
configured timeout while the fault proxy blackholes it (accepts, never answers).

asyncpg's COPY is the known offender: when its connection dies mid-COPY it can wait past its own
``timeout``; only an outer ``asyncio.timeout`` frees it (measured in test_raw_asyncpg_copy_hangs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from data_collector.config import load_config
from data_collector.errors import TransientError
from tests.chaos.helpers import Outcome, bounded
from tests.chaos.proxy import FaultProxy
from tests.chaos.report import ScenarioReport
from tests.conftest import PG_ADMIN_DSN

MakeProxy = Callable[[str, int], Awaitable[FaultProxy]]
TIMEOUT_S = 1.0
#: Far above any configured bound: only a call that would wait forever reaches it.
GUARD_S = 25.0


def _survived(report: ScenarioReport, outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        report.fault("blackhole")
        if not outcome.hung and outcome.error is not None:
            report.faults_survived += 1
    report.extra["calls"] = "; ".join(str(o) for o in outcomes)


async def test_raw_asyncpg_copy_hangs_past_its_own_timeout(make_proxy: MakeProxy) -> None:
    """Why the store needs an outer timeout: asyncpg's COPY ignores ``timeout`` when the link dies."""
    proxy = await make_proxy("127.0.0.1", 5432)
    conn = await asyncpg.connect(proxy.url(PG_ADMIN_DSN), timeout=5)
    try:
        await conn.execute("CREATE TEMP TABLE t (a int, b text)")
        records = [(i, "x" * 100) for i in range(300_000)]
        proxy.bandwidth_bps = 2_000_000

        async def cut() -> None:
            await asyncio.sleep(0.5)
            proxy.reset_all()

        cutter = asyncio.create_task(cut())
        outcome = await bounded(
            "asyncpg copy_records_to_table(timeout=1)",
            conn.copy_records_to_table("t", records=records, timeout=TIMEOUT_S),
            guard_s=6.0,
        )
        await cutter
    finally:
        conn.terminate()
    # Documented driver behaviour, not ours: if asyncpg fixes it, this starts failing and the outer
    # timeouts in the store become belt and braces.
    assert outcome.hung, outcome


def _exchange_config(base_url: str) -> dict[str, Any]:
    return {
        "exchange": {
            "urls": {"api": {"public": base_url + "/api/v3", "private": base_url + "/api/v3"}},
            "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False},
            "timeout_s": TIMEOUT_S,
            "max_retries": 1,
        },
        "symbols": ["SOL/USDT"],
        "logging": {"file": None},
    }


async def test_exchange_client_fails_within_timeout_when_blackholed(
    make_proxy: MakeProxy, scenario_report: ScenarioReport
) -> None:
    exchange_client = pytest.importorskip("data_collector.exchange_client")
    from tests.conftest import free_port

    proxy = await make_proxy("127.0.0.1", free_port())
    proxy.blackhole = True
    config = load_config(_exchange_config(f"http://127.0.0.1:{proxy.port}"))
    client = exchange_client.ExchangeClient(config)
    try:
        outcome = await bounded("ExchangeClient.open (blackholed)", client.open(), GUARD_S)
    finally:
        await client.close()
    _survived(scenario_report, [outcome])
    assert not outcome.hung, outcome
    assert isinstance(outcome.error, TransientError), outcome
    scenario_report.outcome = "ok"
