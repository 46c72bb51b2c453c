"""The rate limiter's per-endpoint window mode (OKX: N requests per 2 s per endpoint), on a fake clock."""

from __future__ import annotations

import pytest

from data_collector.backfill.rate_limit import RateLimiter
from data_collector.errors import UsageError
from tests.backfill.test_rate_limit import FakeClock


def windowed(clock: FakeClock, limits: dict[str, int], guard_s: float = 0.05) -> RateLimiter:
    return RateLimiter(
        endpoint_limits=limits, window_s=2.0, boundary_guard_s=guard_s, clock=clock, sleep=clock.sleep
    )


async def test_an_endpoint_sends_its_n_then_waits_for_the_window() -> None:
    clock = FakeClock(1000.0)
    limiter = windowed(clock, {"market/history-candles": 3, "market/trades": 5})
    for _ in range(3):
        await limiter.acquire_endpoint("market/history-candles")
    assert clock.sleeps == []
    await limiter.acquire_endpoint("market/history-candles")
    assert clock.sleeps == [pytest.approx(2.05)]


async def test_another_endpoint_does_not_wait_for_a_full_one() -> None:
    clock = FakeClock(1000.0)
    limiter = windowed(clock, {"market/history-candles": 2, "market/trades": 5})
    for _ in range(2):
        await limiter.acquire_endpoint("market/history-candles")
    for _ in range(5):
        await limiter.acquire_endpoint("market/trades")
    assert clock.sleeps == []
    # An endpoint not listed gets the smallest limit listed.
    for _ in range(2):
        await limiter.acquire_endpoint("public/time")
    assert clock.sleeps == []


@pytest.mark.parametrize("offset", [0.0, 0.37, 1.999])
async def test_no_fixed_server_window_ever_holds_more_than_n(offset: float) -> None:
    """Whatever the server's window phase, a window holds at most N of our sends."""
    clock = FakeClock(1000.0 + offset)
    limiter = windowed(clock, {"market/candles": 7})
    sent = []
    for _ in range(100):
        await limiter.acquire_endpoint("market/candles")
        sent.append(clock.now)
    for phase in (0.0, 0.5, 1.0, 1.5, offset):
        per_window: dict[int, int] = {}
        for t in sent:
            per_window[int((t - phase) // 2.0)] = per_window.get(int((t - phase) // 2.0), 0) + 1
        assert max(per_window.values()) <= 7, (phase, per_window)
    # ... and it is used: 100 requests take about 100 / 7 windows, not more.
    assert sent[-1] - sent[0] < (100 / 7 + 1) * 2.05


async def test_a_429_closes_the_endpoint_for_a_window_and_halves_its_n_once() -> None:
    clock = FakeClock(1000.0)
    limiter = windowed(clock, {"market/history-candles": 20, "market/trades": 10})
    await limiter.acquire_endpoint("market/history-candles")
    for _ in range(5):  # five answers of the same window say 429: one halving
        limiter.pause_endpoint("market/history-candles")
    await limiter.acquire_endpoint("market/trades")
    assert clock.sleeps == []  # the other endpoint goes on
    await limiter.acquire_endpoint("market/history-candles")
    assert clock.sleeps == [pytest.approx(2.05)]
    start = clock.now
    for _ in range(20):
        await limiter.acquire_endpoint("market/history-candles")
    # N is 10 now (20 halved once): the 21 sends after the gate fill three windows.
    assert clock.now - start == pytest.approx(2 * 2.05, abs=0.01)


def test_bad_endpoint_limits_are_refused() -> None:
    with pytest.raises(UsageError):
        RateLimiter(endpoint_limits={"market/candles": 0})
    with pytest.raises(UsageError):
        RateLimiter(endpoint_limits={})


class FakeShared:
    """Shared windows that make every request wait ``wait_s`` on the fake clock, and record them."""

    def __init__(self, clock: FakeClock, wait_s: float) -> None:
        self.clock = clock
        self.wait_s = wait_s
        self.calls: list[tuple[str, int, float]] = []

    async def acquire(self, endpoint: str, limit: int, guard_s: float = 0.05) -> None:
        self.calls.append((endpoint, limit, guard_s))
        await self.clock.sleep(self.wait_s)


async def test_a_request_takes_its_shared_slot_at_the_configured_limit_after_its_local_window() -> None:
    """Issue 17: behind a shared IP each request also takes a slot of its endpoint's shared window,
    at the limit every worker of the config gives it (not this client's halved one after a 429),
    with the limiter's guard; its send time is when the shared window let it go."""
    clock = FakeClock(1000.0)
    limiter = windowed(clock, {"market/history-candles": 4, "market/trades": 10}, guard_s=0.3)
    shared = FakeShared(clock, wait_s=0.5)
    limiter.pause_endpoint("market/history-candles")  # a 429: this client now sends 2 a window
    clock.now += 2.5
    reservation = await limiter.acquire_endpoint("market/history-candles", shared=shared)
    assert shared.calls == [("market/history-candles", 4, 0.3)]
    assert reservation.sent_at == pytest.approx(1003.0)
    await limiter.acquire_endpoint("public/time", shared=shared)  # not listed: the smallest
    assert shared.calls[-1] == ("public/time", 4, 0.3)
