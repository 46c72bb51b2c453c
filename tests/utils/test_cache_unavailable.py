"""The cache when Redis is paused (SIGSTOP) or gone: bounded calls, misses, then recovery.

Only the test's own private redis-server is ever paused.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from data_collector.errors import TransientError
from tests.support.services import PrivateRedis
from utils.cache_manager import AsyncCacheManager, CacheManager, CacheUnavailableError

TIMEOUT_S = 0.5
BACKOFF_S = 0.3
# A call may wait for a connect (or a free pooled connection) and then a read: a generous bound
# so that a loaded CI machine cannot fail the test, yet far from redis-py's default of forever.
BOUND_S = 3 * TIMEOUT_S + 1.0


def make_config(server: PrivateRedis) -> dict[str, Any]:
    return {
        "redis": {
            "url": server.url,
            "prefix": "paused",
            "socket_timeout_s": TIMEOUT_S,
            "connect_timeout_s": TIMEOUT_S,
        },
        "cache": {"down_backoff_s": BACKOFF_S},
        "performance": {"redis_pool_size": 4},
        "logging": {"file": None},
    }


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


def wait_until(predicate: Any, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_paused_redis_gives_bounded_misses_then_recovers(private_redis: PrivateRedis) -> None:
    with CacheManager(make_config(private_redis)) as cache:
        assert cache.set("k", {"v": 1})
        assert cache.get("k") == {"v": 1}
        private_redis.pause()
        try:
            calls = [
                (cache.get, "k"),
                (cache.set, "k2", 2),
                (cache.get_multi, ["k", "k2"]),
                (cache.set_multi, {"a": 1}),
                (cache.exists, "k"),
                (cache.delete, "k2"),
                (cache.clear, "x"),
            ]
            results = []
            for fn, *args in calls:
                result, took = timed(fn, *args)
                assert took < BOUND_S, f"{fn.__name__} took {took:.2f} s"
                results.append(result)
            time.sleep(BACKOFF_S)  # past the back-off: the next call reaches the paused server again
            result, took = timed(cache.get, "k")
            assert result is None and took < BOUND_S
        finally:
            private_redis.resume()
        assert results == [None, False, {}, False, False, 0, 0]
        stats = cache.get_stats()
        assert stats["errors"] == len(calls) + 1
        wait_until(lambda: cache.get("k") == {"v": 1})
        assert cache.set("after", 3) and cache.get("after") == 3


def test_strict_mode_raises_a_transient_error(private_redis: PrivateRedis) -> None:
    with CacheManager(make_config(private_redis), strict=True) as cache:
        assert cache.set("k", 1)
        private_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(CacheUnavailableError) as caught:
                cache.get("k")
            assert time.monotonic() - started < BOUND_S
            assert isinstance(caught.value, TransientError)
            assert "redis" in str(caught.value)
            with pytest.raises(CacheUnavailableError):  # inside the back-off: at once
                cache.set("k", 2)
        finally:
            private_redis.resume()
        wait_until(lambda: _strict_get(cache, "k") == 1)


def _strict_get(cache: CacheManager, key: str) -> Any:
    try:
        return cache.get(key)
    except CacheUnavailableError:
        return None


async def test_async_manager_on_paused_redis(private_redis: PrivateRedis) -> None:
    async with AsyncCacheManager(make_config(private_redis)) as cache:
        assert await cache.set("k", 1)
        private_redis.pause()
        try:
            started = time.monotonic()
            assert await cache.get("k") is None
            assert await cache.set("k", 2) is False
            assert await cache.get_multi(["k"]) == {}
            assert time.monotonic() - started < 2 * BOUND_S
        finally:
            private_redis.resume()
        deadline = time.monotonic() + 10
        while await cache.get("k") != 1:
            assert time.monotonic() < deadline, "did not recover"
            await asyncio.sleep(0.05)
        assert cache.get_stats()["errors"] >= 3


def test_stopped_redis_is_an_error_not_an_exception(private_redis: PrivateRedis) -> None:
    config = make_config(private_redis)
    private_redis.stop()
    with CacheManager(config) as cache:
        assert cache.get("k") is None
        assert cache.set("k", 1) is False
        assert cache.get_stats()["errors"] == 2
        assert not cache.ping()
