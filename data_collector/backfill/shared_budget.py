"""One request-weight budget per exchange minute, shared through Redis by every worker behind one IP.

Binance counts REQUEST_WEIGHT per client IP and fixed calendar minute of its clock. Workers on one
host (or behind one NAT) spend one budget, so each :class:`~data_collector.backfill.rate_limit.RateLimiter`
pacing to the full budget on its own would overrun it together. This module is the shared part
(issue 17); ``data-collector worker --share-budget`` gives one to every weight-budget client
(Binance spot and USDⓈ-M each their own: separate budgets at the exchange, separate keys here).

The algorithm is the ``limits`` library's fixed window on Redis (an atomic ``INCRBY`` with expiry
in one Lua script): chosen over its moving and sliding windows, whose windows do not reset where
Binance's do. Its fixed window starts at a key's first hit, not on the minute, so the key here
names the exchange's minute (``…/<minute>``): one counter per calendar minute, exactly Binance's.
The counter's key does not hold the limit (``limits`` puts an item's amount in its keys): holders
that know the limit at different moments (a client adopts the exchange's from ``exchangeInfo``
when it opens, :meth:`SharedWeightBudget.set_weight_limit`) or with other margins still count in
one counter, each refusing at its own limit. A refused hit still adds its weight to that minute's
counter (increment, then compare); that only wastes the rest of a minute that was nearly spent,
it never lets more through.

A request is only sent well inside its minute: not in the first or last ``guard_s`` of it, so
neither the error of the measured clock offset nor the request's trip to the server can carry it
into a minute where it was not counted.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Self

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage

from data_collector.errors import ClosedError, UsageError
from data_collector.redis.client import RedisSettings, async_pool

MINUTE_S = 60.0

#: The exchange's time in seconds (local clock plus the measured offset).
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class LimitsOnRedis:
    """A ``limits`` storage on one Redis pool, closed once: what the shared limits stand on.

    Args:
        settings: where Redis is (the client comes from :func:`data_collector.redis.client.async_pool`).
        key_prefix: prefix of every key the storage writes.
    """

    def __init__(self, settings: RedisSettings, key_prefix: str) -> None:
        self._pool = async_pool(settings)
        self._storage = RedisStorage(
            settings.url,
            implementation="redispy",
            key_prefix=key_prefix,
            connection_pool=self._pool,  # type: ignore[arg-type]  # limits passes it on to redis-py
        )
        self._key_prefix = key_prefix
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the Redis connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._pool.disconnect()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} was closed")


class SharedWeightBudget(LimitsOnRedis):
    """``weight_per_min`` per exchange minute for every holder of ``name`` on one Redis.

    Use as ``async with SharedWeightBudget(settings, "binance:203.0.113.7", 6000) as budget:``, then
    ``await budget.acquire(weight)`` before each request.

    Args:
        settings: where Redis is (the client comes from :func:`data_collector.redis.client.async_pool`).
        name: the budget's name: the venue and the public IP the workers share.
        weight_per_min: the weight the minute allows (the exchange's limit minus any margin).
        key_prefix: prefix of the Redis keys (one per minute, expiring after it).
        guard_s: seconds at each end of a minute in which nothing is sent.
        clock: the exchange's time in seconds; default the local clock (offset 0).
        sleep: how to wait (tests inject one that advances a simulated clock).
    """

    def __init__(
        self,
        settings: RedisSettings,
        name: str,
        weight_per_min: int,
        *,
        key_prefix: str = "dc:budget",
        guard_s: float = 0.25,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if weight_per_min <= 0:
            raise UsageError(f"weight_per_min must be > 0, got {weight_per_min}")
        if not 0 <= guard_s < MINUTE_S / 4:
            raise UsageError(f"guard_s must be in [0, 15) seconds, got {guard_s}")
        super().__init__(settings, key_prefix)
        self.name = name
        self.weight_per_min = weight_per_min
        self.guard_s = guard_s
        self._clock = clock
        self._sleep = sleep
        #: Names the counters and gives their expiry; its amount (1) is not the limit.
        self._slot = RateLimitItemPerMinute(1)
        #: Minutes in which a request was refused and waited for the next one.
        self.waits = 0

    def set_weight_limit(self, weight_per_min: int) -> None:
        """Refuse at ``weight_per_min`` from now on (the exchange's limit, once the client read it);
        the minute's counter is the same one."""
        if weight_per_min <= 0:
            raise UsageError(f"weight_per_min must be > 0, got {weight_per_min}")
        self.weight_per_min = weight_per_min

    def _key(self, minute: int) -> str:
        return self._slot.key_for(self.name, str(minute))

    def _minute(self) -> tuple[int, float]:
        """The exchange's current minute and the seconds into it."""
        now = self._clock()
        minute = math.floor(now / MINUTE_S)
        return minute, now - minute * MINUTE_S

    async def _to_next_minute(self, into_s: float) -> None:
        await self._sleep(MINUTE_S - into_s + self.guard_s)

    async def acquire(self, weight: int) -> None:
        """Wait until ``weight`` fits in a minute's shared budget, and spend it there."""
        self._check_open()
        if not 0 < weight <= self.weight_per_min:
            raise UsageError(f"weight must be in 1..{self.weight_per_min}, got {weight}")
        while True:
            minute, into = self._minute()
            if into < self.guard_s:
                await self._sleep(self.guard_s - into)
                continue
            if into > MINUTE_S - self.guard_s:
                await self._to_next_minute(into)
                continue
            spent = await self._storage.incr(self._key(minute), self._slot.get_expiry(), amount=weight)
            if spent <= self.weight_per_min:
                return
            self.waits += 1
            await self._to_next_minute(self._minute()[1])

    async def used(self) -> int:
        """Weight spent (or refused) in the current minute, by every holder."""
        minute, _ = self._minute()
        return int(await self._storage.get(self._key(minute)))
