"""OKX ``books``: a snapshot, then updates; each message carries ``seqId``, ``prevSeqId`` (the
``seqId`` of the message before; ``-1`` on a snapshot) and the CRC32 ``checksum`` of the best 25
levels after it is applied (OKX's rule: ``bid1px:bid1sz:ask1px:ask1sz:...`` interleaved, the
strings as sent, signed 32-bit).

Every message is checked, the snapshot included: an update whose ``prevSeqId`` is not the last
``seqId`` (a lost message, or a sequence reset) or a checksum that does not match breaks the book.
The book then leaves Redis at once (its key is deleted: no wrong book is ever published), a
``book`` gap marker covers the depth stream from the last good message to the breaking one, and
the channel is resubscribed for a new snapshot. Updates that arrive before it are ignored (the
stream still holds them); if the snapshot's ``seqId`` is not that of the last of them, the updates
between were never sent (unsubscribed meanwhile), and a second marker covers the stream from that
last message to the snapshot. A
message with no levels and ``seqId == prevSeqId`` is OKX's keepalive for a quiet book.

Publishing (the top N, at most every interval) is :class:`BookKeeper`'s.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any

from data_collector.streaming.order_book import SNAPSHOT_WAIT_S, BookKeeper, OrderBook
from data_collector.venues.okx.protocol import CHECKSUM_LEVELS, checksum

log = logging.getLogger(__name__)

#: Asks the connection carrying ``symbol``'s book for a new snapshot.
Resubscribe = Callable[[str], None]


class OkxBook(OrderBook):
    """An :class:`OrderBook` that also keeps each level's strings as sent, for the checksum."""

    __slots__ = ("raw_asks", "raw_bids")

    def __init__(self, symbol: str) -> None:
        super().__init__(symbol)
        self.raw_bids: dict[float, tuple[str, str]] = {}
        self.raw_asks: dict[float, tuple[str, str]] = {}

    def reset(self) -> None:
        super().reset()
        self.raw_bids.clear()
        self.raw_asks.clear()

    def apply_raw(
        self, event: dict[str, Any], bids: list[tuple[str, str]], asks: list[tuple[str, str]]
    ) -> None:
        sides = ((self.bids, self.raw_bids, bids), (self.asks, self.raw_asks, asks))
        for values, raw, levels in sides:
            for px, sz in levels:
                price, qty = float(px), float(sz)
                if qty == 0.0:
                    values.pop(price, None)
                    raw.pop(price, None)
                else:
                    values[price] = qty
                    raw[price] = (px, sz)
        self.last_update_id = event["update_id"]
        self.event_ms = event["event_ms"]

    def checksum(self) -> int:
        bids = [self.raw_bids[p] for p in heapq.nlargest(CHECKSUM_LEVELS, self.raw_bids)]
        asks = [self.raw_asks[p] for p in heapq.nsmallest(CHECKSUM_LEVELS, self.raw_asks)]
        return checksum(bids, asks)


class OkxBookKeeper(BookKeeper):
    """Keeps each OKX book from its WebSocket messages alone (no REST snapshot)."""

    def __init__(self, symbols: list[str], *, resubscribe: Resubscribe, **kwargs: Any) -> None:
        super().__init__(symbols, rest=None, snapshot_limit=0, **kwargs)
        self.books = {s: OkxBook(s) for s in symbols}
        self._resubscribe = resubscribe
        #: Snapshots asked for and not yet arrived -> when asked (no second request meanwhile,
        #: unless :data:`SNAPSHOT_WAIT_S` passes without one).
        self._awaiting: dict[str, float] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        #: Books resyncing on their connection -> ``(seqId, ts)`` of the last message since the
        #: break: the depth stream holds it, and a snapshot with another seqId lost what came between.
        self._tail: dict[str, tuple[int, int]] = {}
        #: Checksum mismatches and sequence breaks seen (each forced a resync).
        self.checksum_errors = 0
        self.sequence_breaks = 0

    def on_diff(self, symbol: str, diff: dict[str, Any]) -> None:
        """Apply one normalised ``books`` message (its ``raw`` strings popped here)."""
        bids, asks = diff.pop("raw")
        book = self.books[symbol]
        assert isinstance(book, OkxBook)
        # The last good message's time: a break's marker runs from it to the breaking message.
        good_ms = book.event_ms
        tail = self._tail.pop(symbol, None)
        if diff["snapshot"]:
            if tail is not None and tail[0] != diff["update_id"]:
                self._broken(symbol, tail[1], diff)  # the diffs between were never sent to us
            self._stop_retry(symbol)
            if book.synced:
                self.invalidate(symbol)
            book.reset()
            book.apply_raw(diff, bids, asks)
            if book.checksum() != diff["checksum"]:
                self.checksum_errors += 1
                log.warning("%s OKX book snapshot fails its checksum; resubscribing", symbol)
                book.reset()
                self._resync(symbol, good_ms, diff)
                return
            book.synced = True
            self._last_publish.pop(symbol, None)
            self._schedule_publish(symbol)
            return
        if not book.synced:
            if tail is not None:
                self._tail[symbol] = (diff["update_id"], int(diff["event_ms"]))
            return  # waiting for the snapshot asked for
        if diff["prev_update_id"] != book.last_update_id:
            self.sequence_breaks += 1
            log.warning(
                "%s OKX book: prevSeqId %d after seqId %d; resyncing",
                symbol,
                diff["prev_update_id"],
                book.last_update_id,
            )
            self._resync(symbol, good_ms, diff)
            return
        book.apply_raw(diff, bids, asks)
        if book.checksum() != diff["checksum"]:
            self.checksum_errors += 1
            log.warning("%s OKX book checksum mismatch at seqId %d; resyncing", symbol, diff["update_id"])
            self._resync(symbol, good_ms, diff)
            return
        self._schedule_publish(symbol)

    def _resync(self, symbol: str, good_ms: int, diff: dict[str, Any]) -> None:
        """Mark the depth stream from ``good_ms`` (the last good message's time) to ``diff``'s,
        drop the book, and ask for a new snapshot."""
        self._broken(symbol, good_ms or int(diff["event_ms"]), diff)
        self.invalidate(symbol)
        self._tail[symbol] = (diff["update_id"], int(diff["event_ms"]))
        if symbol not in self._awaiting and not self._closed:
            self._ask(symbol)

    def _ask(self, symbol: str) -> None:
        """Resubscribe for a snapshot, and again every :data:`SNAPSHOT_WAIT_S` until one comes."""
        self._awaiting[symbol] = time.monotonic()
        self._resubscribe(symbol)
        self._retries[symbol] = asyncio.get_running_loop().call_later(SNAPSHOT_WAIT_S, self._retry, symbol)

    def _retry(self, symbol: str) -> None:
        self._retries.pop(symbol, None)
        if symbol in self._awaiting and not self._closed:
            log.warning("%s OKX book: no snapshot %.0f s after asking; asking again", symbol, SNAPSHOT_WAIT_S)
            self._ask(symbol)

    def _stop_retry(self, symbol: str) -> None:
        self._awaiting.pop(symbol, None)
        retry = self._retries.pop(symbol, None)
        if retry is not None:
            retry.cancel()

    def invalidate(self, symbol: str, resync: bool = True) -> None:
        """Forget the book (a dropped connection's resubscription brings a new snapshot; its
        reconnect marker covers what came between)."""
        super().invalidate(symbol, resync)
        self._stop_retry(symbol)
        self._tail.pop(symbol, None)

    async def close(self) -> None:
        for symbol in list(self._retries):
            self._stop_retry(symbol)
        await super().close()
