"""One (symbol, ``trades``) pair of a run: plan by the id coverage, fetch pages by id, queue them.

Runs inside :class:`~data_collector.backfill.run.BackfillRun`, beside the symbol's OHLCV pairs:
the same rate limiter and retry policy (through the exchange client), the same page slots and
write queue, the same stop. Each page goes on the write queue with the coverage it proves
(:func:`~data_collector.backfill.trades_plan.trade_page_coverage`), so a run killed at any moment
leaves whole pages behind and the next run fetches exactly the ids that are missing.

The newest trades are left for the next run: the range ends :data:`SETTLE_MS` before the
exchange's clock, so no trade still being aggregated is ever stored.
"""

from __future__ import annotations

from functools import partial

from data_collector.backfill.pair_run import PairFetch
from data_collector.backfill.trades_fetch import TRADES_PAGE_LIMIT, fetch_trades_from, first_id_at
from data_collector.backfill.trades_plan import (
    IdRange,
    TradeSpan,
    id_pages,
    plan_trade_spans,
    trade_page_coverage,
)
from data_collector.datatypes import TRADES
from data_collector.storage.trades import TradeBatch, TradeCoverage

#: Trades younger than this (by the exchange's clock) are left for the next run.
SETTLE_MS = 10_000


class TradePair(PairFetch):
    """The trades of one instrument over the run's range."""

    data_type = TRADES
    page_limit = TRADES_PAGE_LIMIT

    async def _run(self) -> None:
        run = self.run
        covered = await run.owner._store_call(partial(run.store.trade_coverage, self.instrument.id))
        now_ms = self.client.server_now_ms()
        end_ms = min(run.end_ms, now_ms - SETTLE_MS)
        spans = plan_trade_spans(run.start_ms, end_ms, covered)
        if run.archives is not None:
            spans = await run.archives.trade_spans(self, spans, now_ms)
        self.pair.gaps_found = sum(1 for s in spans if s.first_id is not None and s.end_id is not None)
        for span in spans:
            if self._stopping():
                break
            await self._span(span)

    async def _span(self, span: TradeSpan) -> None:
        run, symbol = self.run, self.instrument.symbol
        listing = self.instrument.listing_ms
        first = span.first_id
        if first is None:
            first = await first_id_at(
                self.client, symbol, span.start_ms, not_before_ms=listing, delisted_ms=self.delisting_ms
            )
        end = span.end_id
        if end is None:
            end = await first_id_at(
                self.client, symbol, span.end_ms, not_before_ms=listing, delisted_ms=self.delisting_ms
            )
        end = max(end, first)
        ids = (first, end)
        if end == first:
            # No trade in the span: record it, so it is never asked again.
            cover = TradeCoverage(first, first, span.start_ms, span.end_ms)
            await run.queue.put((TradeBatch(self.instrument.id, [], [cover]), self.pair))
            return
        todo = list(reversed(id_pages(first, end, self.limit)))
        self.pair.pages_planned += len(todo)
        await self._drain(todo, partial(self._page, span, ids, todo=todo))

    async def _page(self, span: TradeSpan, ids: IdRange, page: IdRange, *, todo: list[IdRange]) -> bool:
        run = self.run
        request = fetch_trades_from(self.client, self.instrument.symbol, page[0], self.limit)
        answer = await self._answer(request, page, todo)
        if answer is None:
            return False
        result = trade_page_coverage(span, ids, page, answer, self.limit)
        if result.rest is not None:
            more = id_pages(*result.rest, self.limit)
            todo.extend(reversed(more))
            self.pair.pages_planned += len(more)
        self.pair.trades_fetched += len(result.trades)
        self.pair.pages_done += 1
        await run.queue.put((TradeBatch(self.instrument.id, result.trades, [result.coverage]), self.pair))
        run._progress(self.pair)
        return True
