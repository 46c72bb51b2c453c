"""Two workers behind one IP share its budget through Redis (issue 17, acceptance 4).

Both ``data-collector worker --source-address 127.0.0.2 --share-budget`` processes spend the
simulator's per-IP budget together: spot's, and the USDⓈ-M futures venue's (a budget of its own,
a Redis counter of its own). CI forms: the Redis budgets counted every weight the simulator
received (the wiring) and nothing was refused. The ``slow`` forms need 3 minutes of budget.

OKX: two workers on 127.0.0.2 with ``--share-budget`` share each endpoint's 2 s window (the
simulator counts OKX's limits per client IP too): 0 x 429 and exact rows; without the flag, the
same run is refused.
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
from data_collector.distributed.producer import enqueue, run_distributed, wait_done
from data_collector.markets import HOUR_MS
from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.support import two_venues as two
from tests.support.backfill import RANGE_START_MS, local_iso, write_config
from tests.support.distributed import SYMBOLS, engine, setup, spawn, workers_ready
from tests.support.okx_truth import model_candles
from tests.support.services import REDIS_URL


def budget_spent(prefix: str, name: str = "") -> int:
    """Weight counted in the shared budget's Redis keys (every minute's; of budget ``name`` if given:
    a venue label and address)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    match = f"{prefix}:budget*" + (f"/{name}/*" if name else "")
    try:
        return sum(int(client.get(k) or 0) for k in client.scan_iter(match=match))
    finally:
        client.close()


