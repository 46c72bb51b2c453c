"""The rate limiter's pure logic, driven by a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio

import pytest

from data_collector.backfill.rate_limit import RateLimiter, measure_server_offset
from data_collector.errors import UsageError


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make(clock: FakeClock, **kwargs: object) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


async def test_burst_then_sleeps_to_the_server_minute_boundary() -> None:
    clock = FakeClock(60 * 16_667 + 20.0)  # 20 s into a minute
    limiter = make(clock, requests_per_min=10_000, weight_per_min=100, safety_margin=0.0, boundary_guard_s=0)
    for _ in range(50):
        r = await limiter.acquire(2)
        limiter.release(r)
    assert clock.sleeps == []  # the whole budget is used as a burst
    await limiter.acquire(2)
    assert clock.sleeps == [pytest.approx(40.0)]
    assert limiter.used_weight == 2


async def test_server_offset_moves_the_boundary() -> None:
    clock = FakeClock(60 * 1000 + 30.0)
    limiter = make(clock, requests_per_min=10_000, weight_per_min=10, safety_margin=0.0, boundary_guard_s=0)
    limiter.set_server_offset(20.0)  # the server is at second 50 of its minute
    for _ in range(5):
        limiter.release(await limiter.acquire(2))
    await limiter.acquire(2)
    assert clock.sleeps == [pytest.approx(10.0)]


async def test_safety_margin_is_kept() -> None:
    clock = FakeClock(60 * 1000.0)
    limiter = make(clock, requests_per_min=10_000, weight_per_min=6000)
    assert limiter.budget == 6000 - 60
    sent = 0
    while not clock.sleeps:
        limiter.release(await limiter.acquire(2))
        sent += 1
    assert (sent - 1) * 2 <= limiter.budget


async def test_server_count_is_reconciled_upwards_only() -> None:
    clock = FakeClock(60 * 1000.0)
    limiter = make(clock, requests_per_min=10_000, weight_per_min=100, safety_margin=0.0)
    r = await limiter.acquire(2)
    limiter.release(r, {"X-MBX-USED-WEIGHT-1M": "90"})
    assert limiter.used_weight == 90  # someone else on our IP used weight too
    r = await limiter.acquire(2)
    limiter.release(r, {"x-mbx-used-weight-1m": "4"})
    assert limiter.used_weight == 92


async def test_response_from_previous_minute_does_not_count_in_new_minute() -> None:
    clock = FakeClock(60 * 1000 + 59.9)
    limiter = make(clock, requests_per_min=10_000, weight_per_min=100, safety_margin=0.0)
    r = await limiter.acquire(2)
    clock.now += 0.2  # the response arrives after the boundary
    limiter.release(r, {"X-MBX-USED-WEIGHT-1M": "98"})
    assert limiter.used_weight == 0


async def test_in_flight_requests_are_charged_to_the_new_minute() -> None:
    clock = FakeClock(60 * 1000 + 59.9)
    limiter = make(clock, requests_per_min=10_000, weight_per_min=100, safety_margin=0.0)
    await limiter.acquire(5)  # never released before the boundary
    clock.now += 0.2
    assert limiter.used_weight == 5


async def test_retry_after_closes_one_gate_for_every_task() -> None:
    clock = FakeClock(60 * 1000 + 1.0)
    limiter = make(clock, requests_per_min=10_000, weight_per_min=6000, safety_margin=0.0, boundary_guard_s=0)
    r = await limiter.acquire(2)
    limiter.release(r, {"Retry-After": "7"})
    assert limiter.gate_open_in_s == pytest.approx(7.0)
    results = await asyncio.gather(*(limiter.acquire(2) for _ in range(3)))
    assert all(res.sent_at >= 60 * 1000 + 8.0 - 1e-9 for res in results)
    assert limiter.stats.gate_closures == 1


async def test_request_cap_is_a_sliding_window() -> None:
    clock = FakeClock(60 * 1000.0)
    limiter = make(clock, requests_per_min=3, weight_per_min=None)
    times = []
    for _ in range(7):
        r = await limiter.acquire()
        times.append(r.sent_at)
        clock.now += 1.0
        limiter.release(r)
    for i in range(len(times)):
        window = [t for t in times if times[i] <= t < times[i] + 60]
        assert len(window) <= 3


async def test_no_request_cap_leaves_the_weight_budget_in_charge() -> None:
    clock = FakeClock(60 * 1000.0 + 1.0)
    limiter = make(clock, weight_per_min=6000, safety_margin=0.0, boundary_guard_s=0)
    sent = []
    for _ in range(3000):  # 3000 requests of weight 2 fill the minute's budget exactly
        r = await limiter.acquire(2)
        sent.append(r.sent_at)
        limiter.release(r)
    assert clock.sleeps == [] and len(set(sent)) == 1
    await limiter.acquire(2)  # the next one waits for the server's minute boundary
    assert clock.sleeps == [pytest.approx(59.0)]


async def test_leaky_bucket_fallback_spaces_requests() -> None:
    clock = FakeClock(0.0)
    limiter = make(clock, requests_per_min=10_000, weight_per_min=None, fallback_interval_s=0.05)
    sent = [(await limiter.acquire()).sent_at for _ in range(5)]
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert gaps == [pytest.approx(0.05)] * 4


async def test_oversized_request_passes_on_an_empty_minute() -> None:
    clock = FakeClock(60 * 1000.0)
    limiter = make(clock, requests_per_min=10, weight_per_min=10, safety_margin=0.0)
    await limiter.acquire(50)
    assert clock.sleeps == []


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        RateLimiter(requests_per_min=0)
    with pytest.raises(UsageError):
        RateLimiter(requests_per_min=1, weight_per_min=0)


async def test_measure_server_offset_uses_the_midpoint() -> None:
    ticks = iter([100.0, 100.2])

    async def server_ms() -> int:
        return 105_100

    offset = await measure_server_offset(server_ms, clock=lambda: next(ticks))
    assert offset == pytest.approx(5.0)
