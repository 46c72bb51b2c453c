"""A simulated order book per symbol: one contiguous update-id sequence shared by REST and WS."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data_collector.simulator.market import SymbolMarket

#: Levels kept on each side of the book.
LEVELS = 200
#: Milliseconds between book steps (the depth@100ms cadence).
STEP_MS = 100


@dataclass
class DepthDiff:
    """One step of changes: update ids ``first..last``; quantity 0 removes a level."""

    first: int
    last: int
    time_ms: int
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)


class OrderBook:
    """Levels in integer ticks and lot steps around a reference price that follows the market.

    Args:
        seed: randomness for level sizes (book contents need not be reproducible across runs,
            only internally consistent).
        update_id: the first update id.
    """

    def __init__(self, seed: int, update_id: int) -> None:
        self._rng = random.Random(seed)
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.update_id = update_id
        self.last_step_ms = 0
        self.pending: deque[DepthDiff] = deque(maxlen=10_000)
        self._skip = 0
        #: The next step changes the book but its diff is never sent (an event lost in transit).
        self._lose = False
        self._gap = 1
        self._qty = 1

    def skip_update_id(self, count: int = 1, lose_content: bool = False) -> None:
        """Make the next diff start ``count`` ids after the previous one ended (a lost update).

        ``lose_content``: besides, the next step's changes reach the book (and REST snapshots)
        but its diff is never sent, so a book that ignored the break would be wrong.
        """
        self._skip += count
        self._lose = self._lose or lose_content

    def _rebuild(self, mid: int, qty_units: float) -> None:
        self._gap = max(1, mid // 100_000)
        self._qty = max(1, int(qty_units))
        rnd = self._rng.random
        self.bids = {mid - i * self._gap: 1 + int(self._qty * 3 * rnd()) for i in range(1, LEVELS + 1)}
        self.asks = {mid + i * self._gap: 1 + int(self._qty * 3 * rnd()) for i in range(1, LEVELS + 1)}

    def advance(self, now_ms: int, mid: int, qty_units: float) -> None:
        """Step the book to ``now_ms`` around ``mid`` (ticks), queueing each step's diff."""
        if not self.bids:
            self._rebuild(mid, qty_units)
            self.last_step_ms = now_ms - now_ms % STEP_MS
            return
        due = (now_ms - self.last_step_ms) // STEP_MS
        if due <= 0:
            return
        self.last_step_ms += due * STEP_MS
        for i in range(min(due, 20)):
            self._step(self.last_step_ms - (min(due, 20) - 1 - i) * STEP_MS, mid)

    def _step(self, time_ms: int, mid: int) -> None:
        rnd = self._rng.random
        diff = DepthDiff(self.update_id + 1 + self._skip, 0, time_ms)
        self.update_id += self._skip
        self._skip = 0
        changes = 0
        best_ask = mid + self._gap // 2 + 1
        best_bid = mid - self._gap // 2 - 1
        for p in [p for p in self.bids if p >= best_ask or p < mid - (LEVELS + 50) * self._gap]:
            del self.bids[p]
            diff.bids[p] = 0
            changes += 1
        for p in [p for p in self.asks if p <= best_bid or p > mid + (LEVELS + 50) * self._gap]:
            del self.asks[p]
            diff.asks[p] = 0
            changes += 1
        for _ in range(1 + int(rnd() * 6)):
            side, book, sign = (diff.bids, self.bids, -1) if rnd() < 0.5 else (diff.asks, self.asks, 1)
            i = 1 + int(LEVELS * rnd() * rnd())
            price = mid + sign * i * self._gap
            if (sign < 0 and price >= best_ask) or (sign > 0 and price <= best_bid):
                continue
            if price in book and rnd() < 0.15 and len(book) > LEVELS // 2:
                del book[price]
                side[price] = 0
            else:
                qty = 1 + int(self._qty * 3 * rnd())
                book[price] = qty
                side[price] = qty
            changes += 1
        for book, side, sign in ((self.bids, diff.bids, -1), (self.asks, diff.asks, 1)):
            if not book:
                price = mid + sign * self._gap
                book[price] = self._qty
                side[price] = self._qty
                changes += 1
        if changes == 0:
            price = max(self.bids)
            self.bids[price] += 1
            diff.bids[price] = self.bids[price]
            changes = 1
        self.update_id += changes
        diff.last = self.update_id
        if self._lose:
            self._lose = False
            return
        self.pending.append(diff)

    def top(self, limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Best ``limit`` bids (descending) and asks (ascending)."""
        bids = sorted(self.bids.items(), reverse=True)[:limit]
        asks = sorted(self.asks.items())[:limit]
        return bids, asks

    def best(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(best bid, best ask) as (price, qty)."""
        b = max(self.bids)
        a = min(self.asks)
        return (b, self.bids[b]), (a, self.asks[a])


def step_book(book: OrderBook, market: SymbolMarket, now_ms: int) -> None:
    """Step ``book`` up to ``now_ms`` around ``market``'s current price (at most every step)."""
    if book.bids and now_ms - book.last_step_ms < STEP_MS:
        return
    partial = market.partial_minute(now_ms)
    mid = partial.c if partial is not None else int(market.price0 * 10**market.price_decimals)
    book.advance(now_ms, mid, market.qty_units)
