"""CacheManager against the baseline of JSON plus one Redis command per key."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import redis

from benchmarks.harness import BenchContext, Row, Table
from data_collector.percentiles import percentiles
from utils.cache_manager import AsyncCacheManager, CacheManager
from utils.serialization import compress, encode, pack

NAME = "cache"
DESCRIPTION = "CacheManager get/set latency, get_multi/set_multi of 1,000 keys, stored size vs JSON"

TICKER = {
    "symbol": "BTC/USDT",
    "timestamp": 1706630400000,
    "datetime": "2024-01-30T16:00:00.000Z",
    "high": 43936.0,
    "low": 43171.0,
    "bid": 43488.7,
    "bidVolume": 1.2,
    "ask": 43488.71,
    "askVolume": 0.4,
    "vwap": 43512.3,
    "open": 43519.34,
    "close": 43488.71,
    "last": 43488.71,
    "previousClose": 43519.33,
    "change": -30.63,
    "percentage": -0.07,
    "average": 43504.02,
    "baseVolume": 20554.95,
    "quoteVolume": 894327112.5,
}


def candles(n: int = 1000, seed: int = 1) -> list[list[Any]]:
    """A random walk shaped like ccxt's fetch_ohlcv output (ms timestamps, 2-decimal prices)."""
    rng = np.random.default_rng(seed)
    close = np.round(43000 * np.cumprod(1 + rng.normal(0, 0.001, n)), 2)
    spread = np.round(np.abs(rng.normal(0, 8, (n, 2))), 2)
    volume = np.round(rng.exponential(20, n), 5)
    opens = np.concatenate(([43000.0], close[:-1]))
    return [
        [
            1706630400000 + i * 60_000,
            float(opens[i]),
            float(max(opens[i], close[i]) + spread[i, 0]),
            float(min(opens[i], close[i]) - spread[i, 1]),
            float(close[i]),
            float(volume[i]),
        ]
        for i in range(n)
    ]


def candle_frame(rows: list[list[Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"])
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("ts"), unit="ms", utc=True), name="ts")
    return frame


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    quantiles = percentiles([ns / 1e6 for ns in samples_ns], (50, 99))
    return quantiles["p50"] or 0.0, quantiles["p99"] or 0.0


def _latencies(fn: Callable[[int], object], n: int) -> list[int]:
    out = []
    for i in range(n):
        started = time.perf_counter_ns()
        fn(i)
        out.append(time.perf_counter_ns() - started)
    return out


def _batch_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - started) / 1e6)
    return statistics.median(times)


