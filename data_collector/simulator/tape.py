"""The ``trade`` stream's tape: trade ids as a function of wall time, at the density ``ws_rate`` sets.

The market does not wait for its clients: trade ``k`` of a symbol happens at a fixed time whether
or not anyone is subscribed, so a client that was away (a drop, a restart) finds an id hole
exactly as wide as what it missed. Ids count the trades since the epoch at ``ws_rate`` a second;
when ``ws_rate`` changes the tape is re-anchored at that time, so ids stay contiguous and
increasing.
A trade's content (price offset, quantity, side) is a hash of its id, so it does not depend on
who was listening either.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field


@dataclass
class RateTape:
    """How many trades every symbol has had by a time, at a rate that can change.

    Args:
        start_ms: the anchor: the tape's count is 0 there.
        rate: trades per second per symbol.
    """

    start_ms: int
    rate: float
    #: The count at ``start_ms`` (the trades of the segments before the last re-anchor).
    base: int = 0
    #: The earlier segments, ``(start_ms, base, rate)``, oldest first (one per rate change).
    past: list[tuple[int, int, float]] = field(default_factory=list)

    def count(self, now_ms: int) -> int:
        """Trades per symbol with a time ``<= now_ms`` (never less than the count at the anchor)."""
        if now_ms <= self.start_ms or self.rate <= 0:
            return self.base
        return self.base + int((now_ms - self.start_ms) * self.rate / 1000.0)

    def set_rate(self, rate: float, now_ms: int) -> None:
        """Change the density from ``now_ms`` on; the trades before keep their ids and times."""
        if rate != self.rate:
            base = self.count(now_ms)
            if base > self.base:
                self.past.append((self.start_ms, self.base, self.rate))
            self.base = base
            self.start_ms = max(now_ms, self.start_ms)
            self.rate = rate

    def time_of(self, index: int) -> int:
        """The time of the trade at ``index`` (0-based count): the first ms the count passes it."""
        start, base, rate = self.start_ms, self.base, self.rate
        if index < base and self.past:
            k = bisect_right(self.past, index, key=lambda seg: seg[1]) - 1
            start, base, rate = self.past[max(0, k)]
        if index < base or rate <= 0:
            return start
        return start + math.ceil((index - base + 1) * 1000.0 / rate)


def pick(trade_id: int) -> int:
    """Eight bits drawn from a trade id (a multiplicative hash): its price level, size and side."""
    return ((trade_id * 0x9E3779B1) >> 13) & 0xFF