def budget_by_minute(prefix: str) -> dict[int, int]:
    """Weight the shared budget's Redis keys count, by minute (ms since the epoch // 60,000)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        # ``limits`` names a counter ``LIMITER/<name>/<minute>/<amount>/<multiple>/minute``.
        return {
            int(k.decode().split("/")[-4]): int(client.get(k) or 0)
            for k in client.scan_iter(match=f"{prefix}:budget*")
        }
    finally:
        client.close()


#: How far the simulator's clock runs ahead of the workers' in the spot form.
SKEW_MS = 10 * 60_000


async def run_two_behind_one_ip(
    sim: SimulatedExchange,
    base_config: dict[str, Any],
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    days: int,
    limit: int,
    symbols: list[str] = SYMBOLS,
    **extra: Any,
) -> dict[str, Any]:
    extra.setdefault("exchange", {"weight_limit": limit, "rate_limit_margin": 0})
    cfg, path, start, end = setup(base_config, sim, tmp_path, days, symbols, **extra)
    readies = [spawn(procs, path, queue_schema, "127.0.0.2", "--share-budget")[1] for _ in range(2)]
    await workers_ready(readies)
    config = load_config(cfg)
    app = make_app(engine(queue_schema))
    async with app.open_async():
        await ensure_schema(app, engine(queue_schema))
        await ensure_tables(app)
        jobs = cut_jobs(config, "r", symbols, ["1h", "4h"], ["ohlcv"], start, end, 1)
        ids = await enqueue(app, jobs)
        await asyncio.wait_for(wait_done(app, ids), 400)
        assert await job_statuses(app, ids) == {"succeeded": len(ids)}
    return sim.stats()


PERP = "BTC/USDT:USDT"
#: Candles a futures page (weight 1 at Binance and in the simulator), and a day of 1h candles.
PAGE = 24


@pytest.mark.parametrize(
    ("market", "days", "limit"),
    [
        ("spot", 4, 6000),
        # slow: 2 symbols x 2 timeframes x 30 one-day jobs, 120 klines requests (240 weight) + 2 x 21
        # to start; at 100 weight a minute, 3 minutes of budget.
        pytest.param("spot", 30, 100, marks=pytest.mark.slow),
        ("usdm", 4, 2400),
        # slow: 100 days in pages of 24 candles (weight 1 each): 100 one-day 1h jobs and 25 4h ones
        # of a page each, + 2 x 2 to start; at 40 weight a minute, more than 3 minutes of budget.
        pytest.param("usdm", 100, 40, marks=pytest.mark.slow),
    ],
)
async def test_two_workers_behind_one_ip_spend_one_budget(
    base_config: dict[str, Any],
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    redis_prefix: str,
    market: str,
    days: int,
    limit: int,
) -> None:
    """Spot, or USD-M perpetuals: the futures venue's budget is shared too, apart from spot's. Its
    limit is not configured: the workers read it from the futures exchangeInfo, as in production."""
    run = (base_config, queue_schema, procs, tmp_path, days, limit)
    if market == "spot":
        async with SimulatedExchange(symbols=SYMBOLS, seed=4, gaps={}, weight_limit=limit) as sim:
            # The exchange's clock runs 10 minutes ahead of this host's: the budget counts in its
            # minutes (the offset the clients measure), or two hosts would split one exchange minute.
            sim.clock.advance(SKEW_MS)
            minutes = {sim.clock.now_ms() // 60_000}
            stats = await run_two_behind_one_ip(sim, *run)
            minutes |= {sim.clock.now_ms() // 60_000}
        assert set(stats["used_weight_1m_by_ip"]) <= {"127.0.0.2"}
        spent = budget_by_minute(redis_prefix)
        exchange_minutes = range(min(minutes), max(minutes) + 1)
        # Only each client's opening requests (exchangeInfo 20, time 1), sent before the offset is
        # measured, count in this host's minute; every page after them in the exchange's.
        assert sum(w for m, w in spent.items() if m not in exchange_minutes) <= 2 * (20 + 1), spent
        assert sum(w for m, w in spent.items() if m in exchange_minutes) > 0, spent
    else:
        async with SimulatedExchange(
            symbols=["BTC/USDT"], perpetuals=[PERP], seed=5, gaps={}, futures_weight_limit=limit
        ) as sim:
            page = {"ohlcv_page_limit": PAGE}  # the jobs' windows are whole pages of exchange's
            futures = {**sim.futures_exchange_config(), "timeout_s": 2.0, "rate_limit_margin": 0, **page}
            stats = await run_two_behind_one_ip(sim, *run, [PERP], exchange=page, futures_exchange=futures)
        assert set(stats["futures"]["used_weight_1m_by_ip"]) <= {"127.0.0.2"}
    assert stats["429"] == 0 and stats["418"] == 0
    klines_weight = stats["endpoints"].get("fapi/v1/klines", 0)  # 1 a page of 24
    if stats["weight"] > limit:
        # 3 minutes of budget spent, none refused
        assert (stats["weight"] > 2 * limit) if market == "spot" else (klines_weight > 3 * limit)
    elif market == "spot":
        # Within a minute's keys (each expires a minute after its first hit): every weight the
        # simulator charged went through the shared budget first.
        assert budget_spent(redis_prefix) == stats["weight"] > 0
    else:
        # Every weight the simulator charged (spot's and futures') went through a shared budget
        # first, each venue's through its own: the spot client only started (markets, clock), the
        # futures one also fetched every page. The futures exchangeInfo is charged at its own
        # weight (1, not spot's 20), so each budget counts exactly what its venue counted.
        spot_spent = budget_spent(redis_prefix, "sim-binance:127.0.0.2")
        futures_spent = budget_spent(redis_prefix, "sim-binanceusdm:127.0.0.2")
        assert spot_spent + futures_spent == stats["weight"]
        assert 0 < spot_spent and 0 < klines_weight < futures_spent


#: OKX's per-endpoint limits, lowered for the CI form (simulator and clients alike): 4 a 2 s window.
OKX_CI_LIMITS = {"market/history-candles": 4, "market/candles": 4}


@pytest.mark.parametrize(
    ("share", "hours", "limits"),
    [
        # 2 symbols x 12 h of 1m candles: two jobs each (the 1-day windows are whole pages from the
        # epoch), 8 pages of 100: 16 candle requests, 8 s at 4 a window shared; each worker pacing
        # to all 4 on its own sends up to 8 a window together, for several windows.
        (True, 12, OKX_CI_LIMITS),
        (False, 12, OKX_CI_LIMITS),
        # slow: at OKX's own limits (history-candles 20 a window), 8 days: 240 candle requests.
        pytest.param(True, 8 * 24, None, marks=pytest.mark.slow),
    ],
    ids=["shared", "control-unshared", "shared-okx-limits"],
)
async def test_two_okx_workers_behind_one_ip_share_each_endpoints_window(
    base_config: dict[str, Any],
    queue_schema: str,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    redis_prefix: str,
    share: bool,
    hours: int,
    limits: dict[str, int] | None,
) -> None:
    """OKX counts each public endpoint per IP over 2 s windows: two workers on 127.0.0.2 with
    ``--share-budget`` take every request's slot in one Redis window per endpoint and get 0 x 429
    (code 50011), and the rows are exactly the simulator's. The simulator counts the stricter way
    here, the 2 s before each request (a fixed window then never holds more either). The control,
    the same run without ``--share-budget``, is refused even by fixed windows: each worker paces
    to the whole window."""
    settings = OkxSettings(swaps=["BTC/USDT"], limits=limits, sliding_limits=share)
    async with SimulatedExchange(symbols=["BTC/USDT"], seed=11, gaps={}, okx=settings) as sim:
        venue = two.okx_venue(sim, endpoint_limits=limits or {})
        cfg = two.venues_config(base_config, [venue], timeframes=["1m"])
        start, end = RANGE_START_MS, RANGE_START_MS + hours * HOUR_MS
        cfg["start"], cfg["end"] = local_iso(start), local_iso(end)
        path = write_config(tmp_path / "config.yaml", cfg)
        flags = ["--concurrency", "1", *(["--share-budget"] if share else [])]
        readies = [spawn(procs, path, queue_schema, "127.0.0.2", *flags)[1] for _ in range(2)]
        await workers_ready(readies)
        report = await asyncio.wait_for(
            run_distributed(load_config(cfg), engine(queue_schema), window_days=1), 300
        )
        counts = sim.okx.requests()
        assert not report.failed, report.summary()
        assert len(report.workers) == 2, report.summary()  # both workers took jobs
        assert await two.stored_rows(cfg["database"]["schema"]) == sorted(
            ("sim-okx", symbol, "1m", *c)
            for symbol in two.OKX_SYMBOLS
            for c in model_candles(sim, symbol, "1m", start, end)
        )
    assert two.candle_requests(sim) >= 2 * hours * 60 // 100
    if share:
        assert counts["429"] == 0 and report.total("http_429") == 0, counts
        windows = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            keys = [k.decode() for k in windows.scan_iter(match=f"{redis_prefix}:windows:*")]
        finally:
            windows.close()
        # The windows are the venue label's and the address's, one per endpoint.
        assert any("/sim-okx:127.0.0.2/market/history-candles/" in k for k in keys), keys
    else:
        assert counts["429_by_ip"].get("127.0.0.2", 0) > 0, counts
