"""The Redis writer: a bounded buffer drained in pipelined batches, without duplicates.

Producers call :meth:`RedisWriter.submit` (synchronous, never blocks). One task drains the
buffer: a batch is flushed when it holds ``batch_size`` entries or when ``batch_interval_s`` has
passed since its oldest entry; whatever queued during a round trip goes into the next one (up to
``max_batch``), so throughput is not bound by round trips. Each batch is one write of pre-packed
commands on one connection and one read of the replies.

Redis down: the batch goes back to the front of the buffer and is resent after a reconnect
(capped backoff). Every entry carries an explicit, strictly increasing stream id, so a resend of
entries that did land is rejected by Redis ("equal or smaller than the target stream top item")
and counted as ``deduplicated``. The buffer holds at most ``buffer_max`` entries; past that the
oldest are dropped and counted: as ``dropped`` when they were never sent, as ``unconfirmed``
when they had been sent in a write whose reply never came (they may be in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque

import hiredis
import redis

from data_collector.errors import ServerUnavailableError
from data_collector.redis.client import FastConnection, RedisEndpoint
from data_collector.streaming.metrics import StreamMetrics

log = logging.getLogger(__name__)

#: ``(XADD prefix, SET-latest prefix, entry id, packed event, event_ms, receive time.time())``
Entry = tuple[bytes, bytes, str, bytes, int, float]

_DUPLICATE_ID = "equal or smaller"
_RECONNECT_MAX_S = 2.0


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
        max_batch: int = 10_000,
    ) -> None:
        self._endpoint = endpoint
        self._metrics = metrics
        self._batch_size = max(1, batch_size)
        self._interval_s = batch_interval_s
        self._buffer_max = buffer_max
        self._max_batch = max(max_batch, self._batch_size)
        self._queue: deque[Entry] = deque()
        #: Packed commands other than stream entries (gap markers): few, bounded, never dropped
        #: silently.
        self._control: deque[bytes] = deque()
        #: Book key -> packed SET command, or a DEL; only the newest per key is kept.
        self._books: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._conn: FastConnection | None = None
        #: Entries at the front of the queue already sent once in a write whose reply never came.
        self._unconfirmed = 0
        self.connected = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

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
        self._queue.popleft()
        if self._unconfirmed:
            # It may already be in Redis (its first write's reply was lost): not a sure loss.
            self._unconfirmed -= 1
            self._metrics.unconfirmed += 1
        else:
            self._metrics.dropped += 1

    def submit_command(self, packed: bytes) -> None:
        """Queue one packed command (gap markers); at most ``buffer_max`` are kept."""
        if len(self._control) >= self._buffer_max:
            self._control.popleft()
            self._metrics.dropped += 1
        self._control.append(packed)
        self._wake.set()

    def publish_book(self, key: str, payload: bytes | None) -> None:
        """Set (or, with ``None``, delete) a book key in the next round trip."""
        raw = key.encode()
        if payload is None:
            self._books[key] = b"*2\r\n$3\r\nDEL\r\n" + _bulk(raw)
        else:
            self._books[key] = set_prefix(key) + _bulk(payload)
        self._wake.set()

    async def run(self) -> None:
        """Drain the buffer until :meth:`close` is called and everything left is written."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        try:
            while True:
                if not (queue or self._control or self._books):
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
        left = len(self._queue) + len(self._control)
        if left:
            log.warning("streamer stopped with %d entries not written (Redis unreachable)", left)
            while self._queue:
                self._drop_oldest()
            self._metrics.dropped += len(self._control)
            self._control.clear()
        self._books.clear()
        await self._drop_connection()

    async def _connection(self) -> FastConnection:
        attempt = 0
        while self._conn is None:
            try:
                self._conn = await self._endpoint.connect()
                self.connected = True
                if attempt:
                    log.info("Redis at %s is back", self._endpoint.describe())
            except ServerUnavailableError as exc:
                self.connected = False
                self._metrics.redis_errors += 1
                if attempt == 0:
                    log.warning("%s; buffering up to %d messages meanwhile", exc, self._buffer_max)
                delay = min(_RECONNECT_MAX_S, 0.05 * 2**attempt)
                attempt += 1
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None:
            await conn.close()

    async def _flush_once(self) -> None:
        conn = await self._connection()
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
        books, self._books = self._books, {}
        control = list(self._control)
        self._control.clear()

        parts: list[bytes] = []
        latest: dict[bytes, bytes] = {}
        for head, set_head, entry_id, payload, _, _ in batch:
            raw_id = entry_id.encode()
            parts.append(
                b"%s$%d\r\n%s\r\n$1\r\nd\r\n$%d\r\n%s\r\n"
                % (head, len(raw_id), raw_id, len(payload), payload)
            )
            latest[set_head] = payload
        for set_head, payload in latest.items():
            parts.append(set_head + _bulk(payload))
        parts.extend(control)
        parts.extend(books.values())
        try:
            replies = await conn.execute(b"".join(parts), len(parts))
        except (TimeoutError, ConnectionError, OSError, redis.RedisError) as exc:
            self._metrics.redis_errors += 1
            log.warning("Redis write failed (%s); %d entries will be resent", type(exc).__name__, len(batch))
            await self._drop_connection()
            self._requeue(batch, control, books)
            return

        self._unconfirmed = max(0, self._unconfirmed - len(batch))
        now = time.time()
        now_ms = now * 1000.0
        written = 0
        metrics = self._metrics
        for reply in replies[: len(batch)]:
            if type(reply) is bytes:
                written += 1
            elif _DUPLICATE_ID in str(reply):
                metrics.deduplicated += 1
            else:
                metrics.rejected += 1
                log.warning("Redis refused a stream entry: %s", reply)
        for reply in replies[len(batch) :]:
            if isinstance(reply, hiredis.ReplyError):
                if _DUPLICATE_ID in str(reply):
                    metrics.deduplicated += 1
                else:
                    metrics.rejected += 1
                    log.warning("Redis refused a command: %s", reply)
        metrics.record_batch(
            len(batch),
            written,
            [now_ms - e[4] for e in batch],
            [(now - e[5]) * 1000.0 for e in batch],
        )

    def _requeue(self, batch: list[Entry], control: list[bytes], books: dict[str, bytes]) -> None:
        queue = self._queue
        queue.extendleft(reversed(batch))
        self._unconfirmed = max(self._unconfirmed, len(batch))
        while len(queue) > self._buffer_max:
            self._drop_oldest()
        self._control.extendleft(reversed(control))
        for key, command in books.items():
            self._books.setdefault(key, command)
