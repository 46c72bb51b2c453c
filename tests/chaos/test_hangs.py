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


def _redis_config(url: str, prefix: str) -> dict[str, Any]:
    return {
        "redis": {
            "url": url,
            "prefix": prefix,
            "socket_timeout_s": TIMEOUT_S,
            "connect_timeout_s": TIMEOUT_S,
        },
        "cache": {"down_backoff_s": 0},
        "logging": {"file": None},
    }


def _redis_target() -> tuple[str, int]:
    from tests.conftest import REDIS_URL

    netloc = REDIS_URL.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = netloc.partition(":")
    return host, int(port or 6379)


async def test_cache_calls_end_within_timeout_when_blackholed(
    make_proxy: MakeProxy, redis_prefix: str, scenario_report: ScenarioReport
) -> None:
    cache_manager = pytest.importorskip("utils.cache_manager")
    from tests.conftest import REDIS_URL

    proxy = await make_proxy(*_redis_target())
    config = _redis_config(proxy.url(REDIS_URL), redis_prefix)
    outcomes: list[Outcome] = []
    async with cache_manager.AsyncCacheManager(config) as cache:
        assert await cache.set("k", {"v": 1})  # a pooled connection exists before the fault
        proxy.blackhole = True
        calls: dict[str, Any] = {
            "get": lambda: cache.get("k", "miss"),
            "set": lambda: cache.set("k2", 2),
            "get_multi": lambda: cache.get_multi(["k", "k2"]),
            "set_multi": lambda: cache.set_multi({"a": 1, "b": 2}),
            "delete": lambda: cache.delete("k"),
            "exists": lambda: cache.exists("k"),
            "clear": lambda: cache.clear(),
            "ping": lambda: cache.ping(),
        }
        for name, call in calls.items():
            outcome = await bounded(f"AsyncCacheManager.{name}", call(), GUARD_S)
            outcomes.append(outcome)
            assert not outcome.hung, outcome
            assert outcome.error is None, outcome  # degrade to a miss/False, never raise
        assert outcomes[0].result == "miss" and outcomes[1].result is False
        proxy.blackhole = False
        proxy.reset_all()
        assert await cache.get("k") == {"v": 1}  # reconnects by itself; nothing lost

    strict_outcomes = []
    async with cache_manager.AsyncCacheManager(config, strict=True) as cache:
        assert await cache.ping()
        proxy.blackhole = True
        for name in ("get", "set"):
            call = cache.get("k") if name == "get" else cache.set("k", 3)
            outcome = await bounded(f"AsyncCacheManager(strict).{name}", call, GUARD_S)
            strict_outcomes.append(outcome)
            assert not outcome.hung, outcome
            assert isinstance(outcome.error, cache_manager.CacheUnavailableError), outcome
        proxy.blackhole = False

    sync_outcomes = []
    cache = cache_manager.CacheManager(config)
    try:
        assert await asyncio.to_thread(cache.set, "s", 1)
        proxy.blackhole = True
        for name in ("get", "set", "clear"):
            fn = {
                "get": lambda: cache.get("s", "miss"),
                "set": lambda: cache.set("s", 2),
                "clear": cache.clear,
            }[name]
            outcome = await bounded(f"CacheManager.{name}", asyncio.to_thread(fn), GUARD_S)
            sync_outcomes.append(outcome)
            assert not outcome.hung and outcome.error is None, outcome
        proxy.blackhole = False
    finally:
        proxy.blackhole = False
        await asyncio.to_thread(cache.close)
    for o in outcomes + sync_outcomes:
        scenario_report.fault("blackhole")
        scenario_report.faults_survived += int(not o.hung and o.error is None)
    for o in strict_outcomes:
        scenario_report.fault("blackhole")
        scenario_report.faults_survived += int(not o.hung)
    scenario_report.extra["slowest_s"] = round(
        max(o.elapsed_s for o in outcomes + strict_outcomes + sync_outcomes), 2
    )
    scenario_report.outcome = "ok"
