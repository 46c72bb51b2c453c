"""OKX trades: ``history-trades`` walked back from a span's end, newest first, 100 a page.

OKX answers ``after=X`` with the newest 100 trades below ``X`` (a trade id with ``type=1``, a
time with ``type=2``). So a missing span ``[start, end)`` (from the same id-keyed coverage as
Binance's, :mod:`data_collector.storage.trades`) is walked from its end: the first page by time
(``after=end``) unless the coverage knows the id there, then by id from each page's oldest trade,
until a page reaches a trade before ``start`` or runs out. Every trade of a page with an id in
``[oldest, upper)`` is in the answer, so each page is written with the coverage row it proves:

* a full page inside the span: ``(oldest id, upper, oldest time + 1, upper's time)``;
* the last page: ``(first id at or after start, upper, start, upper's time)``.

Rows of adjacent pages touch by id and merge into the span. A run killed at any moment leaves
whole pages behind; the next run plans only the part of the span no row proves. A trade is
stored as ``(id, time, price, amount, id, id, buyer_maker)``: OKX trades are single trades (a
swap's amount is in contracts), and the buyer is the maker when the taker sold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from data_collector.backfill.exchange import ExchangeClient
from data_collector.backfill.trades_plan import TradeSpan
from data_collector.backfill.trades_run import TradePair
from data_collector.backfill.validate import MalformedPageError
from data_collector.storage.trades import Trade, TradeBatch, TradeCoverage

if TYPE_CHECKING:
    pass

#: Trades per ``history-trades`` answer (OKX's maximum).
PAGE_LIMIT = 100


def okx_trades(rows: object, *, below: int, by_time: bool) -> list[Trade]:
    """ccxt's parsed OKX trades as :data:`Trade` rows sorted by id, or :class:`MalformedPageError`.

    Valid: integer ids and times, finite positive prices and amounts, distinct ids, and every key
    (the id, or the time with ``by_time``) below ``below``.
    """
    if not isinstance(rows, list):
        raise MalformedPageError(f"expected a list of trades, got {type(rows).__name__}")
    out: list[Trade] = []
    for row in rows:
        if not isinstance(row, dict):
            raise MalformedPageError(f"a trade is not an object: {row!r:.60}")
        try:
            tid, ts = int(row["id"]), row["timestamp"]
            price, amount = float(row["price"]), float(row["amount"])
        except (KeyError, TypeError, ValueError):
            raise MalformedPageError(f"a trade lacks an id, time, price or amount: {row!r:.80}") from None
        if not isinstance(ts, int) or not (math.isfinite(price) and math.isfinite(amount)):
            raise MalformedPageError(f"a trade has a bad time, price or amount: {row!r:.80}")
        if price <= 0 or amount <= 0 or (ts if by_time else tid) >= below:
            raise MalformedPageError(f"trade {tid} is outside the page asked for or not positive")
        out.append((tid, ts, price, amount, tid, tid, row.get("side") == "sell"))
    out.sort()
    if any(a[0] == b[0] for a, b in zip(out, out[1:], strict=False)):
        raise MalformedPageError("a trade id is repeated in one answer")
    return out


async def fetch_below(client: ExchangeClient, symbol: str, below: int, *, by_time: bool) -> list[Trade]:
    """The newest :data:`PAGE_LIMIT` trades with an id (a time, ``by_time``) below ``below``."""
    params: dict[str, Any] = {
        "method": "publicGetMarketHistoryTrades",
        "type": "2" if by_time else "1",
        "after": str(below),
    }

    async def fetch() -> list[Trade]:
        try:
            rows = await client.exchange.fetch_trades(symbol, None, PAGE_LIMIT, params)
            return okx_trades(rows, below=below, by_time=by_time)
        except (TypeError, ValueError, KeyError, IndexError, MalformedPageError) as exc:
            client.stats.malformed += 1
            raise MalformedPageError(f"unusable trades page: {exc}") from None

    return await client.call(fetch)


class OkxTradePair(TradePair):
    """The trades of one OKX instrument over the run's range: :class:`TradePair`'s plan, stop and
    failure handling, with OKX's walk back through each missing span."""

    async def _span(self, span: TradeSpan) -> None:
        """Walk ``span`` back from its end, page by page, until it is proven or the run stops."""
        upper, upper_ms = span.end_id, span.end_ms
        while True:
            by_time = upper is None
            below = span.end_ms if upper is None else upper
            fetch = await self.run.unless_stopped(
                fetch_below(self.client, self.instrument.symbol, below, by_time=by_time)
            )
            if fetch.cancelled():
                return
            trades = fetch.result()
            if upper is None:
                # No trade at all before the span's end: nothing below id 0 either.
                upper = trades[-1][0] + 1 if trades else 0
            inside = [t for t in trades if t[1] >= span.start_ms]
            done = len(inside) < len(trades) or len(trades) < PAGE_LIMIT
            if done:
                first = inside[0][0] if inside else upper
                cover = TradeCoverage(first, upper, span.start_ms, max(span.start_ms, upper_ms))
            else:
                oldest = inside[0]
                cover = TradeCoverage(oldest[0], upper, min(oldest[1] + 1, upper_ms), upper_ms)
            self.pair.pages_planned += 1
            self.pair.pages_done += 1
            self.pair.trades_fetched += len(inside)
            await self.run.queue.put((TradeBatch(self.instrument.id, inside, [cover]), self.pair))
            self.run._progress(self.pair)
            if done:
                return
            upper, upper_ms = inside[0][0], inside[0][1]
            if self._stopping():
                return
