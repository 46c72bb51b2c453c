"""The Redis writer: a bounded buffer drained in pipelined batches, without duplicates.

Producers call :meth:`RedisWriter.submit` (synchronous, never blocks). One task drains the
buffer: a batch is flushed when it holds ``batch_size`` entries or when ``batch_interval_s`` has
passed since its oldest entry; whatever queued during a round trip goes into the next one (up to
``max_batch``), so throughput is not bound by round trips. Each batch is one write of pre-packed
commands on one connection and one read of the replies.

Redis down: the batch goes back to the front of the buffer and is resent after a reconnect
(capped backoff). Every entry carries an explicit, strictly increasing stream id, so a resend of
entries that did land is rejected by Redis ("equal or smaller than the target stream top item")
and counted as ``deduplicated``.

The buffer holds at most ``buffer_max`` entries; past that the oldest are dropped and counted: as
``dropped`` when they were never sent, as ``unconfirmed`` when they had been sent in a write whose
reply never came (they may be in Redis). Nothing is dropped silently: once Redis answers again,
each stream's run of dropped entries gets one ``overflow`` gap marker with its exact bounds. For
the ``unconfirmed`` ones the writer first makes sure the unanswered write can no longer land (it
kills that connection's server-side client), then asks Redis which of them are there, and marks
only the missing ones.

Gap markers are few and never dropped: when more than ``buffer_max`` wait, a new one merges into
the newest waiting marker of its stream (one wider marker instead of a lost one).

Long because the buffer, the resend and the overflow accounting share one state: the exact gap
bounds depend on all three, so they stay in one class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import hiredis
import redis

from data_collector.backoff import backoff_delay
from data_collector.errors import ServerUnavailableError
from data_collector.redis.client import FastConnection, RedisEndpoint, pack
from data_collector.streaming.metrics import StreamMetrics

log = logging.getLogger(__name__)

#: ``(XADD prefix, SET-latest prefix, entry id, packed event, event_ms, receive time.time())``
Entry = tuple[bytes, bytes, str, bytes, int, float]

_DUPLICATE_ID = "equal or smaller"
_RECONNECT_MIN_S = 0.05
_RECONNECT_MAX_S = 2.0


class WriteLease(Protocol):
    """What a sharded streamer writes under (:mod:`data_collector.distributed.shards`): the
    writer sends nothing once :meth:`valid` is false, and stamps each entry it writes with
    :attr:`stamp` (field ``o``), which proves afterwards who wrote it."""

    #: ``<host>:<fencing token>``, written as field ``o`` of every stream entry.
    stamp: bytes

    def valid(self) -> bool: ...


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _run_id(info: object) -> bytes | None:
    """The ``run_id`` of an ``INFO server`` reply (``None`` if INFO is refused)."""
    if type(info) is not bytes:
        return None
    _, found, rest = info.partition(b"run_id:")
    return rest.split(b"\r\n", 1)[0] if found else None


@dataclass(frozen=True, slots=True)
class GapMarker:
    """One entry of the gaps stream: ``stream`` may lack data in ``[from_ms, to_ms]``.

    ``reconnect``/``restart`` markers span from the last stored event time to the first new one.
    ``overflow`` markers name exactly what the buffer dropped: the event times and the entry ids
    (``first_id``..``last_id``, inclusive) of the first and last dropped entry, and ``count``.
    On channels whose ids are contiguous (trades), a reconnect, restart or ``sequence`` (an id
    skipped within a connection) marker names the missing trade ids exactly:
    ``first_seq``..``last_seq``, inclusive, and their ``count``.
    """

    stream: str
    channel: str
    symbol: str
    from_ms: int
    to_ms: int
    reason: str
    first_id: str | None = None
    last_id: str | None = None
    count: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    #: On a ``repaired`` marker: how many of the ids ``first_seq``..``last_seq`` were written back.
    repaired: int | None = None

    def merged(self, later: GapMarker) -> GapMarker:
        """One marker spanning both (same stream); exact id bounds only if both have them."""
        ids = self.first_id, self.last_id, later.first_id, later.last_id
        first = last = None
        if all(i is not None for i in ids):
            keyed = sorted((i for i in ids if i is not None), key=_id_key)
            first, last = keyed[0], keyed[-1]
        seqs = self.first_seq, self.last_seq, later.first_seq, later.last_seq
        first_seq = last_seq = None
        if all(s is not None for s in seqs):
            known = [s for s in seqs if s is not None]
            first_seq, last_seq = min(known), max(known)
        reasons = dict.fromkeys(self.reason.split(",") + later.reason.split(","))
        return replace(
            self,
            from_ms=min(self.from_ms, later.from_ms),
            to_ms=max(self.to_ms, later.to_ms),
            reason=",".join(reasons),
            first_id=first,
            last_id=last,
            count=self.count + later.count if self.count is not None and later.count is not None else None,
            first_seq=first_seq,
            last_seq=last_seq,
        )

    def fields(self) -> list[str | int]:
        out: list[str | int] = [
            "stream",
            self.stream,
            "channel",
            self.channel,
            "symbol",
            self.symbol,
            "from_ms",
            self.from_ms,
            "to_ms",
            self.to_ms,
            "reason",
            self.reason,
        ]
        if self.first_id is not None and self.last_id is not None:
            out += ["first_id", self.first_id, "last_id", self.last_id]
        if self.count is not None:
            out += ["count", self.count]
        if self.first_seq is not None and self.last_seq is not None:
            out += ["first_seq", self.first_seq, "last_seq", self.last_seq]
        if self.repaired is not None:
            out += ["repaired", self.repaired]
        return out


@dataclass(frozen=True, slots=True)
class StreamName:
    """What a gap marker says about the stream an entry's XADD head writes to."""

    stream: str
    channel: str
    symbol: str


