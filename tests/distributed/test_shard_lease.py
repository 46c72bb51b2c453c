"""The shard leases (:mod:`data_collector.distributed.shards`) on a real Redis: the share, the
loss of a lease, the group's plan, and the writer that stops at the lease's end.

The streams themselves (real streamer processes on the simulator) are in ``test_shard_streams``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis
import redis.asyncio

from data_collector.distributed.shards import Lease, ShardHost, ShardKeys, plan_shards
from data_collector.errors import UsageError
from data_collector.redis.client import RedisEndpoint
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.writer import GapMarker, RedisWriter, StreamName, set_prefix, xadd_prefix
from tests.support.services import REDIS_URL
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
    writer = RedisWriter(
        RedisEndpoint.from_any(REDIS_URL, socket_timeout_s=1.0, connect_timeout_s=1.0),
        StreamMetrics(),
        batch_size=1,
        batch_interval_s=0.01,
        buffer_max=100,
        gaps_key=f"{redis_prefix}:gaps:sim-binance",
        stream_maxlen=1000,
        lease=lease,
    )
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
        return RedisWriter(
            RedisEndpoint.from_any(REDIS_URL, socket_timeout_s=1.0, connect_timeout_s=1.0),
            StreamMetrics(),
            batch_size=1,
            batch_interval_s=0.01,
            buffer_max=100,
            gaps_key=gaps,
            stream_maxlen=1000,
        )

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
