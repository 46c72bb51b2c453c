"""CacheManager and AsyncCacheManager against the real Redis, each test under its own key prefix."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import redis

from data_collector.config import load_config
from data_collector.errors import ClosedError, UsageError
from data_collector.redis.keys import cache_key
from tests.support.frames import frame_with_everything
from tests.support.services import REDIS_URL
from utils.cache_manager import AsyncCacheManager, CacheManager
from utils.serialization import SerializationError


@pytest.fixture
def config(redis_prefix: str) -> dict[str, Any]:
    return {"redis": {"url": REDIS_URL, "prefix": redis_prefix}, "logging": {"file": None}}


@pytest.fixture
def raw() -> Any:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    yield client
    client.close()


def test_user_snippet_runs_verbatim(config: dict[str, Any]) -> None:
    data1, data2 = {"n": 1}, [Decimal("2.5"), dt.datetime(2024, 1, 1, tzinfo=dt.UTC)]
    cache = CacheManager(config)
    cache.set("key", {"data": "value"}, ttl=300)
    data = cache.get("key")
    cache.set_multi({"key1": data1, "key2": data2}, ttl=300)
    results = cache.get_multi(["key1", "key2"])
    stats = cache.get_stats()
    print(f"Hit rate: {stats['hit_rate']}")
    assert data == {"data": "value"}
    assert results == {"key1": data1, "key2": data2}
    assert stats["hit_rate"] == 1.0
    cache.close()


def test_config_may_be_a_path_a_config_or_none(
    config: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, redis_prefix: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"redis:\n  url: {REDIS_URL}\n  prefix: {redis_prefix}\n", encoding="utf-8")
    for source in (str(path), load_config(config)):
        with CacheManager(source) as cache:
            assert cache.set("k", 1) and cache.get("k") == 1
    monkeypatch.chdir(tmp_path)  # None reads ./config.yaml
    with CacheManager() as cache:
        assert cache.get("k") == 1


def test_keys_ttl_and_pool_size_follow_config(config: dict[str, Any], raw: Any, redis_prefix: str) -> None:
    config["performance"] = {"redis_pool_size": 7}
    config["cache"] = {"namespace": "nb"}
    with CacheManager(config) as cache:
        assert cache.set("a:b", [1, 2], ttl=300)
        assert cache.set("frac", 1, ttl=1.5)
        full = cache_key(redis_prefix, "nb", "a:b")
        assert raw.exists(full)
        assert 295 <= raw.ttl(full) <= 300
        assert 1000 <= raw.pttl(cache_key(redis_prefix, "nb", "frac")) <= 1500
        assert cache._pool.max_connections == 7
        conn_kwargs = cache._pool.connection_kwargs
        assert conn_kwargs["socket_timeout"] == 2.0 and conn_kwargs["socket_connect_timeout"] == 2.0
        with pytest.raises(UsageError):
            cache.set("x", 1, ttl=0)


def test_stats_after_a_scripted_mix_of_hits_and_misses(config: dict[str, Any]) -> None:
    with CacheManager(config) as cache:
        big = [[i, float(i), 2.0, 3.0, 4.0, 5.0] for i in range(500)]
        assert cache.set("a", 1)
        assert cache.set("big", big)
        assert cache.set_multi({"b": 2, "c": 3})
        for key in ("a", "a", "big", "nope", "b", "zzz"):
            cache.get(key)
        got = cache.get_multi(["a", "b", "c", "d", "e"])
        assert got == {"a": 1, "b": 2, "c": 3}
        assert cache.delete("a", "missing") == 1
        assert cache.get("a") is None
        stats = cache.get_stats()
    # gets: hits a, a, big, b (4), misses nope, zzz (2); get_multi: 3 hits, 2 misses; then a miss
    assert stats["hits"] == 7
    assert stats["misses"] == 5
    assert stats["hit_rate"] == pytest.approx(7 / 12)
    assert stats["sets"] == 4
    assert stats["deletes"] == 1
    assert stats["errors"] == 0
    assert stats["bytes_stored"] < stats["bytes_logical"]  # the candle batch was compressed
    assert stats["compression_ratio"] > 1.5
    # round trips timed: 2 SET, 1 pipeline, 6 GET, 1 MGET, 1 DEL, 1 GET
    assert stats["operations"] == 12
    assert stats["latency_ms_mean"] > 0 and stats["latency_ms_p99"] > 0


def test_delete_exists_and_clear_by_prefix(config: dict[str, Any], raw: Any, redis_prefix: str) -> None:
    with CacheManager(config) as cache, CacheManager(config, namespace="other") as other:
        cache.set_multi({f"user:{i}": i for i in range(2500)} | {"keep": 1, "us*er": 2})
        other.set("user:1", "other namespace")
        assert cache.exists("user:7") and not cache.exists("user:99999")
        assert cache.clear("user:") == 2500
        assert not cache.exists("user:7")
        assert cache.get("keep") == 1 and cache.get("us*er") == 2  # glob characters are literal
        assert other.get("user:1") == "other namespace"
        assert cache.clear() == 2
        assert other.exists("user:1")


def test_compressed_and_plain_values_readable_by_both_apis(config: dict[str, Any]) -> None:
    frame = frame_with_everything()
    candles = [
        [1706630400000 + i * 60_000, 43519.34 + i, 43936.0, 43171.0, 43488.71, 20.5] for i in range(1000)
    ]
    values = {"small": {"a": 1}, "candles": candles, "frame": frame}
    zlib_config = {**config, "cache": {"compression": "zlib"}}

    async def async_side() -> None:
        async with AsyncCacheManager(zlib_config) as acache:
            got = await acache.get_multi(["small", "candles", "frame"])
            assert got["small"] == {"a": 1} and got["candles"] == candles
            pd.testing.assert_frame_equal(got["frame"], frame, check_exact=True, check_freq=True)
            await acache.set("from_async", candles)
            await acache.set_multi({"async_small": 1})

    with CacheManager(config) as cache:  # lz4
        cache.set_multi(values)
        asyncio.run(async_side())
        assert cache.get("from_async") == candles
        assert cache.get("async_small") == 1
        assert cache.get_stats()["compression_ratio"] > 1


async def test_async_manager_methods(config: dict[str, Any]) -> None:
    async with AsyncCacheManager(config) as cache:
        assert await cache.set("k", Decimal("1.10"), ttl=60)
        assert await cache.get("k") == Decimal("1.10")
        assert await cache.get("missing", "dflt") == "dflt"
        assert await cache.exists("k")
        assert await cache.delete("k") == 1
        assert await cache.set_multi({f"p:{i}": i for i in range(10)})
        assert await cache.clear("p:") == 10
        assert await cache.ping()
        stats = cache.get_stats()
        assert stats["hits"] == 1 and stats["misses"] == 1 and stats["sets"] == 11
    await cache.close()  # idempotent
    with pytest.raises(ClosedError):
        await cache.get("k")


def test_cached_decorator_sync_and_async(config: dict[str, Any]) -> None:
    calls: list[Any] = []
    with CacheManager(config) as cache:

        @cache.cached(ttl=60)
        def slow_add(a: int, b: int = 1) -> int | None:
            calls.append((a, b))
            return None if a < 0 else a + b

        assert slow_add(1, 2) == 3
        assert slow_add(1, b=2) == 3  # same bound arguments, same key
        assert slow_add(2) == 3
        assert slow_add(-1) is None and slow_add(-1) is None  # None is cached too
        assert calls == [(1, 2), (2, 1), (-1, 1)]

        @cache.cached(ttl=60)
        async def fetch(symbol: str) -> dict[str, Any]:
            calls.append(symbol)
            return {"symbol": symbol}

        async def twice() -> None:
            assert await fetch("BTC/USDT") == {"symbol": "BTC/USDT"}
            assert await fetch("BTC/USDT") == {"symbol": "BTC/USDT"}

        asyncio.run(twice())
        assert calls.count("BTC/USDT") == 1


async def test_async_cached_decorator(config: dict[str, Any]) -> None:
    calls = 0
    async with AsyncCacheManager(config) as cache:

        @cache.cached(ttl=60, key=lambda n: f"square:{n}")
        async def square(n: int) -> int:
            nonlocal calls
            calls += 1
            return n * n

        assert await square(4) == 16 and await square(4) == 16
        assert calls == 1
        assert await cache.get("square:4") == 16
        with pytest.raises(UsageError):
            cache.cached()(lambda: 1)  # type: ignore[arg-type]


def test_unsupported_values_raise_and_corrupt_values_are_misses(
    config: dict[str, Any], raw: Any, redis_prefix: str
) -> None:
    with CacheManager(config) as cache:
        with pytest.raises(SerializationError):
            cache.set("bad", {1, 2})
        raw.set(cache_key(redis_prefix, "cache", "foreign"), b"plain text")
        assert cache.get("foreign") is None
        assert cache.get_stats()["errors"] == 1
    with CacheManager(config, strict=True) as strict, pytest.raises(Exception, match="cannot decode"):
        strict.get("foreign")


def test_use_after_close_is_a_clear_error(config: dict[str, Any]) -> None:
    cache = CacheManager(config)
    cache.close()
    cache.close()
    with pytest.raises(ClosedError):
        cache.get("k")
