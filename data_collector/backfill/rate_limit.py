"""One rate limiter per exchange client, shared by every task that talks to it.

Two modes:

* **Weight budget** (Binance and other exchanges that report ``X-MBX-USED-WEIGHT-1M``): the
  exchange counts request weight per calendar minute of *its* clock. We reserve a request's weight
  *before* sending it (a request in flight is not yet in the server's count), fire immediately
  while the minute's budget lasts (the budget's burst, which ccxt's leaky bucket never uses), then
  sleep to the next minute boundary of the server's clock. After every response the server's own
  count is reconciled into ours (the larger wins), so other users of the same IP are accounted for.
* **Leaky bucket** (exchanges without weight headers): one request every ``fallback_interval_s``
  times its cost, ccxt's ``rateLimit`` semantics.
* **Per-endpoint windows** (OKX: N requests per 2 s per endpoint, no header): with
  ``endpoint_limits``, a request names its endpoint and waits until fewer than the endpoint's N
  were sent in the last ``window_s`` (plus ``boundary_guard_s``, so a request that reaches the
  server a little late never lands in the same server window as N others). Each endpoint has its
  own queue: history candles waiting for their window never hold up the trades endpoint. A 429
  there closes that endpoint's gate for one window (:meth:`pause_endpoint`). Workers behind one
  IP also take each request's slot in a window shared through Redis (``shared``: issue 17,
  :mod:`data_collector.backfill.shared_windows`), at the endpoint's configured N.

In both modes a sliding 60 s window caps the number of requests at ``requests_per_min``
(``performance.api_rate_limit``), and a 429's ``Retry-After`` closes one shared gate so every task
pauses together instead of each hammering the server on its own (which is what earns a 418 ban).

The limiter is pure logic over an injectable clock and sleep, so tests drive it without waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from data_collector.errors import UsageError

MINUTE_S = 60.0
WEIGHT_HEADER = "x-mbx-used-weight-1m"
RETRY_AFTER_HEADER = "retry-after"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class SharedWindows(Protocol):
    """Per-endpoint windows shared with other clients behind the same IP (through Redis)."""

    async def acquire(self, endpoint: str, limit: int, guard_s: float = ...) -> None: ...


@dataclass(slots=True)
class Reservation:
    """A request's claim on the budget, returned by :meth:`RateLimiter.acquire`."""

    rid: int
    weight: int
    minute: int
    sent_at: float
    done: bool = False


@dataclass(slots=True)
class LimiterStats:
    requests: int = 0
    weight: int = 0
    waits: int = 0
    waited_s: float = 0.0
    gate_closures: int = 0
    peak_server_weight: int = 0


