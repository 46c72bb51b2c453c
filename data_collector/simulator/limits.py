"""Request weight per fixed calendar minute and client IP, 429 then escalating 418 bans, and injected faults."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

from data_collector.errors import UsageError
from data_collector.markets import MINUTE_MS


class SimClock:
    """The simulator's wall clock in ms: real time plus an offset, or frozen (for tests)."""

    def __init__(self) -> None:
        self.offset_ms = 0
        self.frozen_ms: int | None = None

    def now_ms(self) -> int:
        """Current simulated time in ms."""
        if self.frozen_ms is not None:
            return self.frozen_ms
        return int(time.time() * 1000) + self.offset_ms

    def advance(self, ms: int) -> None:
        """Move the clock forward (or back) by ``ms``."""
        if self.frozen_ms is not None:
            self.frozen_ms += ms
        else:
            self.offset_ms += ms

    def freeze(self, at_ms: int | None = None) -> None:
        """Stop the clock at ``at_ms`` (default: now)."""
        self.frozen_ms = self.now_ms() if at_ms is None else at_ms

    def unfreeze(self) -> None:
        """Let the clock run again from where it stands."""
        if self.frozen_ms is not None:
            self.offset_ms = self.frozen_ms - int(time.time() * 1000)
            self.frozen_ms = None


@dataclass
class Verdict:
    """What the limiter decided: status 200, 429 or 418, Retry-After seconds, weight used."""

    status: int
    retry_after_s: int
    used: int


class WeightLimiter:
    """Binance's REQUEST_WEIGHT limit for one client IP.

    The budget is per fixed calendar minute. Going over gives 429 with Retry-After up to the end
    of the minute. A client still sending during that window, ``ban_grace_ms`` or more after the
    first 429 (that is, after it could have seen it), gets a 418 ban of ``ban_base_s`` seconds,
    doubling for every repeat, up to three days.
    """

    def __init__(
        self,
        limit: int,
        clock: SimClock,
        ban_grace_ms: int = 1000,
        ban_base_s: int = 120,
        ban_max_s: int = 3 * 86400,
    ) -> None:
        self.limit = limit
        self.clock = clock
        self.ban_grace_ms = ban_grace_ms
        self.ban_base_s = ban_base_s
        self.ban_max_s = ban_max_s
        self.window = -1
        self.used = 0
        self.first_429_ms = 0
        self.retry_until_ms = 0
        self.ban_until_ms = 0
        self.bans = 0

    def current_used(self) -> int:
        """Weight used in the current minute."""
        if self.clock.now_ms() // MINUTE_MS != self.window:
            return 0
        return self.used

    def admit(self, weight: int) -> Verdict:
        """Charge ``weight`` or refuse the request."""
        now = self.clock.now_ms()
        minute = now // MINUTE_MS
        if minute != self.window:
            self.window = minute
            self.used = 0
        if now < self.ban_until_ms:
            return Verdict(418, max(1, -(-(self.ban_until_ms - now) // 1000)), self.used)
        if now < self.retry_until_ms:
            if now - self.first_429_ms >= self.ban_grace_ms:
                self.bans += 1
                ban_s = min(self.ban_max_s, self.ban_base_s * 2 ** (self.bans - 1))
                self.ban_until_ms = now + ban_s * 1000
                self.retry_until_ms = 0
                return Verdict(418, ban_s, self.used)
            return Verdict(429, max(1, -(-(self.retry_until_ms - now) // 1000)), self.used)
        if self.used + weight > self.limit:
            self.first_429_ms = now
            self.retry_until_ms = (minute + 1) * MINUTE_MS
            return Verdict(429, max(1, -(-(self.retry_until_ms - now) // 1000)), self.used)
        self.used += weight
        return Verdict(200, 0, self.used)


class IpBudgets:
    """Binance counts REQUEST_WEIGHT per client IP: one :class:`WeightLimiter` per source address.

    ``primary`` (the simulator's ``sim.limiter``) belongs to the first address that sends a weighed
    request, so a single client (every test and demo so far) sees exactly the one budget it always
    had, from whatever address it connects. Every other address gets its own limiter, made with the
    primary's settings as they stand when that address first appears.
    """

    def __init__(self, primary: WeightLimiter) -> None:
        self.primary = primary
        self._by_ip: dict[str, WeightLimiter] = {}

    def for_ip(self, ip: str | None) -> WeightLimiter:
        """The limiter that charges requests from ``ip`` (``None``: an unknown peer, one budget)."""
        key = ip or "unknown"
        limiter = self._by_ip.get(key)
        if limiter is None:
            if not self._by_ip:
                limiter = self.primary
            else:
                p = self.primary
                limiter = WeightLimiter(p.limit, p.clock, p.ban_grace_ms, p.ban_base_s, p.ban_max_s)
            self._by_ip[key] = limiter
        return limiter

    def get(self, ip: str) -> WeightLimiter | None:
        """The limiter of ``ip`` if it has sent a weighed request, else ``None`` (creates none)."""
        return self._by_ip.get(ip)

    def used_by_ip(self) -> dict[str, int]:
        """Weight used in the current minute, by source address."""
        return {ip: limiter.current_used() for ip, limiter in self._by_ip.items()}


@dataclass
class Faults:
    """Latency and fault probabilities for one endpoint (or all of them)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0

    def validate(self) -> Faults:
        """Raise ``UsageError`` for a negative value or a rate above 1."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise UsageError(f"{f.name} must be >= 0, got {value}")
            if f.name.endswith("_rate") and value > 1:
                raise UsageError(f"{f.name} must be a probability in [0, 1], got {value}")
        return self

    def any_fault(self) -> bool:
        return bool(self.error_rate or self.reset_rate or self.hang_rate or self.malformed_rate)


def endpoint_key(endpoint: str | None) -> str | None:
    """``/api/v3/klines``, ``api/v3/klines`` and ``klines`` all name the same endpoint."""
    if endpoint is None:
        return None
    key = endpoint.strip("/")
    if key.startswith("api/v3/"):
        key = key[len("api/v3/") :]
    return key
