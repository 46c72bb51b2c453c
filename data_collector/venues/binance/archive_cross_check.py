"""``exchange.archive.cross_check: N``: N random candles of each archive month compared with REST.

A checksum proves a file is the one Binance published, not that its values are REST's. With
``cross_check`` on, the first file of each (pair, month) the run ingests has ``N`` of its candles,
drawn at random, asked of REST one by one (one request each, charged to the venue's weight budget
like any page). Any difference is an :class:`~data_collector.venues.binance.archive_fetch.ArchiveFailure`
naming the candle: the file is not used, the report names it, and REST fetches its range.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from data_collector.markets import TIMEFRAME_MS
from data_collector.storage.base import Candle
from data_collector.venues.binance.archive_fetch import ArchiveFailure
from data_collector.venues.binance.archive_plan import ArchiveFile

if TYPE_CHECKING:
    from data_collector.backfill.exchange import ExchangeClient
    from data_collector.backfill.plan import BackfillPlan


class CrossCheck:
    """Which months of which pairs were compared in this run, and how many candles."""

    def __init__(self, candles_per_month: int, seed: int | None = None) -> None:
        self.n = candles_per_month
        self.rng = random.Random(seed)
        self.months: set[tuple[str, str]] = set()
        #: Candles compared with REST so far.
        self.compared = 0

    def wanted(self, pair_key: str, file: ArchiveFile) -> bool:
        """Whether ``file`` is the first of its month for ``pair_key`` (then it is compared)."""
        if self.n <= 0:
            return False
        month = (pair_key, file.date[:7])
        if month in self.months:
            return False
        self.months.add(month)
        return True

    async def compare(self, client: ExchangeClient, plan: BackfillPlan, candles: Sequence[Candle]) -> None:
        """Ask REST for ``n`` random candles of ``candles``; :class:`ArchiveFailure` on a difference."""
        step = TIMEFRAME_MS[plan.timeframe]
        for candle in sorted(self.rng.sample(candles, min(self.n, len(candles)))):
            ts = candle[0]
            rest = await client.fetch_page(plan.symbol, plan.timeframe, (ts, ts + step), 1, price=plan.price)
            self.compared += 1
            if rest != [candle]:
                when = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M")
                raise ArchiveFailure(
                    f"cross-check: the candle at {when} differs from REST (archive {candle[1:]}, "
                    f"REST {rest[0][1:] if rest else 'none'})",
                    retry=False,
                )
