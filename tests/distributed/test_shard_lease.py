"""The shard leases (:mod:`data_collector.distributed.shards`) on a real Redis: the share, the
loss of a lease, the group's plan, and the writer that stops at the lease's end.

The streams themselves (real streamer processes on the simulator) are in ``test_shard_streams``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import redis.asyncio

from data_collector.distributed.shards import (
    Lease,
    ShardHost,
    ShardKeys,
    check_single_writer,
    ownership_log,
    plan_shards,
)
from data_collector.errors import UsageError
from data_collector.redis.client import RedisEndpoint
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.writer import GapMarker, RedisWriter, StreamName, set_prefix, xadd_prefix
from tests.support.services import REDIS_URL, PrivateRedis
from tests.support.streaming import wait_for


class FakeStream:
    """Stands in for a shard's streamer: records whether it was stopped."""

    def __init__(self, symbols: list[str], lease: Lease) -> None:
        self.symbols, self.lease, self.stopped = symbols, lease, False

    async def astop(self) -> None:
        self.stopped = True


@asynccontextmanager
async def running(host: ShardHost) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await task


def shard_host(client: redis.asyncio.Redis, prefix: str, name: str, started: list[FakeStream]) -> ShardHost:
    async def start(symbols: list[str], lease: Lease) -> FakeStream:
        stream = FakeStream(symbols, lease)
        started.append(stream)
        return stream

    shards = plan_shards([f"S{i}/USDT" for i in range(6)], 1)
    return ShardHost(client, ShardKeys(prefix, "g"), shards, name, 0.6, start)