class RateLimiter:
    """Paces requests to one exchange. Create one per exchange client and share it.

    Args:
        requests_per_min: hard cap on requests in any 60 s window (``performance.api_rate_limit``);
            ``None``: no cap beyond the weight budget (or the leaky bucket).
        weight_per_min: the exchange's weight budget per calendar minute, or ``None`` for the
            leaky-bucket fallback.
        safety_margin: fraction of the weight budget left unused (other clients, clock error).
        fallback_interval_s: seconds between requests of cost 1 in leaky-bucket mode (ccxt's
            ``rateLimit`` / 1000).
        boundary_guard_s: extra wait after a server minute boundary, to absorb the error of the
            measured clock offset.
        endpoint_limits: requests per ``window_s`` per endpoint (per-endpoint window mode; an
            endpoint not listed gets the smallest limit listed); ``None``: the modes above.
        window_s: the length of an endpoint's window (OKX: 2 s).
        clock: wall clock in seconds (``time.time``); the server's clock is ``clock() + offset``.
        sleep: ``asyncio.sleep`` or a test double.
    """

    def __init__(
        self,
        *,
        requests_per_min: int | None = None,
        endpoint_limits: Mapping[str, int] | None = None,
        window_s: float = 2.0,
        weight_per_min: int | None = None,
        safety_margin: float = 0.01,
        fallback_interval_s: float = 0.0,
        boundary_guard_s: float = 0.05,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if requests_per_min is not None and requests_per_min < 1:
            raise UsageError("requests_per_min must be at least 1")
        if weight_per_min is not None and weight_per_min < 1:
            raise UsageError("weight_per_min must be at least 1")
        if not 0.0 <= safety_margin < 0.5:
            raise UsageError("safety_margin must be in [0, 0.5)")
        self.requests_per_min = requests_per_min
        self.safety_margin = safety_margin
        self.fallback_interval_s = max(0.0, fallback_interval_s)
        self.boundary_guard_s = boundary_guard_s
        self._clock = clock
        self._sleep = sleep
        self._weight_limit: int | None = None
        self._budget = 0
        self.set_weight_limit(weight_per_min)
        self._offset_s = 0.0
        self._minute = self._server_minute()
        self._used = 0
        self._in_flight: dict[int, Reservation] = {}
        self._next_id = 0
        self._sent: deque[float] = deque()
        self._gate_until = 0.0
        self._bucket_free_at = 0.0
        self._lock = asyncio.Lock()
        self.stats = LimiterStats()
        if window_s <= 0:
            raise UsageError("window_s must be positive")
        self.window_s = window_s
        self.endpoint_limits: dict[str, int] | None = None
        self._windows: dict[str, _Window] = {}
        if endpoint_limits is not None:
            self.set_endpoint_limits(endpoint_limits)

    def set_endpoint_limits(self, endpoint_limits: Mapping[str, int]) -> None:
        """Switch to per-endpoint window mode with these requests per window."""
        if not endpoint_limits or min(endpoint_limits.values()) < 1:
            raise UsageError("endpoint_limits must give each endpoint at least 1 request per window")
        self.endpoint_limits = dict(endpoint_limits)
        self._windows.clear()

    @property
    def window_mode(self) -> bool:
        """Whether requests are paced per endpoint (``endpoint_limits``)."""
        return self.endpoint_limits is not None

    def _configured_limit(self, endpoint: str) -> int:
        """``endpoint``'s requests per window as configured (an endpoint not listed: the smallest)."""
        limits = self.endpoint_limits or {}
        return limits.get(endpoint, min(limits.values(), default=1))

    def _window(self, endpoint: str) -> _Window:
        window = self._windows.get(endpoint)
        if window is None:
            window = self._windows[endpoint] = _Window(self._configured_limit(endpoint))
        return window

    async def acquire_endpoint(self, endpoint: str, shared: SharedWindows | None = None) -> Reservation:
        """Wait until one request to ``endpoint`` may be sent (window mode), and reserve it.

        The requests of one endpoint are served in order; other endpoints do not wait for it.
        The ``requests_per_min`` cap and the shared gate apply as in the other modes. With
        ``shared``, the request then also takes a slot of the endpoint's shared window, at the
        endpoint's configured limit (the one every worker of the config gives it, not this
        client's halved one after a 429), while this endpoint's queue waits behind it.
        """
        window = self._window(endpoint)
        async with window.lock:
            while True:
                now = self._clock()
                while window.sent and window.sent[0] <= now - self.window_s - self.boundary_guard_s:
                    window.sent.popleft()
                wait = max(0.0, self._gate_until - now, window.gate_until - now)
                if len(window.sent) >= window.limit:
                    wait = max(wait, window.sent[0] + self.window_s + self.boundary_guard_s - now)
                if self.requests_per_min is not None:
                    while self._sent and self._sent[0] <= now - MINUTE_S:
                        self._sent.popleft()
                    if len(self._sent) >= self.requests_per_min:
                        wait = max(wait, self._sent[0] + MINUTE_S - now)
                if wait <= 0:
                    break
                self.stats.waits += 1
                self.stats.waited_s += wait
                await self._sleep(wait)
            if shared is not None:
                await shared.acquire(endpoint, self._configured_limit(endpoint), self.boundary_guard_s)
                now = self._clock()
            window.sent.append(now)
            if self.requests_per_min is not None:
                self._sent.append(now)
            self.stats.requests += 1
            self.stats.weight += 1
            reservation = Reservation(rid=self._next_id, weight=1, minute=self._minute, sent_at=now)
            self._next_id += 1
            return reservation

    def pause_endpoint(self, endpoint: str, seconds: float | None = None) -> None:
        """Close ``endpoint``'s gate for ``seconds`` (default: one window): its 429 without a
        ``Retry-After``. A window later the server's count has started again."""
        window = self._window(endpoint)
        now = self._clock()
        if now >= window.gate_until and window.limit > 1:
            # The server allows fewer than we thought (another client on the IP, a lower tier):
            # the first 429 of a window halves the endpoint's N for the rest of the run, so a
            # wrong limit costs one window of 429s, not one per window.
            window.limit = max(1, window.limit // 2)
        until = now + (self.window_s + self.boundary_guard_s if seconds is None else max(0.0, seconds))
        if until > window.gate_until:
            window.gate_until = until
            self.stats.gate_closures += 1

    @property
    def weight_limit(self) -> int | None:
        return self._weight_limit

    @property
    def budget(self) -> int:
        """Weight we allow ourselves per minute (the limit less the safety margin)."""
        return self._budget

    @property
    def used_weight(self) -> int:
        """Weight counted in the current server minute (ours and the server's, whichever is larger)."""
        self._roll_minute()
        return self._used

    @property
    def minute_left_s(self) -> float:
        """Seconds until the server's current minute ends and its weight count starts again."""
        self._roll_minute()
        return max(0.0, (self._minute + 1) * MINUTE_S - self.server_now())

    @property
    def server_offset_s(self) -> float:
        return self._offset_s

    def set_weight_limit(self, weight_per_min: int | None) -> None:
        """Switch to weight-budget mode with this limit, or to the leaky bucket with ``None``."""
        self._weight_limit = weight_per_min
        if weight_per_min is None:
            self._budget = 0
        else:
            margin = math.ceil(weight_per_min * self.safety_margin)
            self._budget = max(1, weight_per_min - margin)

    def set_server_offset(self, offset_s: float) -> None:
        """Record ``server clock - local clock`` (measured from ``/time`` or a ``Date`` header)."""
        self._offset_s = offset_s
        self._minute = self._server_minute()

    def server_now(self) -> float:
        return self._clock() + self._offset_s

    def _server_minute(self) -> int:
        return math.floor((self._clock() + self._offset_s) / MINUTE_S)

    def _roll_minute(self) -> None:
        minute = self._server_minute()
        if minute != self._minute:
            self._minute = minute
            # Requests still in flight may reach the server after its boundary and count in the
            # new minute, so they are charged to it as well.
            self._used = sum(r.weight for r in self._in_flight.values())

    def _seconds_to_next_minute(self) -> float:
        return (self._minute + 1) * MINUTE_S - self.server_now() + self.boundary_guard_s

    def _wait_needed(self, weight: int) -> float:
        now = self._clock()
        wait = max(0.0, self._gate_until - now)
        while self._sent and self._sent[0] <= now - MINUTE_S:
            self._sent.popleft()
        if self.requests_per_min is not None and len(self._sent) >= self.requests_per_min:
            wait = max(wait, self._sent[0] + MINUTE_S - now)
        if self._weight_limit is None:
            wait = max(wait, self._bucket_free_at - now)
        else:
            self._roll_minute()
            if self._used + weight > self._budget and self._used > 0:
                wait = max(wait, self._seconds_to_next_minute())
        return wait

    async def acquire(self, weight: int = 1) -> Reservation:
        """Wait until a request of ``weight`` may be sent, and reserve it.

        Returns a reservation to pass to :meth:`release` once the response (or error) is in.
        """
        weight = max(1, int(weight))
        async with self._lock:
            # One waiter at a time: the first in line gets the next slot, in order.
            while True:
                wait = self._wait_needed(weight)
                if wait <= 0:
                    break
                self.stats.waits += 1
                self.stats.waited_s += wait
                await self._sleep(wait)
            now = self._clock()
            if self.requests_per_min is not None:
                self._sent.append(now)
            if self._weight_limit is None:
                interval = self.fallback_interval_s * weight
                self._bucket_free_at = max(self._bucket_free_at, now) + interval
            self._used += weight
            self.stats.requests += 1
            self.stats.weight += weight
            reservation = Reservation(rid=self._next_id, weight=weight, minute=self._minute, sent_at=now)
            self._next_id += 1
            self._in_flight[reservation.rid] = reservation
            return reservation

    def release(self, reservation: Reservation, headers: Mapping[str, str] | None = None) -> None:
        """Mark a request finished and reconcile with the server's headers (if any)."""
        if reservation.done:
            return
        reservation.done = True
        self._in_flight.pop(reservation.rid, None)
        if headers:
            self.observe_headers(headers, reservation_minute=reservation.minute)

    def observe_headers(self, headers: Mapping[str, str], *, reservation_minute: int | None = None) -> None:
        """Reconcile with ``X-MBX-USED-WEIGHT-1M`` and honour ``Retry-After``.

        The server's count is taken only when the request was sent in the current minute: a
        response to a request of the previous minute reports that minute's count.
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        used = _int_or_none(lowered.get(WEIGHT_HEADER))
        if used is not None:
            self._roll_minute()
            self.stats.peak_server_weight = max(self.stats.peak_server_weight, used)
            if reservation_minute is None or reservation_minute == self._minute:
                self._used = max(self._used, used)
        retry_after = _float_or_none(lowered.get(RETRY_AFTER_HEADER))
        if retry_after is not None:
            self.pause(retry_after)

    def pause(self, seconds: float) -> None:
        """Close the shared gate for ``seconds``: every task waits (a 429's ``Retry-After``)."""
        until = self._clock() + max(0.0, seconds)
        if until > self._gate_until:
            self._gate_until = until
            self.stats.gate_closures += 1
        if self._weight_limit is not None:
            # The server says the minute's budget is spent, whatever we counted.
            self._roll_minute()
            self._used = max(self._used, self._budget)

    @property
    def gate_open_in_s(self) -> float:
        return max(0.0, self._gate_until - self._clock())


class _Window:
    """One endpoint's window: its limit, the send times in it, its gate and its queue."""

    __slots__ = ("gate_until", "limit", "lock", "sent")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: deque[float] = deque()
        self.gate_until = 0.0
        self.lock = asyncio.Lock()


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _float_or_none(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value.strip())
    except ValueError:
        return None
    return out if math.isfinite(out) and out >= 0 else None


async def measure_server_offset(
    fetch_server_ms: Callable[[], Awaitable[int]], clock: Clock = time.time
) -> float:
    """``server - local`` clock offset in seconds, from one ``/time`` round trip (midpoint rule)."""
    before = clock()
    server_ms = await fetch_server_ms()
    after = clock()
    return server_ms / 1000.0 - (before + after) / 2.0
