"""Streams sharded across hosts: ``data-collector stream --shard-group NAME`` on each host.

The symbols are cut into shards (``streaming.shard_symbols`` each, in the configured order).
Every host of a group runs :class:`ShardHost`: it keeps itself in the group's member set, takes
shards until it holds its share (``ceil(shards / live hosts)``), renews their leases, gives one
back per round while it holds more than its share, and streams exactly the shards it holds, each
with its own streamer. A dead host stops renewing: its leases and its membership run out after
``streaming.shard_lease_s`` and the others take its shards within one more round (a third of the
lease); each new owner's streamer starts from what Redis holds and repairs the trade gap over
REST (the gap-free restart path).

Redis keys, under ``<prefix>:shards:<group>:``

* ``lease:<n>``: shard ``n``'s lease, ``<host>:<random>``, with a TTL (SET NX PX);
* ``fence``: the fencing counter; each acquisition takes the next value after its SET NX won,
  never below Redis's clock in microseconds (:data:`NEXT_FENCE`);
* ``members``: sorted set, host -> when its membership runs out (Redis time, ms);
* ``log``: the ownership log, one entry per acquisition, release and loss
  (``shard``, ``host``, ``fence``, ``event``);
* ``plan``: the group's shards; a host started with other symbols is refused.

Each host also keeps a streamer heartbeat, ``<prefix>:heartbeat:streamer:<group>@<host>``
(:func:`heartbeat_instance`), which the health check lists like any streamer's.

One owner at a time, and the proof of it: a host writes a shard only while its lease is valid by
its own clock, counted from *before* the request that took or renewed it, less a third of the
lease (so its writes stop before Redis can let the lease go to another host), and the writer
checks that right before every round trip (:class:`~data_collector.streaming.writer.WriteLease`).
Every entry it writes carries ``o = <host>:<fence>``. Redis stores a stream's entries in strictly
increasing id order, so a stream's ids are the order in which its entries were written: if the
fences along every stream never decrease, no two owners' writes ever interleaved. A split brain
that slipped past the clocks (a host paused past its lease, then resumed mid-write) would show
there, and its duplicates are refused by the entry ids anyway. :func:`check_single_writer`
makes that check.

Why not a library: redis-py's :class:`redis.asyncio.lock.Lock` is the lease (SET NX PX with a
token, extend and release by Lua scripts that check the token), used as is. Fencing tokens, the
member set and the share are not in it, nor in procrastinate (its locks serialise jobs of one
queue; a job cannot be renewed or handed over while running), so they are the few Redis calls
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import redis
import redis.asyncio
from redis.exceptions import LockError

from data_collector.errors import UsageError
from data_collector.redis.keys import key_part

log = logging.getLogger(__name__)

#: Ownership log entries kept (``XADD MAXLEN ~``).
LOG_MAXLEN = 100_000

#: The next fencing token: one above the last, and never below Redis's clock in microseconds.
#: A restart loses the counter (no persistence) or rolls it back to the last save, together
#: with the lease keys, while hosts still hold (and write under) fences taken before it; a plain
#: INCR would then hand the next owner a lower fence than theirs and a sequential handover would
#: read as two writers interleaved. The clock carries the tokens past every one taken before the
#: restart (they were at most the clock then: two acquisitions never share a microsecond), with
#: or without persistence. Built as a string: Lua's numbers print 16 digits in exponent form.
NEXT_FENCE = """
local t = redis.call('TIME')
local floor = t[1] .. string.format('%06d', tonumber(t[2]))
local n = redis.call('INCR', KEYS[1])
if n < tonumber(floor) then
    redis.call('SET', KEYS[1], floor)
    return tonumber(floor)