class _DroppedRun:
    """Consecutive entries of one stream dropped from the buffer (never sent)."""

    __slots__ = ("count", "first_id", "from_ms", "last_id", "to_ms")

    def __init__(self, entry_id: str, event_ms: int) -> None:
        self.first_id = self.last_id = entry_id
        self.from_ms = self.to_ms = event_ms
        self.count = 1

    def add(self, entry_id: str, event_ms: int) -> None:
        self.last_id = entry_id
        self.from_ms = min(self.from_ms, event_ms)
        self.to_ms = max(self.to_ms, event_ms)
        self.count += 1


def xadd_prefix(stream_key: str, maxlen: int) -> bytes:
    """RESP head of ``XADD <key> MAXLEN ~ <maxlen>``: the id and field follow per entry."""
    key = stream_key.encode()
    ml = str(maxlen).encode()
    return b"*8\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%s\r\n" % (
        len(key),
        key,
        len(ml),
        ml,
    )


def set_prefix(key: str) -> bytes:
    """RESP head of ``SET <key>``: the value follows."""
    raw = key.encode()
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n" % (len(raw), raw)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class RedisWriter:
    """Owns the Redis write connection and the bounded buffer in front of it."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        metrics: StreamMetrics,
        *,
        batch_size: int,
        batch_interval_s: float,
        buffer_max: int,
        gaps_key: str,
        stream_maxlen: int,
        max_batch: int = 10_000,
        lease: WriteLease | None = None,
    ) -> None:
        self._endpoint = endpoint
        #: Held while writing a shard of a sharded run; None: the writer owns its streams alone.
        self._lease = lease
        self._stamp = b"$1\r\no\r\n" + _bulk(lease.stamp) if lease is not None else b""
        #: A stream's XADD head -> the same head with two more arguments (the stamp), built once.
        self._stamped_heads: dict[bytes, bytes] = {}
        #: The lease ran out: everything was discarded and nothing is written any more.
        self.fenced = False
        #: A new gap marker was refused (another writer's is newer): read the top before the next.
        self._gaps_behind = False
        self._metrics = metrics
        self._batch_size = max(1, batch_size)
        self._interval_s = batch_interval_s
        self._buffer_max = buffer_max
        self._max_batch = max(max_batch, self._batch_size)
        self._gaps_key = gaps_key
        self._stream_maxlen = stream_maxlen
        self._queue: deque[Entry] = deque()
        #: Gap markers already sent in a write whose reply never came, packed with their ids (a
        #: resend that had landed is then refused as a duplicate). At most ``buffer_max``.
        self._control: deque[bytes] = deque()
        #: Gap markers not sent yet, per stream, oldest first (merged past ``buffer_max``).
        self._markers: dict[str, list[GapMarker]] = {}
        self._n_markers = 0
        #: Newest gap marker id handed out (or seen in Redis): ids must increase.
        self._gap_id = (0, 0)
        #: XADD head -> the stream it writes to, for the markers of what is dropped.
        self._streams: dict[bytes, StreamName] = {}
        #: XADD heads of the repair companion streams (their event times are old: no latency sample).
        self._backfilled_heads: set[bytes] = set()
        #: XADD head -> the run of never-sent entries dropped since the last round trip.
        self._runs: dict[bytes, _DroppedRun] = {}
        #: XADD head -> ``(entry id, event ms)`` of dropped entries whose write went unanswered.
        self._unsure: dict[bytes, list[tuple[str, int]]] = {}
        #: ``(server run id, client id)`` of connections whose write went unanswered: killed
        #: before their entries are checked (unless the server restarted since).
        self._to_fence: list[tuple[bytes | None, int]] = []
        #: A write went unanswered on a connection that cannot be killed: mark its entries blind.
        self._unfenced = False
        #: Books key -> packed SET command, or a DEL; only the newest per key is kept.
        self._books: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._conn: FastConnection | None = None
        self._client_id: int | None = None
        self._run_id: bytes | None = None
        #: Called with :attr:`tops` when the server answers with a new run id (Redis restarted):
        #: what it held may be gone (no persistence), which the streamer checks and marks.
        self.on_server_restart: Callable[[dict[bytes, str]], None] | None = None
        #: XADD head -> the newest entry id Redis confirmed for that stream (what a restarted
        #: server must still hold, unless it lost data).
        self.tops: dict[bytes, str] = {}
        #: Entries at the front of the queue already sent once in a write whose reply never came.
        self._unconfirmed = 0
        self.connected = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def register_stream(self, xadd_head: bytes, name: StreamName, *, repaired: bool = False) -> None:
        """Name the stream that entries with ``xadd_head`` go to (for gap markers); ``repaired``:
        its entries are old events fetched back (no latency samples), as on a companion stream."""
        self._streams[xadd_head] = name
        if repaired or name.channel.endswith("@repair"):  # old events fetched back: not live latency samples
            self._backfilled_heads.add(xadd_head)

    def take_newest(self, xadd_head: bytes, seq: int) -> Entry | None:
        """Take back the newest queued entry if it is ``xadd_head``'s with entry id ``<ms>-<seq>``
        and was never sent (repair mode ``hold``: the entry after a gap waits for the repair)."""
        queue = self._queue
        if len(queue) <= self._unconfirmed:
            return None
        newest = queue[-1]
        if newest[0] != xadd_head or newest[2].rpartition("-")[2] != str(seq):
            return None
        return queue.pop()

    def note_gap_id(self, entry_id: str) -> None:
        """An id the gaps stream already holds: new markers get larger ones."""
        self._gap_id = max(self._gap_id, _id_key(entry_id))

    def submit(self, entry: Entry) -> None:
        """Queue one stream entry; drops (and counts) the oldest when the buffer is full."""
        queue = self._queue
        if len(queue) >= self._buffer_max:
            self._drop_oldest()
        queue.append(entry)
        n = len(queue)
        if n == 1 or n >= self._batch_size:
            self._wake.set()

    def _drop_oldest(self) -> None:
        head, _, entry_id, _, event_ms, _ = self._queue.popleft()
        if self._unconfirmed:
            # It may already be in Redis (its first write's reply was lost): checked later.
            self._unconfirmed -= 1
            self._metrics.unconfirmed += 1
            self._unsure.setdefault(head, []).append((entry_id, event_ms))
            return
        self._metrics.add_dropped()
        run = self._runs.get(head)
        if run is None:
            self._runs[head] = _DroppedRun(entry_id, event_ms)
        else:
            run.add(entry_id, event_ms)

    def submit_gap(self, marker: GapMarker) -> None:
        """Queue a gap marker; past ``buffer_max`` waiting, merge it into its stream's newest."""
        waiting = self._markers.setdefault(marker.stream, [])
        if waiting and self._n_markers >= self._buffer_max:
            waiting[-1] = waiting[-1].merged(marker)
        else:
            waiting.append(marker)
            self._n_markers += 1
        self._metrics.add_gap()
        self._wake.set()

    def publish_book(self, key: str, payload: bytes | None) -> None:
        """Set (or, with ``None``, delete) a book key in the next round trip."""
        raw = key.encode()
        if payload is None:
            self._books[key] = b"*2\r\n$3\r\nDEL\r\n" + _bulk(raw)
        else:
            self._books[key] = set_prefix(key) + _bulk(payload)
        self._wake.set()

    def _idle(self) -> bool:
        return not (
            self._queue or self._control or self._markers or self._runs or self._unsure or self._books
        )

    async def run(self) -> None:
        """Drain the buffer until :meth:`close` is called and everything left is written."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        try:
            while True:
                if self._idle():
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if queue and len(queue) < self._batch_size and not self._closing:
                    delay = queue[0][5] + self._interval_s - time.time()
                    if delay > 0:
                        self._wake.clear()
                        timer = loop.call_later(delay, self._wake.set)
                        await self._wake.wait()
                        timer.cancel()
                        continue
                try:
                    await self._flush_once()
                except Exception:  # a bug must not stop the writer: log it, count it, go on
                    log.exception("Redis writer: unexpected error")
                    self._metrics.redis_errors += 1
                    await self._drop_connection()
                    await asyncio.sleep(0.1)
        finally:
            await self._drop_connection()

    async def close(self, task: asyncio.Task[None] | None, timeout_s: float) -> None:
        """Flush what is queued (bounded by ``timeout_s``), then stop; idempotent."""
        self._closing = True
        self._wake.set()
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left = len(self._queue)
        markers = len(self._control) + self._n_markers + len(self._runs) + len(self._unsure)
        if left or markers:
            # The next start marks them: its restart gap runs from the newest entry Redis holds.
            log.warning(
                "streamer stopped with %d entries and %d gap markers not written (Redis unreachable)",
                left,
                markers,
            )
            while self._queue:
                self._drop_oldest()
            self._clear_markers()
        self._books.clear()
        await self._drop_connection()

    async def _connection(self) -> FastConnection:
        attempt = 0
        while self._conn is None:
            try:
                conn = await self._endpoint.connect()
                try:
                    # Its server-side id, to kill it should a write on it go unanswered, and the
                    # server's run id: client ids start again from 1 when Redis restarts.
                    client_id, info = await conn.execute(pack("CLIENT", "ID") + pack("INFO", "server"), 2)
                except (TimeoutError, ConnectionError, OSError, redis.RedisError) as exc:
                    await conn.close()
                    raise ServerUnavailableError(
                        f"Redis at {self._endpoint.describe()}", str(exc) or type(exc).__name__
                    ) from None
                self._client_id = client_id if type(client_id) is int else None
                previous, self._run_id = self._run_id, _run_id(info)
                if previous is not None and self._run_id != previous and self.on_server_restart:
                    log.warning("Redis at %s restarted (new run id)", self._endpoint.describe())
                    self.on_server_restart(dict(self.tops))
                self._conn = conn
                self.connected = True
                if attempt:
                    log.info("Redis at %s is back", self._endpoint.describe())
            except ServerUnavailableError as exc:
                self.connected = False
                self._metrics.redis_errors += 1
                if attempt == 0:
                    log.warning("%s; buffering up to %d messages meanwhile", exc, self._buffer_max)
                delay = backoff_delay(attempt, _RECONNECT_MIN_S, _RECONNECT_MAX_S)
                attempt += 1
                await asyncio.sleep(delay)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None:
            await conn.close()

    async def _check_unsure(self, conn: FastConnection) -> bool:
        """Mark the dropped entries whose write went unanswered and that Redis does not hold.

        The connections those writes went out on are killed first, in the same round trip: a
        write still waiting in a socket buffer can then no longer land after the check.
        """
        unsure, self._unsure = self._unsure, {}
        n_fenced = len(self._to_fence)
        # On a restarted server the old connection is gone, and whatever it wrote with it.
        fence = [cid for run_id, cid in self._to_fence if run_id is None or run_id == self._run_id]
        commands = [pack("CLIENT", "KILL", "ID", client_id) for client_id in fence]
        heads = list(unsure)
        for head in heads:
            keys = [_id_key(entry_id) for entry_id, _ in unsure[head]]
            lo, hi = min(keys), max(keys)
            commands.append(
                pack("XRANGE", self._streams[head].stream, f"{lo[0]}-{lo[1]}", f"{hi[0]}-{hi[1]}")
            )
        try:
            replies = await conn.execute(b"".join(commands), len(commands))
        except (TimeoutError, ConnectionError, OSError, redis.RedisError) as exc:
            self._metrics.redis_errors += 1
            log.warning("Redis check of unanswered writes failed (%s); retrying", type(exc).__name__)
            for head, entries in unsure.items():
                self._unsure[head] = entries + self._unsure.get(head, [])
            await self._drop_connection()
            return False
        for reply in replies[: len(fence)]:
            if isinstance(reply, hiredis.ReplyError):
                self._unfenced = True
                log.warning(
                    "cannot kill a connection whose write went unanswered (%s); marking all it held", reply
                )
        del self._to_fence[:n_fenced]
        blind = self._unfenced
        if self._unconfirmed == 0:
            self._unfenced = False
        for head, reply in zip(heads, replies[len(fence) :], strict=True):
            present: set[str] = set()
            if not blind and isinstance(reply, list):
                present = {row[0].decode() for row in reply}
            run: _DroppedRun | None = None
            for entry_id, event_ms in unsure[head]:
                if entry_id in present:
                    if run is not None:
                        self._mark_dropped(head, run)
                        run = None
                elif run is None:
                    run = _DroppedRun(entry_id, event_ms)
                else:
                    run.add(entry_id, event_ms)
            if run is not None:
                self._mark_dropped(head, run)
        return True

    def _mark_dropped(self, head: bytes, run: _DroppedRun) -> None:
        name = self._streams[head]
        self.submit_gap(
            GapMarker(
                name.stream,
                name.channel,
                name.symbol,
                run.from_ms,
                run.to_ms,
                "overflow",
                run.first_id,
                run.last_id,
                run.count,
            )
        )

    def _pack_gap(self, marker: GapMarker) -> bytes:
        last_ms, last_seq = self._gap_id
        to_ms = marker.to_ms
        self._gap_id = (to_ms, 0) if to_ms > last_ms else (last_ms, last_seq + 1)
        gap_id = f"{self._gap_id[0]}-{self._gap_id[1]}"
        return pack("XADD", self._gaps_key, "MAXLEN", "~", self._stream_maxlen, gap_id, *marker.fields())

    def _remark(self, marker: GapMarker) -> None:
        """Queue a refused new marker again, to go out above the gaps stream's top."""
        self._markers.setdefault(marker.stream, []).append(marker)
        self._n_markers += 1
        self._gaps_behind = True
        self._wake.set()

    async def _catch_up_gap_ids(self, conn: FastConnection) -> bool:
        """Read the gaps stream's newest id, so new marker ids go above it; False: Redis failed."""
        try:
            (top,) = await conn.execute(pack("XREVRANGE", self._gaps_key, "+", "-", "COUNT", 1), 1)
        except (TimeoutError, ConnectionError, OSError, redis.RedisError) as exc:
            self._metrics.redis_errors += 1
            log.warning("Redis read of the gaps stream failed (%s); retrying", type(exc).__name__)
            await self._drop_connection()
            return False
        if isinstance(top, list) and top:
            self.note_gap_id(top[0][0].decode())
        self._gaps_behind = False
        return True

    def _lease_lost(self) -> bool:
        """Whether the shard's lease ran out: then drop everything, unwritten and unmarked (the
        shard's next owner repairs from what Redis holds), and write nothing from now on."""
        if self._lease is None or self._lease.valid():
            return False
        if not self.fenced:
            log.warning(
                "shard lease lost: %d queued entries not written (the next owner repairs)", len(self._queue)
            )
            self.fenced = True
        self._queue.clear()
        self._clear_markers()
        self._books.clear()
        self._unconfirmed = 0
        return True

    def _clear_markers(self) -> None:
        """Forget every gap marker waiting (and every dropped run still to be marked)."""
        self._control.clear()
        self._markers.clear()
        self._n_markers = 0
        self._runs.clear()
        self._unsure.clear()

    async def _flush_once(self) -> None:
        if self._lease_lost():
            return
        conn = await self._connection()
        if self._lease_lost():
            return
        if (self._to_fence or self._unsure) and not await self._check_unsure(conn):
            return
        # Each stream's dropped run ends here: the entries after it may be written from now on.
        runs, self._runs = self._runs, {}
        for head, run in runs.items():
            self._mark_dropped(head, run)
        if self._gaps_behind and not await self._catch_up_gap_ids(conn):
            return
        # Markers sent before (their write went unanswered) come first, then the new ones.
        resent = len(self._control)
        fresh: list[GapMarker] = []
        if resent < self._buffer_max:
            for waiting in self._markers.values():
                fresh.extend(waiting)
            self._control.extend(self._pack_gap(m) for m in fresh)
            self._markers.clear()
            self._n_markers = 0
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
        books, self._books = self._books, {}
        control = list(self._control)
        self._control.clear()

        # Markers go first: if only a prefix of the write lands, no entry after a hole is
        # stored while the hole's marker is not.
        parts = control[:]
        latest: dict[bytes, bytes] = {}
        tops: dict[bytes, str] = {}
        stamp = self._stamp
        if not stamp:
            for head, set_head, entry_id, payload, _, _ in batch:
                raw_id = entry_id.encode()
                parts.append(
                    b"%s$%d\r\n%s\r\n$1\r\nd\r\n$%d\r\n%s\r\n"
                    % (head, len(raw_id), raw_id, len(payload), payload)
                )
                latest[set_head] = payload
                tops[head] = entry_id
        else:  # a shard's writer: two more arguments, field ``o`` with the lease's stamp
            stamped = self._stamped_heads
            for head, set_head, entry_id, payload, _, _ in batch:
                raw_id = entry_id.encode()
                wire = stamped.get(head)
                if wire is None:
                    wire = stamped[head] = b"*10" + head[2:]
                parts.append(
                    b"%s$%d\r\n%s\r\n$1\r\nd\r\n$%d\r\n%s\r\n%s"
                    % (wire, len(raw_id), raw_id, len(payload), payload, stamp)
                )
                latest[set_head] = payload
                tops[head] = entry_id  # keyed by the stream's own head, as the restart check looks
        for set_head, payload in latest.items():
            parts.append(set_head + _bulk(payload))
        parts.extend(books.values())
        if self._lease_lost():  # checked last before the write goes out
            return
        try:
            replies = await conn.execute(b"".join(parts), len(parts))
        except (TimeoutError, ConnectionError, OSError, redis.RedisError) as exc:
            self._metrics.redis_errors += 1
            log.warning("Redis write failed (%s); %d entries will be resent", type(exc).__name__, len(batch))
            if self._client_id is None:
                self._unfenced = True
            else:
                self._to_fence.append((self._run_id, self._client_id))
            await self._drop_connection()
            self._requeue(batch, control, books)
            return

        self._unconfirmed = max(0, self._unconfirmed - len(batch))
        self.tops.update(tops)
        now = time.time()
        now_ms = now * 1000.0
        written = 0
        metrics = self._metrics
        n_control = len(control)
        for reply in replies[n_control : n_control + len(batch)]:
            if type(reply) is bytes:
                written += 1
            elif _DUPLICATE_ID in str(reply):
                metrics.deduplicated += 1
            else:
                metrics.rejected += 1
                log.warning("Redis refused a stream entry: %s", reply)
        for k, reply in enumerate(replies[:n_control]):
            if k >= resent and isinstance(reply, hiredis.ReplyError) and _DUPLICATE_ID in str(reply):
                # A new marker below another writer's newer one (streamers sharing the gaps
                # stream: a shard group's hosts): sent again above the stream's top.
                self._remark(fresh[k - resent])
            else:
                self._count_refused(reply)
        for reply in replies[n_control + len(batch) :]:
            self._count_refused(reply)
        metrics.record_batch(
            len(batch),
            written,
            [now_ms - e[4] for e in batch if e[0] not in backfilled]
            if (backfilled := self._backfilled_heads)
            else [now_ms - e[4] for e in batch],
            [(now - e[5]) * 1000.0 for e in batch],
        )

    def _count_refused(self, reply: object) -> None:
        """Count a command Redis refused: a resend that had landed, or a real refusal (logged)."""
        if isinstance(reply, hiredis.ReplyError):
            if _DUPLICATE_ID in str(reply):
                self._metrics.deduplicated += 1
            else:
                self._metrics.rejected += 1
                log.warning("Redis refused a command: %s", reply)

    def _requeue(self, batch: list[Entry], control: list[bytes], books: dict[str, bytes]) -> None:
        queue = self._queue
        queue.extendleft(reversed(batch))
        self._unconfirmed = max(self._unconfirmed, len(batch))
        while len(queue) > self._buffer_max:
            self._drop_oldest()
        self._control.extendleft(reversed(control))
        for key, command in books.items():
            self._books.setdefault(key, command)