async def test_two_hosts_share_the_shards_and_a_lost_lease_stops_its_stream(redis_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    started: list[FakeStream] = []
    a, b = shard_host(client, redis_prefix, "a", started), shard_host(client, redis_prefix, "b", started)
    async with running(a), running(b):
        await wait_for(lambda: len(a.owned()) == 3 and len(b.owned()) == 3, what="3 shards each")
        assert not set(a.owned()) & set(b.owned())
        # Another token takes one of a's leases (as after a pause past it): a stops that stream.
        shard = a.owned()[0]
        stream = next(s for s in started if s.lease is a.held[shard].lease)
        await client.set(ShardKeys(redis_prefix, "g").lease(shard), "intruder:x", px=60_000)
        await wait_for(lambda: stream.stopped and shard not in a.owned(), what="the lost shard stopped")
    await client.aclose()


async def test_a_host_with_other_symbols_is_refused(redis_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    host = shard_host(client, redis_prefix, "a", [])
    await host.check_plan()
    other = ShardHost(client, ShardKeys(redis_prefix, "g"), [["X/USDT"]], "b", 0.6, host.start_shard)
    with pytest.raises(UsageError, match="other symbols"):
        await other.check_plan()
    await client.aclose()


def quick_writer(url: str, gaps_key: str, lease: Any = None) -> RedisWriter:
    """A Redis writer that sends each entry at once (a shard's when given its ``lease``)."""
    return RedisWriter(
        RedisEndpoint.from_any(url, socket_timeout_s=1.0, connect_timeout_s=1.0),
        StreamMetrics(),
        batch_size=1,
        batch_interval_s=0.01,
        buffer_max=100,
        gaps_key=gaps_key,
        stream_maxlen=1000,
        lease=lease,
    )


class ClockLease:
    """A lease valid until ``until`` (monotonic)."""

    stamp = b"h9:7"

    def __init__(self, until: float) -> None:
        self.until = until

    def valid(self) -> bool:
        return time.monotonic() < self.until


@pytest.mark.parametrize("valid", [True, False])
async def test_the_writer_stamps_its_entries_and_writes_nothing_once_its_lease_ran_out(
    redis_prefix: str, valid: bool
) -> None:
    key = f"{redis_prefix}:stream:sim-binance:trade:S/USDT"
    lease = ClockLease(time.monotonic() + (60 if valid else -1))
    writer = quick_writer(REDIS_URL, f"{redis_prefix}:gaps:sim-binance", lease)
    head = xadd_prefix(key, 1000)
    writer.register_stream(head, StreamName(key, "trade", "S/USDT"))
    task = asyncio.create_task(writer.run())
    for i in range(1, 4):
        writer.submit((head, set_prefix(key + ":latest"), f"{i}-0", b"\x80", i, time.time()))
    await wait_for(lambda: writer.queue_depth == 0, what="the queue drained")
    await writer.close(task, 5.0)
    client = redis.Redis.from_url(REDIS_URL)
    stored = client.xrange(key)
    client.close()
    if valid:
        assert [(i, f[b"o"]) for i, f in stored] == [(f"{n}-0".encode(), b"h9:7") for n in (1, 2, 3)]
        # Each stream's newest entry, under its own head: what a Redis restart is checked against.
        assert writer.tops == {head: "3-0"}
    else:
        assert stored == [] and writer.fenced


async def test_a_gap_marker_below_another_writers_newer_one_still_lands(redis_prefix: str) -> None:
    """The hosts of a shard group share one gaps stream: a marker whose end is older than the
    marker another writer just wrote is sent again above it, not refused and lost."""
    gaps = f"{redis_prefix}:gaps:sim-binance"

    def writer() -> RedisWriter:
        return quick_writer(REDIS_URL, gaps)

    client = redis.Redis.from_url(REDIS_URL)
    for to_ms, name in ((2000, "A"), (1000, "B")):
        w = writer()
        task = asyncio.create_task(w.run())
        w.submit_gap(
            GapMarker(f"s{name}", "trade", name, 500, to_ms, "restart", first_seq=1, last_seq=2, count=2)
        )
        await wait_for(
            lambda w=w, n=name: any(f[b"symbol"] == n.encode() for _, f in client.xrange(gaps)),
            what=f"marker {name}",
        )
        await w.close(task, 5.0)
    ids = [i.decode() for i, _ in client.xrange(gaps)]
    client.close()
    assert ids == ["2000-0", "2000-1"], ids


async def _write_one(url: str, key: str, lease: Lease, entry_id: str) -> None:
    """One entry on ``key`` through a shard's Redis writer under ``lease`` (stamped with it)."""
    writer = quick_writer(url, key.replace(":stream:", ":gaps:"), lease)
    head = xadd_prefix(key, 1000)
    writer.register_stream(head, StreamName(key, "trade", "S/USDT"))
    task = asyncio.create_task(writer.run())
    writer.submit((head, set_prefix(key + ":latest"), entry_id, b"\x80", 1, time.time()))
    await wait_for(lambda: writer.queue_depth == 0 and head in writer.tops, what=f"{entry_id} written")
    await writer.close(task, 5.0)
    assert not writer.fenced


@pytest.mark.parametrize("persistence", ["none", "snapshot"])
async def test_fences_keep_rising_across_a_redis_restart(
    private_redis: PrivateRedis, persistence: str
) -> None:
    """A Redis restart loses the fencing counter (no persistence), or rolls it back to the last
    snapshot, together with the lease keys; the hosts' leases live on by their own clocks. Host a
    holds a shard under the group's highest fence; Redis crashes and restarts; a still writes it
    (its lease valid by its clock), then b takes it (its key is gone) and writes. The handover is
    sequential, so the stream must read as one writer after another: b's fence above a's."""
    client = redis.asyncio.Redis.from_url(private_redis.url)
    keys = ShardKeys("p", "g")
    started: list[FakeStream] = []
    a = shard_host(client, "p", "a", started)
    a.lease_s = 30.0  # a's lease outlives the restart by its clock
    await a.check_plan()
    for shard in range(3):
        await a._take(shard)  # noqa: SLF001
    if persistence == "snapshot":
        await client.save()  # what a restart will load: the counter at 3, three leases
    for shard in range(3, 6):
        await a._take(shard)  # noqa: SLF001
    shard = max(a.held, key=lambda s: a.held[s].lease.fence)
    lease_a = a.held[shard].lease
    await client.aclose()
    private_redis.stop()  # SIGKILL: a crash, nothing saved on the way down
    private_redis.start()
    client = redis.asyncio.Redis.from_url(private_redis.url)
    key = f"p:stream:sim-binance:trade:S{shard}/USDT"
    await _write_one(private_redis.url, key, lease_a, "1-0")
    b = shard_host(client, "p", "b", started)
    await b._take(shard)  # noqa: SLF001
    lease_b = b.held[shard].lease
    await _write_one(private_redis.url, key, lease_b, "2-0")
    sync = redis.Redis.from_url(private_redis.url)
    try:
        acquisitions = {
            int(row["fence"]): row["host"]
            for row in ownership_log(sync, keys)
            if row["event"] == "acquired" and int(row["shard"]) == shard
        }
        check = check_single_writer(sync, key, acquisitions)
    finally:
        sync.close()
        await client.aclose()
    assert check.entries == 2 and check.interleaved == 0, (lease_a.fence, lease_b.fence, check)
    assert check.writers == [lease_a.stamp.decode(), lease_b.stamp.decode()], check
    # a's acquisition is not in the log: it was written after the last save, or never saved.
    assert check.foreign == 1, check
