"""Local order books from a REST snapshot plus depth diffs, published (top N) to Redis.

Binance's rules (PROTOCOL.md): buffer the diffs; fetch ``/api/v3/depth``; drop diffs with
``u <= lastUpdateId``; the first applied diff has ``U <= lastUpdateId + 1 <= u``; every later one
has ``U == previous u + 1``, else the book is out of sync and is rebuilt. USDⓈ-M futures
(``chained_by_pu``, see :mod:`data_collector.venues.binance.venue`): drop diffs with ``u < lastUpdateId``; the first applied
has ``U <= lastUpdateId <= u``; every later one has ``pu == previous u``. A quantity of 0 removes
the level. While a book is not in sync its Redis key is deleted: no wrong book is ever published.
A diff that breaks the chain means one was lost: the depth stream in Redis lacks it, so besides
the resync a ``book`` gap marker (from the last applied diff's time to the breaking one's) is
written through ``on_break``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack

from data_collector.backoff import backoff_delay
from data_collector.errors import CollectorError
from data_collector.redis.keys import book_key
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import MalformedEvent, parse_levels
from data_collector.venues.binance.rest import BinanceRest, RateLimitedError

log = logging.getLogger(__name__)

#: Diffs buffered while a snapshot is on its way; past this the sync starts over.
MAX_PENDING_DIFFS = 10_000
#: How long to wait for the first diff after a snapshot before taking a new one.
SNAPSHOT_WAIT_S = 5.0

#: ``(symbol, from_ms, to_ms)`` of diffs lost between two that do not chain.
BreakHook = Callable[[str, int, int], None]


class OrderBook:
    """One symbol's book: price -> quantity on each side, and the last applied update id."""

    __slots__ = ("asks", "bids", "event_ms", "last_update_id", "pending", "symbol", "synced")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.last_update_id = 0
        self.event_ms = 0
        self.synced = False
        self.pending: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.last_update_id = 0
        self.synced = False
        self.pending.clear()

    def load_snapshot(self, last_update_id: int, bids: list[list[float]], asks: list[list[float]]) -> None:
        self.bids = {p: q for p, q in bids if q > 0}
        self.asks = {p: q for p, q in asks if q > 0}
        self.last_update_id = last_update_id

    def apply(self, diff: dict[str, Any]) -> None:
        for side, levels in ((self.bids, diff["bids"]), (self.asks, diff["asks"])):
            for price, qty in levels:
                if qty == 0.0:
                    side.pop(price, None)
                else:
                    side[price] = qty
        self.last_update_id = diff["update_id"]
        self.event_ms = diff["event_ms"]

    def top(self, depth: int) -> tuple[list[list[float]], list[list[float]]]:
        """The best ``depth`` bids (highest first) and asks (lowest first)."""
        bids = [[p, self.bids[p]] for p in heapq.nlargest(depth, self.bids)]
        asks = [[p, self.asks[p]] for p in heapq.nsmallest(depth, self.asks)]
        return bids, asks


