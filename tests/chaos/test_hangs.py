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
from tests.support.services import PG_ADMIN_DSN
from tests.support.waiting import wait_for

MakeProxy = Callable[[str, int], Awaitable[FaultProxy]]
TIMEOUT_S = 1.0
#: Far above any configured bound: only a call that would wait forever reaches it.
GUARD_S = 25.0


#: Bytes of a COPY through the throttled proxy after which a fault lands inside it: the COPY
#: has begun streaming rows and has megabytes still to send.
MID_COPY_BYTES = 1_000_000


async def _mid_copy(proxy: FaultProxy, from_bytes: int) -> None:
    """Wait until the COPY started at ``from_bytes`` sent upward is under way through ``proxy``."""
    await wait_for(
        lambda: proxy.stats.bytes_up >= from_bytes + MID_COPY_BYTES,
        timeout_s=GUARD_S,
        what="a COPY under way",
    )


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
        sent_before = proxy.stats.bytes_up

        async def cut() -> None:
            await _mid_copy(proxy, sent_before)
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
    exchange_client = pytest.importorskip("data_collector.backfill.exchange")
    from tests.support.services import free_port

    proxy = await make_proxy("127.0.0.1", free_port())
    proxy.blackhole = True
    config = load_config(_exchange_config(f"http://127.0.0.1:{proxy.port}"))
    client = exchange_client.ExchangeClient(exchange_client.ExchangeSettings.from_config(config))
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
    from tests.support.services import REDIS_URL

    netloc = REDIS_URL.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = netloc.partition(":")
    return host, int(port or 6379)


async def test_cache_calls_end_within_timeout_when_blackholed(
    make_proxy: MakeProxy, redis_prefix: str, scenario_report: ScenarioReport
) -> None:
    cache_manager = pytest.importorskip("utils.cache_manager")
    from tests.support.services import REDIS_URL

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


def _candles(
    start_ms: int, n: int, step_ms: int = 60_000
) -> list[tuple[int, float, float, float, float, float]]:
    return [(start_ms + i * step_ms, 10.0 + i % 7, 12.0 + i % 7, 9.0, 11.0, 1.0 + i) for i in range(n)]


async def test_store_calls_end_within_timeout_and_copy_cut_leaves_nothing_half_written(
    make_proxy: MakeProxy, pg_schema: str, scenario_report: ScenarioReport
) -> None:
    from data_collector.storage import CandleBatch, CoverageRange, open_store
    from tests.support.services import PG_URL

    proxy = await make_proxy("127.0.0.1", 5432)
    config = load_config(
        {
            "database": {
                "url": proxy.url(PG_URL),
                "schema": pg_schema,
                "connect_timeout_s": TIMEOUT_S,
                "command_timeout_s": TIMEOUT_S,
            },
            "performance": {"db_pool_size": 2, "db_max_overflow": 0},
            "logging": {"file": None},
        }
    )
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    small = _candles(t0, 100)
    big = _candles(t0 + 100 * 60_000, 200_000)

    def batch(candles: list[Any]) -> Any:
        end = candles[-1][0] + 60_000
        return CandleBatch(inst.id, "1m", candles, [CoverageRange(candles[0][0], end, "data")])

    outcomes: list[Outcome] = []
    store = open_store(config)
    try:
        await store.initialize()
        inst = await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")
        assert (await store.write([batch(small)])).written == 100

        proxy.blackhole = True
        calls: dict[str, Any] = {
            "write": lambda: store.write([batch(_candles(t0 - 10 * 60_000, 5))]),
            "coverage": lambda: store.coverage(inst.id, "1m"),
            "load": lambda: store.load(inst.id, "1m", t0, t0 + 10**9),
            "latest_ts": lambda: store.latest_ts(inst.id, "1m"),
            "ensure_instrument": lambda: store.ensure_instrument(
                "binance", "BTC/USDT", base="BTC", quote="USDT"
            ),
            "missing_ranges": lambda: store.missing_ranges(inst.id, "1m", t0, t0 + 10**9),
            "find_gaps": lambda: store.find_gaps(inst.id, "1m", t0, t0 + 10**9),
        }
        for name, call in calls.items():
            outcomes.append(await bounded(f"store.{name} (blackholed)", call(), GUARD_S))
        proxy.blackhole = False
        proxy.reset_all()  # drop what the blackhole held

        # The COPY cases: a 200k-row write through a slow link, cut in the middle of the COPY.
        for fault in ("reset", "blackhole"):
            proxy.bandwidth_bps = 1_500_000
            sent_before = proxy.stats.bytes_up

            async def strike(fault: str = fault, sent_before: int = sent_before) -> None:
                await _mid_copy(proxy, sent_before)
                if fault == "reset":
                    proxy.reset_all()
                else:
                    proxy.blackhole = True

            striker = asyncio.create_task(strike())
            outcomes.append(
                await bounded(f"store.write 200k rows, COPY {fault}", store.write([batch(big)]), GUARD_S)
            )
            await striker
            proxy.clear()
            proxy.reset_all()

        # Nothing of the failed writes is visible, and the store works again by itself.
        assert await store.load(inst.id, "1m", t0 - 10**7, t0 + 10**11) == small
        assert [(c.start_ms, c.end_ms) for c in await store.coverage(inst.id, "1m")] == [
            (t0, t0 + 100 * 60_000)
        ]
        # The reads above went through the proxy: the store works again by itself. The 200k-row
        # write and its read-back go past the proxy: the 1 s bound is for the faults above, and
        # 200k rows through a Python proxy on a loaded 2-core machine can take longer than that.
        verify = open_store(
            load_config({"database": {"url": PG_URL, "schema": pg_schema}, "logging": {"file": None}})
        )
        try:
            await verify.initialize()
            result = await verify.write([batch(big)])
            found = await verify.load(inst.id, "1m", t0 - 10**7, t0 + 10**11)
        finally:
            await verify.close()
    finally:
        proxy.clear()
        await store.close()

    for outcome in outcomes:
        scenario_report.fault("blackhole" if "blackhole" in outcome.what else "reset")
        scenario_report.faults_survived += int(not outcome.hung and isinstance(outcome.error, TransientError))
    expected = small + big
    scenario_report.expected = len(expected)
    scenario_report.found = len(found)
    scenario_report.lost = len(set(expected) - set(found))
    scenario_report.duplicated = len(found) - len(set(c[0] for c in found))
    scenario_report.extra["calls"] = "; ".join(str(o) for o in outcomes)
    for outcome in outcomes:
        assert not outcome.hung, outcome
        assert isinstance(outcome.error, TransientError), outcome
    assert result.written == len(big)
    assert found == expected
    scenario_report.outcome = "ok"


