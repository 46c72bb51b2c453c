"""The streamer's Redis write path vs redis-py's own pipelines, on the same entries.

Each case writes the same N stream entries (``XADD <key> MAXLEN ~ 1000000 <id> d <msgpack trade>``,
explicit increasing ids) plus one ``SET`` of the stream's latest value per batch of 500, on
loopback Redis:

* baseline: redis-py's sync ``pipeline(transaction=False)`` (hiredis parser installed);
* redis-py's asyncio ``pipeline(transaction=False)``, the natural choice inside the streamer's loop;
* the project's ``RedisWriter`` (hand-packed RESP on one redis-py connection, hiredis replies).

It reports throughput and the client CPU per entry (``time.process_time``: Redis's own work is
in another process). This is the measurement behind keeping the hand-packed writer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import redis
import redis.asyncio

from benchmarks.harness import BenchContext, Row, Table
from data_collector.redis.client import RedisEndpoint
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.writer import Entry, RedisWriter, set_prefix, xadd_prefix

NAME = "redis_write"
DESCRIPTION = "Redis write path: RedisWriter (hand-packed RESP) vs redis-py pipelines, sync and asyncio"

BATCH = 500
MAXLEN = 1_000_000  # above any run size, so that trimming never hides a lost entry
PAYLOAD = msgpack.packb(
    {"e": "trade", "E": 1672515782136, "s": "BTC/USDT", "t": 12345, "p": 43000.1, "q": 0.25, "m": True}
)


def _keys() -> tuple[str, str]:
    base = f"bench:{uuid.uuid4().hex[:8]}"
    return f"{base}:stream:trade:BTC/USDT", f"{base}:latest:trade:BTC/USDT"


def _ids(n: int) -> list[str]:
    return [f"1700000000000-{i}" for i in range(n)]


def _queue_batch(pipe: Any, stream: str, latest: str, ids: list[str]) -> None:
    """One batch on a redis-py pipeline (sync and asyncio pipelines queue alike)."""
    for entry_id in ids:
        pipe.xadd(stream, {"d": PAYLOAD}, id=entry_id, maxlen=MAXLEN, approximate=True)
    pipe.set(latest, PAYLOAD)


def _sync_pipeline(url: str, n: int) -> float:
    stream, latest = _keys()
    ids = _ids(n)
    client = redis.Redis.from_url(url)
    try:
        started = time.process_time()
        for i in range(0, n, BATCH):
            pipe = client.pipeline(transaction=False)
            _queue_batch(pipe, stream, latest, ids[i : i + BATCH])
            pipe.execute()
        cpu = time.process_time() - started
        assert client.xlen(stream) == n
        client.delete(stream, latest)
        return cpu
    finally:
        client.close()


async def _async_pipeline(url: str, n: int) -> float:
    stream, latest = _keys()
    ids = _ids(n)
    client = redis.asyncio.Redis.from_url(url)
    try:
        started = time.process_time()
        for i in range(0, n, BATCH):
            apipe = client.pipeline(transaction=False)
            _queue_batch(apipe, stream, latest, ids[i : i + BATCH])
            await apipe.execute()
        cpu = time.process_time() - started
        assert await client.xlen(stream) == n
        await client.delete(stream, latest)
        return cpu
    finally:
        await client.aclose()


async def _project_writer(url: str, n: int) -> float:
    stream, latest = _keys()
    head, set_head = xadd_prefix(stream, MAXLEN), set_prefix(latest)
    now = time.time()
    entries: list[Entry] = [(head, set_head, entry_id, PAYLOAD, 0, now) for entry_id in _ids(n)]
    metrics = StreamMetrics()
    writer = RedisWriter(
        RedisEndpoint.from_any(url),
        metrics,
        batch_size=BATCH,
        batch_interval_s=0.001,
        buffer_max=n + 1,
        gaps_key=f"{stream}:gaps",  # nothing is dropped here, so no marker is written
        stream_maxlen=MAXLEN,
        max_batch=BATCH,
    )
    started = time.process_time()
    task = asyncio.create_task(writer.run())
    for entry in entries:
        writer.submit(entry)
    await writer.close(task, 120.0)
    cpu = time.process_time() - started
    client = redis.asyncio.Redis.from_url(url)
    try:
        assert metrics.written == n and await client.xlen(stream) == n
        await client.delete(stream, latest)
    finally:
        await client.aclose()
    return cpu


async def _measure(run: Callable[[], Awaitable[float]], n: int) -> tuple[float, float]:
    """(entries per second of wall time, client CPU microseconds per entry)."""
    started = time.perf_counter()
    cpu = await run()
    wall = time.perf_counter() - started
    return n / wall, cpu / n * 1e6


async def run(ctx: BenchContext) -> list[Table]:
    n = 20_000 if ctx.quick else 200_000
    url = ctx.redis_url
    cases: list[tuple[str, Callable[[], Awaitable[float]], bool]] = [
        ("redis-py sync pipeline", lambda: asyncio.to_thread(_sync_pipeline, url, n), True),
        ("redis-py asyncio pipeline", lambda: _async_pipeline(url, n), False),
        ("RedisWriter (hand-packed RESP)", lambda: _project_writer(url, n), False),
    ]
    rate = Table(f"Redis write path, {n:,} entries in batches of {BATCH}: throughput")
    cpu = Table(f"Redis write path, {n:,} entries in batches of {BATCH}: client CPU per entry")
    for label, fn, baseline in cases:
        results = [await _measure(fn, n) for _ in range(ctx.repeats)]
        rate.add(Row(label, [r[0] for r in results], "entries/s", baseline=baseline))
        cpu.add(Row(label, [r[1] for r in results], "us CPU", baseline=baseline, higher_is_better=False))
    writer_cpu = cpu.rows[-1].median
    best_lib = min(cpu.rows[0].median, cpu.rows[1].median)
    cpu.notes.append(
        f"RedisWriter uses {best_lib / writer_cpu:.1f}x less client CPU per entry than the better "
        f"redis-py pipeline: {'kept' if best_lib / writer_cpu >= 2 else 'NOT a clear win'} "
        "(the rule: keep the hand-packed writer only at >= 2x)"
    )
    rate.notes.append("loopback Redis; the sync pipeline runs in a worker thread, the others on the loop")
    return [rate, cpu]