class BookKeeper:
    """Keeps every symbol's book in sync and publishes its top N at most every interval."""

    def __init__(
        self,
        symbols: list[str],
        *,
        rest: BinanceRest | None,
        metrics: StreamMetrics,
        publish: Callable[[str, bytes | None], None],
        prefix: str,
        exchange: str,
        depth: int,
        publish_interval_ms: int,
        snapshot_limit: int,
        chained_by_pu: bool = False,
        on_break: BreakHook | None = None,
    ) -> None:
        self._by_pu = chained_by_pu
        self._on_break = on_break
        self._rest = rest
        self._metrics = metrics
        self._publish = publish
        self._exchange = exchange
        self._depth = depth
        self._interval_s = publish_interval_ms / 1000.0
        self._snapshot_limit = snapshot_limit
        self.books = {s: OrderBook(s) for s in symbols}
        self._keys = {s: book_key(prefix, exchange, s) for s in symbols}
        self._syncing: dict[str, asyncio.Task[None]] = {}
        self._last_publish: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._closed = False

    def on_diff(self, symbol: str, diff: dict[str, Any]) -> None:
        """Apply (or buffer) one normalised depth diff."""
        book = self.books[symbol]
        if not book.synced:
            if len(book.pending) >= MAX_PENDING_DIFFS:
                book.pending.clear()
            book.pending.append(diff)
            arrived = self._arrived.get(symbol)
            if arrived is not None:
                arrived.set()
            self._ensure_sync(symbol)
            return
        if diff["update_id"] <= book.last_update_id:
            return
        if not self._continues(book.last_update_id, diff):
            log.warning(
                "%s book out of sync (after update %d, got %d-%d, previous %s); resyncing",
                symbol,
                book.last_update_id,
                diff["first_update_id"],
                diff["update_id"],
                diff.get("prev_update_id"),
            )
            self._broken(symbol, book.event_ms, diff)
            self.invalidate(symbol)
            book.pending.append(diff)
            self._ensure_sync(symbol)
            return
        book.apply(diff)
        self._schedule_publish(symbol)

    def _continues(self, last_id: int, diff: dict[str, Any]) -> bool:
        """Whether ``diff`` follows the diff whose final id is ``last_id`` with none lost between."""
        if self._by_pu:
            return bool(diff.get("prev_update_id") == last_id)
        return bool(diff["first_update_id"] == last_id + 1)

    def _bridges(self, snapshot_id: int, diff: dict[str, Any]) -> bool:
        """Whether ``diff`` may be the first applied on a snapshot taken at ``snapshot_id``."""
        if self._by_pu:
            return bool(diff["first_update_id"] <= snapshot_id <= diff["update_id"])
        return bool(diff["first_update_id"] <= snapshot_id + 1 <= diff["update_id"])

    def _broken(self, symbol: str, from_ms: int, diff: dict[str, Any]) -> None:
        if self._on_break is not None:
            self._on_break(symbol, from_ms, max(from_ms, int(diff["event_ms"])))

    def invalidate(self, symbol: str, resync: bool = True) -> None:
        """Forget the book and delete its Redis key until it is rebuilt.

        ``resync=False`` (shutdown) does not count it as a resync.
        """
        book = self.books[symbol]
        if book.synced and resync:
            self._metrics.book_resyncs += 1
        book.reset()
        timer = self._timers.pop(symbol, None)
        if timer is not None:
            timer.cancel()
        self._publish(self._keys[symbol], None)

    def snapshot(self, symbol: str) -> dict[str, Any] | None:
        """The full local book (``None`` while not in sync)."""
        book = self.books.get(symbol)
        if book is None or not book.synced:
            return None
        return {
            "symbol": symbol,
            "update_id": book.last_update_id,
            "bids": sorted(([p, q] for p, q in book.bids.items()), reverse=True),
            "asks": sorted([p, q] for p, q in book.asks.items()),
        }

    def _ensure_sync(self, symbol: str) -> None:
        if self._closed or symbol in self._syncing:
            return
        task = asyncio.get_running_loop().create_task(self._sync(symbol))
        self._syncing[symbol] = task
        task.add_done_callback(lambda _t: self._syncing.pop(symbol, None))

    async def _sync(self, symbol: str) -> None:
        book = self.books[symbol]
        arrived = self._arrived.setdefault(symbol, asyncio.Event())
        attempt = 0
        while not book.synced and not self._closed:
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1, 0.2, 10.0))
            attempt += 1
            assert self._rest is not None, "a book without REST snapshots syncs from its stream"
            try:
                snap = await self._rest.depth(symbol, self._snapshot_limit)
                bids, asks = parse_levels(snap["bids"]), parse_levels(snap["asks"])
            except (CollectorError, MalformedEvent, KeyError) as exc:
                self._metrics.rest_errors += 1
                if isinstance(exc, RateLimitedError):
                    await asyncio.sleep(exc.retry_after_s)
                log.warning("%s depth snapshot failed (%s); retrying", symbol, exc)
                continue
            last_id = int(snap["lastUpdateId"])
            # Diffs up to the snapshot may still be on their way: wait for one that follows it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SNAPSHOT_WAIT_S):
                    while not any(d["update_id"] >= last_id + (not self._by_pu) for d in book.pending):
                        arrived.clear()
                        await arrived.wait()
            # Futures keep the diff whose u equals the snapshot's id (U <= lastUpdateId <= u).
            floor = last_id if self._by_pu else last_id + 1
            pending = [d for d in book.pending if d["update_id"] >= floor]
            if not pending or not self._bridges(last_id, pending[0]):
                # No diff follows, or the snapshot is older than the first buffered diff.
                book.pending = pending
                continue
            book.load_snapshot(last_id, bids, asks)
            ok = True
            for i, diff in enumerate(pending):
                if i and not self._continues(book.last_update_id, diff):
                    self._broken(symbol, book.event_ms, diff)
                    ok = False
                    break
                book.apply(diff)
            book.pending = []
            if not ok:
                book.reset()
                continue
            book.synced = True
            self._last_publish.pop(symbol, None)
            self._schedule_publish(symbol)

    def _schedule_publish(self, symbol: str) -> None:
        if symbol in self._timers:
            return
        now = time.monotonic()
        due = self._last_publish.get(symbol, 0.0) + self._interval_s
        if now >= due:
            self._publish_now(symbol)
            return
        loop = asyncio.get_running_loop()
        self._timers[symbol] = loop.call_later(due - now, self._publish_now, symbol)

    def _publish_now(self, symbol: str) -> None:
        self._timers.pop(symbol, None)
        book = self.books[symbol]
        if not book.synced or self._closed:
            return
        self._last_publish[symbol] = time.monotonic()
        bids, asks = book.top(self._depth)
        payload = msgpack.packb(
            {
                "exchange": self._exchange,
                "symbol": symbol,
                "update_id": book.last_update_id,
                "event_ms": book.event_ms,
                "published_ms": int(time.time() * 1000),
                "bids": bids,
                "asks": asks,
            }
        )
        self._metrics.books_published += 1
        self._publish(self._keys[symbol], payload)

    async def close(self) -> None:
        """Stop syncing and publishing; safe to call twice."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._syncing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
