"""One (perpetual, ``funding_rates``) pair of a run: plan by the coverage, fetch pages, queue them.

Runs inside :class:`~data_collector.backfill.run.BackfillRun` beside the symbol's candle pairs,
through the futures venue's client (its rate limiter, timeouts and retries). ccxt's
``fetch_funding_rate_history`` maps ``since``, ``limit`` and ``params={"until": ...}`` to
Binance's ``fundingRate`` ``startTime``, ``limit`` and ``endTime`` (inclusive). An answer holds
the first ``limit`` settlements of the window: a short one proves the window whole, a full one
proves up to its last settlement and the rest is asked next. Each page goes on the write queue
with the span it proves, so a run killed at any moment resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from data_collector.backfill.exchange import ExchangeClient
from data_collector.backfill.pair_run import PairFetch
from data_collector.backfill.validate import MalformedPageError, validate_funding
from data_collector.datatypes import FUNDING_RATES
from data_collector.markets import FUNDING_SERIES
from data_collector.storage.base import Instrument
from data_collector.storage.funding import FundingBatch, FundingRate
from data_collector.storage.ranges import Span, subtract_spans
from data_collector.venues import adapter_for

if TYPE_CHECKING:
    from data_collector.backfill.run import BackfillRun

#: Binance's most settlements per ``fundingRate`` answer.
FUNDING_PAGE_LIMIT = 1000
#: Request weight of ``fundingRate`` in the futures budget (it also shares a 500 per 5 minutes
#: per IP limit, far above what a backfill asks: one request covers 333 days).
FUNDING_WEIGHT = 1
#: Settlements younger than this (by the exchange's clock) may not be published yet.
SETTLE_MS = 60_000


async def fetch_funding_page(
    client: ExchangeClient, symbol: str, start_ms: int, end_ms: int, limit: int
) -> list[FundingRate]:
    """The first ``limit`` settlements of ``symbol`` in ``[start_ms, end_ms)``, validated."""

    async def fetch() -> list[FundingRate]:
        try:
            params = adapter_for(client.id).funding_params(end_ms)
            rows = await client.exchange.fetch_funding_rate_history(
                symbol, since=start_ms, limit=limit, params=params
            )
            return validate_funding(rows, start_ms, end_ms)
        except (TypeError, ValueError, KeyError, IndexError, MalformedPageError) as exc:
            client.stats.malformed += 1
            raise MalformedPageError(f"unusable funding page: {exc}") from None

    return await client.call(fetch, weight=FUNDING_WEIGHT)


def funding_page_coverage(page: Span, rates: Sequence[FundingRate], limit: int) -> tuple[Span, Span | None]:
    """What an answer to ``page`` proves, and the rest of the page still to ask."""
    start, end = page
    if len(rates) < limit:
        return page, None
    last = rates[-1][0] + 1
    return (start, last), ((last, end) if last < end else None)


class FundingPair(PairFetch):
    """The funding rates of one perpetual over the run's range, one page at a time (one page of
    1,000 settlements covers 333 days)."""

    data_type = FUNDING_RATES
    page_limit = FUNDING_PAGE_LIMIT

    def __init__(self, run: BackfillRun, client: ExchangeClient, instrument: Instrument) -> None:
        super().__init__(run, client, instrument)
        self.venue = adapter_for(client.id)
        if self.venue.funding_page_limit is not None:
            self.limit = self.venue.funding_page_limit

    async def _run(self) -> None:
        run = self.run
        covered = await run.owner._store_call(partial(run.store.coverage, self.instrument.id, FUNDING_SERIES))
        end_ms = min(run.end_ms, self.client.server_now_ms() - SETTLE_MS)
        spans = [(c.start_ms, c.end_ms) for c in covered]
        if self.delisting_ms is not None and self.delisting_ms + 1 < end_ms:
            # No settlement after the delisting: the rest is proven empty without a request.
            after = (max(run.start_ms, self.delisting_ms + 1), end_ms)
            if subtract_spans(*after, spans):
                await run.queue.put((FundingBatch(self.instrument.id, [], [after]), self.pair))
            end_ms = self.delisting_ms + 1
        todo = subtract_spans(run.start_ms, end_ms, spans)
        self.pair.pages_planned = len(todo)
        todo.reverse()
        await self._drain(todo, partial(self._page, todo=todo), width=1)

    async def _page(self, page: Span, *, todo: list[Span]) -> bool:
        run = self.run
        request = fetch_funding_page(self.client, self.instrument.symbol, page[0], page[1], self.limit)
        rates = await self._answer(request, page, todo)
        if rates is None:
            return False
        if self.venue.funding_span is not None:  # newest first
            proven, rest = self.venue.funding_span(page, [r[0] for r in rates], self.limit)
        else:
            proven, rest = funding_page_coverage(page, rates, self.limit)
        if rest is not None:
            todo.append(rest)
            self.pair.pages_planned += 1
        self.pair.pages_done += 1
        self.pair.candles_fetched += len(rates)
        await run.queue.put((FundingBatch(self.instrument.id, rates, [proven]), self.pair))
        run._progress(self.pair)
        return True