async def test_exchange_pages_fail_within_timeout_on_a_live_session_blackholed(
    make_proxy: MakeProxy, scenario_report: ScenarioReport
) -> None:
    """The session's pooled keep-alive connection goes silent mid-backfill."""
    simulator = pytest.importorskip("data_collector.simulator")
    exchange_client = pytest.importorskip("data_collector.backfill.exchange")

    async with simulator.SimulatedExchange(symbols=["SOL/USDT"], seed=2) as sim:
        proxy = await make_proxy(sim.host, sim.port)
        config = load_config(_exchange_config(f"http://127.0.0.1:{proxy.port}"))
        client = exchange_client.ExchangeClient(exchange_client.ExchangeSettings.from_config(config))
        try:
            await client.open()
            page = (
                1_700_000_000_000 - 1_700_000_000_000 % 60_000,
                1_700_000_000_000 - 1_700_000_000_000 % 60_000 + 60 * 60_000,
            )
            assert len(await client.fetch_page("SOL/USDT", "1m", page, 1000)) == 60
            proxy.blackhole = True
            outcome = await bounded(
                "ExchangeClient.fetch_page (live session blackholed)",
                client.fetch_page("SOL/USDT", "1m", page, 1000),
                GUARD_S,
            )
            proxy.blackhole = False
            proxy.reset_all()
            again = await bounded(
                "fetch_page after the blackhole", client.fetch_page("SOL/USDT", "1m", page, 1000), GUARD_S
            )
        finally:
            proxy.clear()
            await client.close()
    _survived(scenario_report, [outcome])
    assert not outcome.hung, outcome
    assert isinstance(outcome.error, TransientError) or "Timeout" in type(outcome.error).__name__, outcome
    assert again.error is None and len(again.result) == 60, again
    scenario_report.outcome = "ok"


async def test_health_checks_end_within_their_timeout_when_everything_is_blackholed(
    make_proxy: MakeProxy, pg_schema: str, redis_prefix: str, scenario_report: ScenarioReport
) -> None:
    health = pytest.importorskip("data_collector.health")
    from tests.support.services import PG_URL, REDIS_URL, free_port

    pg = await make_proxy("127.0.0.1", 5432)
    rd = await make_proxy(*_redis_target())
    ex = await make_proxy("127.0.0.1", free_port())
    for proxy in (pg, rd, ex):
        proxy.blackhole = True
    config = load_config(
        {
            **_exchange_config(f"http://127.0.0.1:{ex.port}"),
            "database": {"url": pg.url(PG_URL), "schema": pg_schema, "connect_timeout_s": TIMEOUT_S},
            "redis": {
                "url": rd.url(REDIS_URL),
                "prefix": redis_prefix,
                "socket_timeout_s": TIMEOUT_S,
                "connect_timeout_s": TIMEOUT_S,
            },
            "metrics": {"check_timeout_s": 2.0},
        }
    )
    outcome = await bounded("health.run_checks (all blackholed)", health.run_checks(config), GUARD_S)
    assert not outcome.hung and outcome.error is None, outcome
    by_name = {c.name: c for c in outcome.result.checks}
    scenario_report.extra["checks"] = "; ".join(f"{c.name}={c.status}" for c in outcome.result.checks)
    scenario_report.extra["elapsed_s"] = round(outcome.elapsed_s, 2)
    scenario_report.fault("blackhole", 3)
    assert by_name["postgresql"].status == "fail"
    assert by_name["redis"].status == "fail"
    assert by_name["exchange"].status == "fail"
    assert not outcome.result.healthy
    scenario_report.faults_survived = 3
    scenario_report.outcome = "ok"
