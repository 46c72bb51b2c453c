"""Workers behind one IP share one weight budget through Redis (issue 17, acceptance 4, short form).

Two ccxt clients bound to the same source address (127.0.0.2) against the per-IP simulator, each
pacing through its own :class:`SharedWeightBudget` instance on the real Redis. The simulator's
clock is frozen and moves only when both workers wait for a minute (so no request is ever in
flight across a jump): a run that needs three minutes of budget takes well under a second.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest

from data_collector.backfill.shared_budget import SharedWeightBudget
from data_collector.errors import ClosedError, UsageError
from data_collector.markets import MINUTE_MS
from data_collector.redis.client import RedisSettings
from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL

KLINES_WEIGHT = 2
#: The simulator's budget per IP and minute: ten klines requests.
LIMIT = 10 * KLINES_WEIGHT
#: Each of two workers sends this many: 3 minutes of budget together.
PER_WORKER = 15


class SimTime:
    """The budget's clock and sleep on the simulator's frozen clock.

    A sleeping worker parks; when every running worker is parked, the clock jumps to the earliest
    wake-up and those workers go on. While any worker is sending, time stands still.
    """

    def __init__(self, sim: SimulatedExchange, workers: int) -> None:
        self.sim = sim
        self.active = workers
        self.parked: list[tuple[float, asyncio.Future[None]]] = []
        self.changed = asyncio.Event()
        self.jumps = 0

    def now(self) -> float:
        return self.sim.clock.now_ms() / 1000

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parked.append((self.now() + seconds, fut))
        self.changed.set()
        await fut

    def done(self) -> None:
        self.active -= 1
        self.changed.set()

    async def run(self) -> None:
        while self.active:
            await self.changed.wait()
            self.changed.clear()
            if self.parked and len(self.parked) == self.active:
                wake = min(t for t, _ in self.parked)
                self.sim.clock.freeze(math.ceil(wake * 1000))
                self.jumps += 1
                due = [p for p in self.parked if p[0] <= wake]
                self.parked = [p for p in self.parked if p[0] > wake]
                for _, fut in due:
                    fut.set_result(None)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=["BTC/USDT"], seed=1, weight_limit=LIMIT) as s:
        s.clock.freeze((s.clock.now_ms() // MINUTE_MS + 1) * MINUTE_MS + 1000)
        yield s


async def _run(sim: SimulatedExchange, redis_prefix: str, names: tuple[str, str]) -> tuple[int, SimTime]:
    """Two workers on 127.0.0.2, budgets named ``names``; the number of 429/418 answers they got."""
    time = SimTime(sim, workers=2)
    refused: list[str] = []
    settings = RedisSettings(url=REDIS_URL)

    async def worker(ex: ccxt.binance, budget: SharedWeightBudget) -> None:
        try:
            for _ in range(PER_WORKER):
                await budget.acquire(KLINES_WEIGHT)
                try:
                    await ex.public_get_klines({"symbol": "BTCUSDT", "interval": "1m", "limit": 1})
                except ccxt.DDoSProtection as exc:
                    refused.append(str(exc)[:80])
        finally:
            time.done()

    async with AsyncExitStack() as stack:
        pairs = []
        for name in names:
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            ex = ccxt.binance({**sim.ccxt_config(), "enableRateLimit": False, "session": session})
            stack.push_async_callback(ex.close)
            budget = SharedWeightBudget(
                settings, name, LIMIT, key_prefix=redis_prefix, clock=time.now, sleep=time.sleep
            )
            await stack.enter_async_context(budget)
            pairs.append((ex, budget))
        keeper = asyncio.create_task(time.run())
        await asyncio.wait_for(asyncio.gather(*(worker(ex, b) for ex, b in pairs)), 60)
        await asyncio.wait_for(keeper, 5)
    return len(refused), time


async def test_two_workers_share_one_budget_and_are_never_refused(
    sim: SimulatedExchange, redis_prefix: str
) -> None:
    start_minute = sim.clock.now_ms() // MINUTE_MS
    refused, time = await _run(sim, redis_prefix, ("sim-binance:127.0.0.2", "sim-binance:127.0.0.2"))
    stats = sim.stats()
    assert refused == 0 and stats["429"] == 0 and stats["418"] == 0
    assert stats["weight"] == 2 * PER_WORKER * KLINES_WEIGHT == 3 * LIMIT  # everything was sent
    # It took three minutes of budget: the last request went out in the third minute.
    assert sim.clock.now_ms() // MINUTE_MS - start_minute == 2
    assert time.jumps >= 2


async def test_two_workers_with_their_own_budgets_overrun_the_address(
    sim: SimulatedExchange, redis_prefix: str
) -> None:
    """The control: the same run with a budget each (what two unshared limiters do) earns 429s."""
    refused, _ = await _run(sim, redis_prefix, ("sim-binance:worker-a", "sim-binance:worker-b"))
    assert refused > 0 and sim.stats()["429"] == refused


async def test_bad_weights_and_closed_budget(redis_prefix: str) -> None:
    with pytest.raises(UsageError, match="weight_per_min"):
        SharedWeightBudget(RedisSettings(url=REDIS_URL), "x", 0)
    budget = SharedWeightBudget(RedisSettings(url=REDIS_URL), "x", 10, key_prefix=redis_prefix)
    async with budget:
        with pytest.raises(UsageError, match="weight must be in 1..10"):
            await budget.acquire(11)
    await budget.close()  # idempotent
    with pytest.raises(ClosedError):
        await budget.acquire(1)


class _Refused(Exception):
    """Raised by the test's sleep: the budget refused and would wait for the next minute."""


async def test_holders_with_other_limits_count_in_one_counter(redis_prefix: str) -> None:
    """A worker that has read the exchange's limit (20) and one still at the default (6000) spend
    one counter; moving the second to 20 makes it refuse what the minute no longer holds."""
    now = 29_000_000 * 60 + 30.0  # the middle of a minute, for every holder

    async def refuse(seconds: float) -> None:
        raise _Refused

    settings = RedisSettings(url=REDIS_URL)
    kwargs: dict[str, Any] = {"key_prefix": redis_prefix, "clock": lambda: now, "sleep": refuse}
    async with (
        SharedWeightBudget(settings, "sim-binanceusdm:127.0.0.2", 20, **kwargs) as read,
        SharedWeightBudget(settings, "sim-binanceusdm:127.0.0.2", 6000, **kwargs) as default,
    ):
        await default.acquire(15)
        assert await read.used() == await default.used() == 15
        with pytest.raises(_Refused):
            await read.acquire(10)
        default.set_weight_limit(20)
        with pytest.raises(_Refused):
            await default.acquire(1)
        with pytest.raises(UsageError, match="weight_per_min"):
            default.set_weight_limit(0)