def _measure(ctx: BenchContext, prefix: str) -> list[Table]:
    config = {"redis": {"url": ctx.redis_url, "prefix": prefix}, "logging": {"file": None}}
    ops = 500 if ctx.quick else 10_000
    batches = 3 if ctx.quick else 20
    keys = [f"t:{i}" for i in range(1000)]
    plain = redis.Redis.from_url(ctx.redis_url, socket_timeout=5)
    cache = CacheManager(config)
    tables: list[Table] = []
    try:
        cache.set_multi({k: TICKER for k in keys}, ttl=600)
        for k in keys:
            plain.set(f"{prefix}:json:{k}", json.dumps(TICKER), ex=600)
        # warm both connection pools
        cache.get(keys[0])
        plain.get(f"{prefix}:json:{keys[0]}")

        results: dict[str, list[tuple[float, float]]] = {
            "json_get": [],
            "get": [],
            "json_set": [],
            "set": [],
        }
        multi: dict[str, list[float]] = {
            "json_get_multi": [],
            "get_multi": [],
            "json_set_multi": [],
            "set_multi": [],
        }
        for _ in range(ctx.repeats):
            results["json_get"].append(
                _percentiles(
                    _latencies(lambda i: json.loads(plain.get(f"{prefix}:json:{keys[i % 1000]}")), ops)
                )
            )
            results["get"].append(_percentiles(_latencies(lambda i: cache.get(keys[i % 1000]), ops)))
            results["json_set"].append(
                _percentiles(
                    _latencies(
                        lambda i: plain.set(f"{prefix}:json:{keys[i % 1000]}", json.dumps(TICKER), ex=600),
                        ops,
                    )
                )
            )
            results["set"].append(
                _percentiles(_latencies(lambda i: cache.set(keys[i % 1000], TICKER, ttl=600), ops))
            )

            def json_get_many() -> None:
                for k in keys:
                    json.loads(plain.get(f"{prefix}:json:{k}"))

            def json_set_many() -> None:
                for k in keys:
                    plain.set(f"{prefix}:json:{k}", json.dumps(TICKER), ex=600)

            multi["json_get_multi"].append(_batch_ms(json_get_many, max(1, batches // 4)))
            multi["get_multi"].append(_batch_ms(lambda: cache.get_multi(keys), batches))
            multi["json_set_multi"].append(_batch_ms(json_set_many, max(1, batches // 4)))
            multi["set_multi"].append(
                _batch_ms(lambda: cache.set_multi({k: TICKER for k in keys}, ttl=600), batches)
            )

        for op in ("get", "set"):
            for index, quantile in ((0, "p50"), (1, "p99")):
                table = Table(f"Cache {op} of a ticker dict, latency {quantile}")
                table.add(
                    Row(
                        f"json + redis-py {op.upper()}",
                        [r[index] for r in results[f"json_{op}"]],
                        "ms",
                        baseline=True,
                        higher_is_better=False,
                    )
                )
                table.add(
                    Row(f"CacheManager.{op}", [r[index] for r in results[op]], "ms", higher_is_better=False)
                )
                if op == "get" and quantile == "p99":
                    p99 = statistics.median(r[1] for r in results["get"])
                    table.notes.append(
                        f"target: get p99 < 1 ms on loopback: {'met' if p99 < 1 else 'NOT met'}"
                    )
                table.notes.append(f"{ops:,} calls per run, one connection, loopback Redis")
                tables.append(table)

        for op in ("get_multi", "set_multi"):
            command = "GET" if op == "get_multi" else "SET EX"
            table = Table(f"Cache {op} of 1,000 ticker dicts, time per batch")
            table.add(
                Row(
                    f"json + 1,000 x {command}",
                    multi[f"json_{op}"],
                    "ms",
                    baseline=True,
                    higher_is_better=False,
                )
            )
            table.add(Row(f"CacheManager.{op}", multi[op], "ms", higher_is_better=False))
            if op == "get_multi":
                median = statistics.median(multi[op])
                table.notes.append(f"target: get_multi(1000) < 5 ms: {'met' if median < 5 else 'NOT met'}")
            tables.append(table)

        tables.append(_size_table(cache))
        tables.append(_compression_table(ctx))
    finally:
        cache.clear()
        cache.close()
        _delete_prefix(plain, prefix)
        plain.close()
    return tables


def _size_table(cache: CacheManager) -> Table:
    rows = candles()
    frame = candle_frame(rows)
    subjects: list[tuple[str, Any, str]] = [
        ("1,000 candles (list of lists)", rows, json.dumps(rows)),
        ("ticker dict", TICKER, json.dumps(TICKER)),
        ("1,000-candle DataFrame", frame, frame.to_json(orient="split")),
    ]
    table = Table("Cache stored size against JSON (lower is better)")
    for label, value, as_json in subjects:
        stored, logical = encode(value, cache._core.compression, cache._core.threshold)
        ratio = 100.0 * len(stored) / len(as_json.encode())
        table.add(Row(label, [ratio], "% of JSON", higher_is_better=False))
        table.notes.append(
            f"{label}: JSON {len(as_json):,} B, packed {logical:,} B, stored {len(stored):,} B "
            f"({cache._core.compression})"
        )
    candle_ratio = table.rows[0].values[0]
    table.notes.append(f"target: candle batch <= 50% of JSON: {'met' if candle_ratio <= 50 else 'NOT met'}")
    return table


def _compression_table(ctx: BenchContext) -> Table:
    """zlib-1 against lz4 on the packed form of 1,000 candles: what the default was chosen from."""
    packed = pack(candles())
    table = Table("Cache compression of 1,000 packed candles: encode speed (higher is better)")
    loops = 20 if ctx.quick else 200
    sizes = []
    for name in ("zlib", "lz4"):
        speeds = []
        for _ in range(ctx.repeats):
            started = time.perf_counter()
            for _ in range(loops):
                body = compress(packed, name)
            speeds.append(len(packed) * loops / (time.perf_counter() - started) / 1e6)
        table.add(
            Row(f"{name}{'-1' if name == 'zlib' else ''} compress", speeds, "MB/s", baseline=name == "zlib")
        )
        sizes.append(f"{name}: {len(packed):,} B -> {len(body):,} B ({len(packed) / len(body):.2f}x)")
    table.notes += sizes
    return table


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(batch), 1000):
        client.delete(*batch[start : start + 1000])


async def _async_get_table(ctx: BenchContext, prefix: str) -> Table:
    config = {"redis": {"url": ctx.redis_url, "prefix": prefix}, "logging": {"file": None}}
    ops = 500 if ctx.quick else 10_000
    table = Table("AsyncCacheManager get of a ticker dict, latency (same event loop, sequential awaits)")
    async with AsyncCacheManager(config) as cache:
        await cache.set("t", TICKER, ttl=600)
        p50s, p99s = [], []
        for _ in range(ctx.repeats):
            samples = []
            for _ in range(ops):
                started = time.perf_counter_ns()
                await cache.get("t")
                samples.append(time.perf_counter_ns() - started)
            p50, p99 = _percentiles(samples)
            p50s.append(p50)
            p99s.append(p99)
        await cache.clear()
    table.add(Row("AsyncCacheManager.get p50", p50s, "ms", higher_is_better=False))
    table.add(Row("AsyncCacheManager.get p99", p99s, "ms", higher_is_better=False))
    return table


async def run(ctx: BenchContext) -> list[Table]:
    prefix = f"bench_cache_{uuid.uuid4().hex[:8]}"
    tables = _measure(ctx, prefix)
    tables.append(await _async_get_table(ctx, prefix))
    return tables
