"""Per-endpoint request windows shared through Redis by every worker behind one IP (issue 17).

OKX limits its public REST per IP and endpoint: N requests per 2 s (20 for
``market/history-candles``), with no header saying how many are left. One client paces each
endpoint itself (:meth:`~data_collector.backfill.rate_limit.RateLimiter.acquire_endpoint`); two
workers behind one IP each pacing to the full N would send 2N. With ``data-collector worker
--share-budget`` each window-mode client also takes every request's slot here, in one Redis
window per (venue label, source address, endpoint), each endpoint at its own N.

The algorithm is the ``limits`` library's moving window on Redis (its storage's atomic Lua script:
a list of the last N send times; a request is let through only when the N-th most recent is older
than the window). OKX does not document whether its windows are aligned to the clock or slide:
"no more than N in any 2 s span" holds N in every aligned window too, so it is correct whichever
way the server counts; the fixed window (N per aligned span) would let 2N through around a
boundary of a sliding server. Its send times are each worker's ``time.time()`` (``limits`` reads
the clock inside the script call): workers on one host share that clock, hosts behind one NAT
need theirs synchronised (NTP) to well within the guard below.

A request takes some milliseconds to reach the server, not always the same: two sent exactly a
window apart can arrive a little less than a window apart. So a request also waits until the
N-th most recent send is ``guard_s`` older than the window (the per-process limiter's
``boundary_guard_s``) before it takes its slot; ``limits`` counts whole seconds, so that look
reaches ``ceil(window + guard)`` seconds back, and the atomic take then checks the exact window.
The take lets the list expire a window after it (``limits``' expiry is its window); the list is
then kept for the look (one ``EXPIRE`` more), or a request a moment over a window after a burst
would find no list and go without the guard.
Two holders that look at the same instant can both go on; the second then takes the next slot,
which the take still keeps a full window from its predecessor, with less of the guard to spare.

The window's key holds its N (``limits`` puts an item's amount in its keys, and its list keeps N
send times): workers share an endpoint's window only when they give it the same N, which the same
config (and ccxt version) gives them; a worker's queue is its config version's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import redis.asyncio
from limits import RateLimitItemPerSecond

from data_collector.backfill.shared_budget import LimitsOnRedis
from data_collector.errors import UsageError
from data_collector.redis.client import RedisSettings

Sleep = Callable[[float], Awaitable[None]]


class SharedEndpointWindows(LimitsOnRedis):
    """One moving window per endpoint of ``name``, on one Redis, for every holder of that name.

    Use as ``async with SharedEndpointWindows(settings, "okx:203.0.113.7") as windows:``, then
    ``await windows.acquire("market/history-candles", 20)`` before each request to that endpoint.

    Args:
        settings: where Redis is.
        name: the windows' name: the venue label and the public IP the workers share.
        window_s: the window's length in whole seconds (OKX: 2; ``limits`` counts whole seconds).
        key_prefix: prefix of the Redis keys (one list per endpoint, expiring a few seconds after
            its last request).
        sleep: how to wait.
    """

    def __init__(
        self,
        settings: RedisSettings,
        name: str,
        *,
        window_s: float = 2,
        key_prefix: str = "dc:windows",
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if window_s < 1 or window_s != int(window_s):
            raise UsageError(f"window_s must be a whole number of seconds >= 1, got {window_s}")
        super().__init__(settings, key_prefix)
        self.name = name
        self.window_s = int(window_s)
        self._sleep = sleep
        self._redis = redis.asyncio.Redis(connection_pool=self._pool)
        #: Times a request waited for its endpoint's shared window.
        self.waits = 0

    def key(self, endpoint: str, limit: int) -> str:
        """The Redis key (under the prefix) of ``endpoint``'s window at ``limit`` per window."""
        return RateLimitItemPerSecond(limit, self.window_s).key_for(self.name, endpoint)

    async def acquire(self, endpoint: str, limit: int, guard_s: float = 0.05) -> None:
        """Wait until one request to ``endpoint`` fits its shared window of ``limit`` requests
        (with ``guard_s`` to spare), and take its slot.

        Raises:
            UsageError: ``limit`` < 1 or ``guard_s`` < 0.
            ClosedError: after :meth:`close`.
        """
        self._check_open()
        if limit < 1:
            raise UsageError(f"an endpoint's limit must be at least 1 request per window, got {limit}")
        if guard_s < 0:
            raise UsageError(f"guard_s must be >= 0, got {guard_s}")
        key = self.key(endpoint, limit)
        look_back = math.ceil(self.window_s + guard_s)
        while True:
            # The list keeps the last ``limit`` send times: when all of them are within the look,
            # the oldest one named is the limit-th most recent.
            oldest, count = await self._storage.get_moving_window(key, limit, look_back)
            if count >= limit:
                wait = oldest + self.window_s + guard_s - time.time()
                if wait > 0:
                    self.waits += 1
                    await self._sleep(wait)
                    continue
            if await self._storage.acquire_entry(key, limit, self.window_s):
                await self._redis.expire(f"{self._key_prefix}:{key}", look_back)
                return
            # Another holder took the slot between the look and the take: look again.

    async def sent(self, endpoint: str, limit: int) -> int:
        """Requests to ``endpoint`` in its current window, by every holder."""
        _, count = await self._storage.get_moving_window(self.key(endpoint, limit), limit, self.window_s)
        return int(count)