end
return n
"""


def heartbeat_instance(group: str, host: str) -> str:
    """The instance a shard host's streamer heartbeat is named by, ``<group>@<host>``: the hosts
    of a group, and the groups, each keep their own. ``UsageError`` when not fit for a Redis key."""
    instance = f"{key_part('shard group', group)}@{key_part('host id', host)}"
    if len(instance) > 64:
        raise UsageError(
            f"shard group and host id name the heartbeat {instance[:80]!r}: at most 64 characters together"
        )
    return instance


def plan_shards(symbols: Sequence[str], per_shard: int) -> list[list[str]]:
    """``symbols`` in consecutive groups of ``per_shard`` (the last may be smaller)."""
    if per_shard < 1:
        raise UsageError(f"symbols per shard must be at least 1, got {per_shard}")
    return [list(symbols[i : i + per_shard]) for i in range(0, len(symbols), per_shard)]


@dataclass(frozen=True)
class ShardKeys:
    """The Redis keys of one shard group."""

    prefix: str
    group: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:shards:{self.group}"

    def lease(self, shard: int) -> str:
        return f"{self.base}:lease:{shard}"

    @property
    def fence(self) -> str:
        return f"{self.base}:fence"

    @property
    def members(self) -> str:
        return f"{self.base}:members"

    @property
    def log(self) -> str:
        return f"{self.base}:log"

    @property
    def plan(self) -> str:
        return f"{self.base}:plan"


class Lease:
    """One held shard lease (a :class:`~data_collector.streaming.writer.WriteLease`)."""

    def __init__(self, lock: Any, host: str, fence: int, started: float, lease_s: float) -> None:
        self.lock = lock
        self.fence = fence
        self.stamp = f"{host}:{fence}".encode()
        self._lease_s = lease_s
        self._valid_until = started + lease_s * 2 / 3

    def valid(self) -> bool:
        """Whether this host may still write: its own clock, from before the last request that
        took or renewed the lease, less a third of the lease."""
        return time.monotonic() < self._valid_until

    async def renew(self) -> bool | None:
        """Extend the lease: True done, False lost (another token holds it, or none), None
        unknown (Redis did not answer: the lease runs out by the clock unless a renewal lands)."""
        started = time.monotonic()
        try:
            await self.lock.extend(self._lease_s, replace_ttl=True)
        except LockError:
            return False
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("could not renew a shard lease (%s)", type(exc).__name__)
            return None
        self._valid_until = started + self._lease_s * 2 / 3
        return True


class ShardStream(Protocol):
    """A running shard streamer: what :class:`ShardHost` stops."""

    async def astop(self) -> None: ...


#: Starts the streamer of a shard's symbols under a lease (returns once it runs).
StartShard = Callable[[list[str], Lease], Awaitable[ShardStream]]


@dataclass
class _Held:
    lease: Lease
    stream: ShardStream


@dataclass
class ShardHost:
    """One host of a shard group; :meth:`run` until ``stop`` is set."""

    client: redis.asyncio.Redis
    keys: ShardKeys
    shards: list[list[str]]
    host: str
    lease_s: float
    start_shard: StartShard
    held: dict[int, _Held] = field(default_factory=dict)
    _stopping: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        # redis-py sends it by EVALSHA, and loads it again into a restarted server's empty cache.
        self._next_fence = self.client.register_script(NEXT_FENCE)

    @property
    def round_s(self) -> float:
        """Seconds between rounds (renewals, membership, taking and giving shards)."""
        return self.lease_s / 3

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    def owned(self) -> list[int]:
        return sorted(self.held)

    async def check_plan(self) -> None:
        """Record the group's shards, or refuse to join a group that has other ones."""
        plan = json.dumps(self.shards, separators=(",", ":"))
        await self.client.set(self.keys.plan, plan, nx=True)
        stored = await self.client.get(self.keys.plan)
        if stored is not None and stored.decode() != plan:
            raise UsageError(
                f"shard group {self.keys.group!r} streams other symbols or shards "
                f"({stored.decode()[:200]}); use the same symbols and streaming.shard_symbols "
                "on every host, or another --shard-group"
            )

    async def run(self, stop: asyncio.Event) -> None:
        await self.check_plan()
        try:
            await self._join()
            # One round before taking anything: hosts started together see each other first.
            await _wait(stop, self.round_s)
            while not stop.is_set():
                started = time.monotonic()
                await self.round()
                await _wait(stop, max(0.0, self.round_s - (time.monotonic() - started)))
        finally:
            await self.close()

    async def _join(self) -> int:
        """Refresh this host's membership; the number of live hosts."""
        now_s, now_us = await self.client.time()
        now_ms = now_s * 1000 + now_us // 1000
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.keys.members, {self.host: now_ms + self.lease_ms})
        pipe.zremrangebyscore(self.keys.members, "-inf", now_ms)
        pipe.zcard(self.keys.members)
        replies = await pipe.execute()
        return max(1, int(replies[-1]))

    async def round(self) -> None:
        """Renew what is held (stop what is lost), then take or give shards toward the share."""
        for shard in list(self.held):
            held = self.held[shard]
            renewed = await held.lease.renew()
            if renewed is False or not held.lease.valid():
                self._lost(shard)
        try:
            live = await self._join()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("shard group %s: Redis did not answer (%s)", self.keys.group, type(exc).__name__)
            return
        share = math.ceil(len(self.shards) / live)
        if len(self.held) > share:
            await self._give(max(self.held, key=lambda s: self.held[s].lease.fence))
            return
        for shard in self._preference():
            if len(self.held) >= share:
                break
            if shard not in self.held:
                await self._take(shard)

    def _preference(self) -> list[int]:
        """Every shard, in an order of this host's own (rendezvous hashing): hosts try
        different shards first, so they rarely race for one."""

        def rank(shard: int) -> bytes:
            return hashlib.sha1(f"{self.host}/{shard}".encode(), usedforsecurity=False).digest()

        return sorted(range(len(self.shards)), key=rank)

    async def _take(self, shard: int) -> None:
        lock = self.client.lock(self.keys.lease(shard), timeout=self.lease_s, thread_local=False)
        started = time.monotonic()
        token = f"{self.host}:{uuid.uuid4().hex[:12]}"
        try:
            if not await lock.acquire(blocking=False, token=token):
                return
            # The fence comes after the SET NX won, so fences follow the order of acquisitions.
            fence = int(await self._next_fence(keys=[self.keys.fence]))
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("could not take shard %d (%s)", shard, type(exc).__name__)
            return
        lease = Lease(lock, self.host, fence, started, self.lease_s)
        if not lease.valid():  # Redis took longer than the lease's margin
            with contextlib.suppress(redis.RedisError, OSError, TimeoutError, LockError):
                await lock.release()
            return
        await self._log(shard, fence, "acquired")
        symbols = self.shards[shard]
        stream = await self.start_shard(symbols, lease)
        self.held[shard] = _Held(lease, stream)
        log.info("%s took shard %d (%s), fence %d", self.host, shard, ",".join(symbols), fence)

    async def _give(self, shard: int) -> None:
        """Stop the shard's streamer (it flushes while the lease is still valid), then release."""
        held = self.held.pop(shard)
        await held.stream.astop()
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError, LockError):
            await held.lease.lock.release()
        await self._log(shard, held.lease.fence, "released")
        log.info("%s gave shard %d back", self.host, shard)

    def _lost(self, shard: int) -> None:
        """The lease is gone: its writer already refuses to write; stop the streamer in the
        background (closing must not hold back the other shards' renewals)."""
        held = self.held.pop(shard)
        log.warning("%s lost the lease of shard %d (fence %d)", self.host, shard, held.lease.fence)

        async def stop() -> None:
            await held.stream.astop()
            await self._log(shard, held.lease.fence, "lost")

        task = asyncio.get_running_loop().create_task(stop(), name=f"stop-shard-{shard}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _log(self, shard: int, fence: int, event: str) -> None:
        fields = {"shard": shard, "host": self.host, "fence": fence, "event": event}
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
            await self.client.xadd(self.keys.log, fields, maxlen=LOG_MAXLEN, approximate=True)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Give every shard back and leave the group; idempotent."""
        for shard in list(self.held):
            try:
                await self._give(shard)
            except Exception:
                log.exception("could not give shard %d back", shard)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
            await self.client.zrem(self.keys.members, self.host)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


@dataclass
class WriterCheck:
    """What :func:`check_single_writer` found in one stream."""

    entries: int = 0
    unstamped: int = 0
    #: Entries whose fence is lower than an earlier entry's: two owners' writes interleaved.
    interleaved: int = 0
    #: Entries whose fence is not an acquisition of the stream's shard in the ownership log.
    foreign: int = 0
    writers: list[str] = field(default_factory=list)


def ownership_log(client: redis.Redis, keys: ShardKeys) -> list[dict[str, str]]:
    """Every ownership log entry, oldest first, with its Redis time (``ms``)."""
    out = []
    for entry_id, fields in cast(list[Any], client.xrange(keys.log)):
        row = {k.decode(): v.decode() for k, v in fields.items()}
        row["ms"] = entry_id.decode().partition("-")[0]
        out.append(row)
    return out


def check_single_writer(client: redis.Redis, key: str, acquisitions: dict[int, str]) -> WriterCheck:
    """Read stream ``key`` and check that its entries came from one owner at a time: each carries
    ``o = <host>:<fence>``, ``fence`` is an acquisition of its shard (``acquisitions``: fence ->
    host, from the ownership log) by that host, and fences never decrease in id order (which is
    the order Redis stored them in)."""
    check = WriterCheck()
    top = -1
    for _, fields in cast(list[Any], client.xrange(key)):
        check.entries += 1
        stamp = fields.get(b"o")
        if stamp is None:
            check.unstamped += 1
            continue
        host, _, raw = stamp.decode().rpartition(":")
        fence = int(raw)
        if acquisitions.get(fence) != host:
            check.foreign += 1
        if fence < top:
            check.interleaved += 1
        elif fence > top:
            check.writers.append(stamp.decode())
            top = fence
    return check
