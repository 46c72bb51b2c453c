"""Per-endpoint windows shared through Redis by the workers behind one IP (issue 17, OKX).

Two :class:`SharedEndpointWindows` holders of one name on the real Redis, each with several tasks,
take slots of a 1 s window of 3 requests: no 1 s span ever holds more than 3 of their sends,
and each send keeps the guard. The control, a name each (what unshared workers do), packs more.
Real time, about 2 s a case.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from data_collector.backfill.shared_windows import SharedEndpointWindows
from data_collector.errors import ClosedError, UsageError
from data_collector.redis.client import RedisSettings
from tests.support.services import REDIS_URL
from tests.support.waiting import wait_for_async

LIMIT = 3
GUARD_S = 0.2
ENDPOINT = "market/history-candles"


async def _sends(redis_prefix: str, names: tuple[str, str], per_task: int = 2) -> list[float]:
    """Two holders (``names``), two tasks each taking ``per_task`` slots; the send times, sorted."""
    settings = RedisSettings(url=REDIS_URL)
    sent: list[float] = []

    async def task(windows: SharedEndpointWindows) -> None:
        for _ in range(per_task):
            await windows.acquire(ENDPOINT, LIMIT, GUARD_S)
            sent.append(time.time())

    async with (
        SharedEndpointWindows(settings, names[0], window_s=1, key_prefix=redis_prefix) as a,
        SharedEndpointWindows(settings, names[1], window_s=1, key_prefix=redis_prefix) as b,
    ):
        await asyncio.wait_for(asyncio.gather(task(a), task(a), task(b), task(b)), 30)
    return sorted(sent)


def _tightest_span(sent: list[float]) -> float:
    """The shortest time holding ``LIMIT + 1`` sends."""
    return min(later - first for first, later in zip(sent, sent[LIMIT:], strict=False))


async def test_holders_of_one_name_share_each_window(redis_prefix: str) -> None:
    sent = await _sends(redis_prefix, ("okx:127.0.0.2", "okx:127.0.0.2"))
    assert len(sent) == 8
    # Any 1 s holds at most 3 sends (4 are more than a window apart), with most of the guard to
    # spare (the guard is 0.2 s; the send times here are taken a moment after each slot).
    assert _tightest_span(sent) >= 1.0 + GUARD_S / 2


async def test_holders_of_two_names_overrun_the_window(redis_prefix: str) -> None:
    """The control: a window each, as two workers without ``--share-budget``, packs 4 in a second."""
    sent = await _sends(redis_prefix, ("okx:worker-a", "okx:worker-b"))
    assert _tightest_span(sent) < 1.0


async def test_a_burst_keeps_its_guard_after_the_librarys_window_expired(redis_prefix: str) -> None:
    """``limits`` lets a window's list expire a window after its last take; kept for the guard's
    look, so a request a moment over a second after a burst still waits for the guard."""
    settings = RedisSettings(url=REDIS_URL)
    async with SharedEndpointWindows(settings, "okx:127.0.0.2", window_s=1, key_prefix=redis_prefix) as w:
        for _ in range(LIMIT):
            await w.acquire(ENDPOINT, LIMIT, GUARD_S)
        burst = time.time()

        async def window_passed() -> bool:
            return await w.sent(ENDPOINT, LIMIT) == 0

        await wait_for_async(window_passed, 5, "the burst to leave the 1 s window")
        await w.acquire(ENDPOINT, LIMIT, GUARD_S)
        assert time.time() - burst >= 1.0 + GUARD_S / 2
        assert w.waits >= 1


async def test_bad_input_and_closed(redis_prefix: str) -> None:
    settings = RedisSettings(url=REDIS_URL)
    with pytest.raises(UsageError, match="whole number of seconds"):
        SharedEndpointWindows(settings, "x", window_s=1.5)
    windows = SharedEndpointWindows(settings, "x", key_prefix=redis_prefix)
    async with windows:
        with pytest.raises(UsageError, match="at least 1 request"):
            await windows.acquire(ENDPOINT, 0)
        with pytest.raises(UsageError, match="guard_s"):
            await windows.acquire(ENDPOINT, 1, -1.0)
    await windows.close()  # idempotent
    with pytest.raises(ClosedError):
        await windows.acquire(ENDPOINT, 1)
