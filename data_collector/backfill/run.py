"""Fetch -> validate -> store for one ``collect`` call: the fetchers, the bounded write queue, the writers.

:class:`~data_collector.optimized_collector.OptimizedDataCollector` (the front) builds one
:class:`BackfillRun` per ``collect``; the plan comes from :mod:`data_collector.backfill.plan`, the
pages from :class:`~data_collector.backfill.exchange.ExchangeClient` (validated by
:mod:`data_collector.backfill.validate`), and the writers store them with their coverage.

Long because every data type's pairs (candles of each price type, open interest, trades, funding)
share this one run: its queue, its writers, its stop and its report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from data_collector.backfill.exchange import ExchangeClient, classify
from data_collector.backfill.funding_run import FundingPair
from data_collector.backfill.heap import frozen_heap
from data_collector.backfill.open_interest_fetch import OPEN_INTEREST_PAGE_LIMIT, fetch_open_interest_page
from data_collector.backfill.pair_run import drain_pages
from data_collector.backfill.plan import (
    BackfillPlan,
    Range,
    page_coverage,
    pages,
    plan_backfill,
    unproven_rest,
)
from data_collector.backfill.report import CollectionReport, PairReport
from data_collector.backfill.trades_run import TradePair
from data_collector.backfill.universe import delisted_at
from data_collector.config import Config
from data_collector.datatypes import (
    CANDLE_PRICES,
    FUNDING_RATES,
    OHLCV,
    OPEN_INTEREST,
    TRADES,
    check_market_has,
    pair_keys,
)
from data_collector.errors import CollectorError, InvalidSymbolError, PermanentError, TransientError
from data_collector.markets import OPEN_INTEREST_PERIODS, series_key, split_series
from data_collector.picking import pick
from data_collector.storage.base import CandleBatch, CoverageRange, Instrument, WriteResult
from data_collector.storage.funding import FundingBatch
from data_collector.storage.open_interest import OpenInterestBatch
from data_collector.storage.trades import TradeBatch
from data_collector.venues import adapter_for

if TYPE_CHECKING:
    from data_collector.backfill.trades_plan import TradeSpan
    from data_collector.backfill.trades_run import TradePair
    from data_collector.optimized_collector import OptimizedDataCollector

log = logging.getLogger(__name__)

#: What the fetchers put on the write queue.
Batch = CandleBatch | TradeBatch | FundingBatch | OpenInterestBatch


class ArchiveSource(Protocol):
    """A venue's bulk archive files as a backfill source (``VenueAdapter.archives`` names the
    class: Binance's data.binance.vision in ``venues/binance/archive_run.py``)."""

    def split(self, instrument: Instrument, plan: BackfillPlan, now_ms: int, limit: int) -> None:
        """Take the published whole periods of ``plan`` for files; its pages keep the rest."""

    async def ingest(
        self, run: BackfillRun, instrument: Instrument, plan: BackfillPlan, pair: PairReport
    ) -> list[Range]:
        """Store the pair's files; the ranges REST must fetch instead."""

    async def trade_spans(self, trades: TradePair, spans: list[TradeSpan], now_ms: int) -> list[TradeSpan]:
        """Store the published whole days of ``spans`` from files; the spans left for REST."""

    async def close(self) -> None: ...


T = TypeVar("T")
B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class BackfillSettings:
    """How much of a run is in flight at once; built by :meth:`from_config`, or directly in a test.

    The ``performance`` keys bound different things: ``concurrent_symbols`` the symbols being
    planned and fetched, ``pages_in_flight_per_pair`` the pages of one pair, ``pages_in_flight``
    the pages between their request and the write queue over all pairs. The requests in flight
    are bounded by the exchange client (``ExchangeSettings.requests_in_flight``).
    """

    concurrent_symbols: int = 5
    pages_in_flight: int = 32
    pages_in_flight_per_pair: int = 16
    #: Candles per request (``exchange.ohlcv_page_limit``).
    page_limit: int = 1000
    #: Batches the write queue holds (backpressure, not memory growth).
    write_queue_batches: int = 8
    writers: int = 2
    #: Most batches one writer drains into one transaction.
    max_batches_per_write: int = 8

    @classmethod
    def from_config(cls, config: Config) -> BackfillSettings:
        in_flight = ("concurrent_symbols", "pages_in_flight", "pages_in_flight_per_pair")
        return cls(**pick(config.performance, *in_flight), page_limit=config.exchange.ohlcv_page_limit)


class BackfillRun:
    """One ``collect`` call: the fetchers, the bounded write queue and the writers, in one task group.

    A pair that fails (the exchange refused it, retries ran out) is reported and the others go
    on; an unexpected error in any task cancels all of them and is raised from :meth:`execute`.
    """

    def __init__(
        self,
        owner: OptimizedDataCollector,
        settings: BackfillSettings,
        report: CollectionReport,
        start_ms: int,
        end_ms: int,
    ) -> None:
        self.owner = owner
        self.settings = settings
        self.store = owner.store
        self.report = report
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.queue: asyncio.Queue[tuple[Batch, PairReport] | None] = asyncio.Queue(
            settings.write_queue_batches
        )
        self.symbols = asyncio.Semaphore(settings.concurrent_symbols)
        self.page_slots = asyncio.Semaphore(settings.pages_in_flight)
        self.write_error: BaseException | None = None
        archives = adapter_for(owner.config.exchange.id).archive_source()
        self.archives: ArchiveSource | None = None if archives is None else archives.from_config(owner.config)

    async def execute(
        self, symbols: list[str], timeframes: list[str], data_types: Sequence[str] = (OHLCV,)
    ) -> None:
        # What exists before the run (markets, modules) is not scanned by the run's GC passes.
        with frozen_heap():
            await self._execute(symbols, timeframes, data_types)

    async def _execute(self, symbols: list[str], timeframes: list[str], data_types: Sequence[str]) -> None:
        started = time.perf_counter()
        clients = self.owner.open_clients()
        stats0 = _snapshot(clients)
        try:
            # One group: an unexpected error in any task cancels the others, so no fetcher is
            # left waiting on a full queue that no writer drains any more.
            async with asyncio.TaskGroup() as group:
                for i in range(self.settings.writers):
                    group.create_task(self._writer(), name=f"dc-writer-{i}")
                fetchers = [
                    group.create_task(self._symbol(s, timeframes, data_types), name=f"dc-{s}")
                    for s in symbols
                ]
                if fetchers:
                    await asyncio.wait(fetchers)
                for _ in range(self.settings.writers):
                    await self.queue.put(None)
        except BaseExceptionGroup as errors:
            raise _first_error(errors) from None
        finally:
            if self.archives is not None:
                await self.archives.close()
            stats1 = _snapshot(clients)
            r = self.report
            r.requests, r.retries, r.http_429, r.http_418, r.malformed_pages, r.weight_used = (
                b - a for a, b in zip(stats0, stats1, strict=True)
            )
            r.elapsed_s = time.perf_counter() - started
            r.interrupted = self.owner._stop.is_set() and any(
                p.status in ("stopped", "pending", "running") for p in r.pairs.values()
            )
        if self.write_error is not None:
            raise self.write_error

    async def _symbol(self, symbol: str, timeframes: list[str], data_types: Sequence[str]) -> None:
        keys = pair_keys(timeframes, data_types)
        async with self.symbols:
            if self.owner._stop.is_set():
                for key in keys:
                    self._finish(self.report.pair(symbol, key), "stopped")
                return
            try:
                client = await self.owner.client_for(symbol)
            except Exception as exc:
                self._fail_all(symbol, keys, exc)
                return
            wanted: list[str] = []
            for data_type in data_types:
                try:
                    check_market_has(data_type, symbol, client.markets.get(symbol))
                    wanted.append(data_type)
                except PermanentError as refused:
                    for key in pair_keys(timeframes, [data_type]):
                        keys.remove(key)
                        self._fail(self.report.pair(symbol, key), refused)
            series = [(tf, CANDLE_PRICES[t]) for t in wanted if t in CANDLE_PRICES for tf in timeframes]
            if OPEN_INTEREST in wanted:
                for tf in timeframes:
                    if tf in OPEN_INTEREST_PERIODS:
                        series.append((tf, "oi"))
                    else:
                        periods = ", ".join(OPEN_INTEREST_PERIODS)
                        no_period = PermanentError(
                            f"open_interest has no {tf} period; its periods are {periods}"
                        )
                        self._fail(self.report.pair(symbol, f"oi:{tf}"), no_period)
            try:
                instrument = await self.owner.instrument(symbol)
                plans = [await self._plan(client, instrument, symbol, tf, p) for tf, p in series]
                # ``missing``, not ``pages``: archive files take whole days out of the pages.
                wants_listing = any(p.missing for p in plans) or TRADES in keys
                if instrument.listing_ms is None and wants_listing:
                    listing = await client.first_candle_ms(symbol)
                    if listing is not None:
                        await self.owner._store_call(partial(self.store.set_listing, instrument.id, listing))
                        instrument = await self._relisted(instrument, listing)
                        plans = [await self._plan(client, instrument, symbol, tf, p) for tf, p in series]
            except Exception as exc:
                self._fail_all(symbol, keys, exc)
                return
            async with asyncio.TaskGroup() as pairs:
                for plan in plans:
                    pairs.create_task(self._pair(client, instrument, plan))
                if TRADES in keys:
                    trades = adapter_for(client.id).trade_pair_class() or TradePair
                    pairs.create_task(trades(self, client, instrument).execute())
                if FUNDING_RATES in keys:
                    pairs.create_task(FundingPair(self, client, instrument).execute())

    def _fail_all(self, symbol: str, keys: list[str], exc: Exception) -> None:
        error = classify(exc)
        if not isinstance(error, (PermanentError, TransientError, InvalidSymbolError)):
            raise exc
        for key in keys:
            self._fail(self.report.pair(symbol, key), error)

    async def _relisted(self, instrument: Instrument, listing_ms: int) -> Instrument:
        updated = replace(instrument, listing_ms=listing_ms)
        self.owner._instruments[instrument.symbol] = updated
        return updated

    async def _plan(
        self, client: ExchangeClient, instrument: Instrument, symbol: str, timeframe: str, price: str
    ) -> BackfillPlan:
        key = series_key(timeframe, price)
        covered = await self.owner._store_call(partial(self.store.coverage, instrument.id, key))
        plan = plan_backfill(
            symbol,
            timeframe,
            self.start_ms,
            self.end_ms,
            covered=covered,
            listing_ms=instrument.listing_ms,
            server_now_ms=client.server_now_ms(),
            limit=self._page_limit(client, price),
            delisting_ms=delisted_at(client.markets.get(symbol)),
        )
        plan.price = price
        if self.archives is not None and price != "oi":
            self.archives.split(instrument, plan, client.server_now_ms(), self._page_limit(client, price))
        pair = self.report.pair(symbol, key)
        pair.pages_planned = len(plan.pages)
        pair.candles_expected = plan.expected_candles
        pair.gaps_found = plan.holes
        return plan

    def _page_limit(self, client: ExchangeClient, price: str) -> int:
        """Rows per page: the run's for spot candles, the futures venue's own for perpetuals',
        Binance's most for open interest."""
        if price == "oi":
            return OPEN_INTEREST_PAGE_LIMIT
        return client.settings.ohlcv_page_limit if client.futures else self.settings.page_limit

    async def _pair(self, client: ExchangeClient, instrument: Instrument, plan: BackfillPlan) -> None:
        pair = self.report.pair(plan.symbol, plan.key)
        pair.status = "running"
        self.report.gaps_found += plan.holes
        if plan.holes:
            self.owner.monitor.record_gaps(plan.holes)
        self._progress(pair)
        for s, e in filter(None, (plan.before_listing, plan.after_delisting)):
            # Before the listing and after a known delisting: 'empty' without a request.
            cover = [CoverageRange(s, e, "empty")]
            batch: CandleBatch | OpenInterestBatch = (
                OpenInterestBatch(instrument.id, plan.timeframe, [], cover)
                if plan.price == "oi"
                else CandleBatch(instrument.id, plan.key, [], cover)
            )
            await self.queue.put((batch, pair))
        todo = list(reversed(plan.pages))
        failure: list[CollectorError] = []
        if self.archives is not None:
            try:
                fallback = await self.archives.ingest(self, instrument, plan, pair)
            except PermanentError as refused:
                failure.append(refused)
                fallback = []
            todo[:0] = reversed(
                [p for r in fallback for p in pages(r, plan.timeframe, self._page_limit(client, plan.price))]
            )

        def more() -> bool:
            return bool(todo) and not failure and not self.owner._stop.is_set() and self.write_error is None

        await drain_pages(
            self, todo, more, partial(self._page, client, instrument, plan, pair, todo, failure)
        )
        if failure:
            self._fail(pair, failure[0])
        elif todo or self.write_error is not None:
            self._finish(pair, "stopped")
        else:
            self.report.gaps_repaired += plan.holes
            self._finish(pair, "done")

    async def _page(
        self,
        client: ExchangeClient,
        instrument: Instrument,
        plan: BackfillPlan,
        pair: PairReport,
        todo: list[Range],
        failure: list[CollectorError],
        page: Range,
    ) -> bool:
        """Fetch ``page`` and queue it for the writers; False when the pair must stop."""
        limit = self._page_limit(client, plan.price)
        oi = plan.price == "oi"
        request: Awaitable[Sequence[tuple[Any, ...]]] = (
            fetch_open_interest_page(client, plan.symbol, plan.timeframe, page, limit)
            if oi
            else client.fetch_page(plan.symbol, plan.timeframe, page, limit, price=plan.price)
        )
        fetch = await self.unless_stopped(request)
        if fetch.cancelled():
            todo.append(page)
            return False
        try:
            candles = fetch.result()
        except Exception as exc:
            failure.append(classify(exc))
            return False
        coverage = page_coverage(page, candles, plan.timeframe, cap=limit if oi else client.most_candles_seen)
        rest = unproven_rest(page, coverage)
        if rest is not None:
            # Cut short at the server's cap: the rest of the page is fetched in this run.
            more = pages(rest, plan.timeframe, limit)
            todo.extend(reversed(more))
            pair.pages_planned += len(more)
        gaps = sum(1 for c in coverage if c.kind == "empty")
        pair.exchange_gaps += gaps
        self.report.exchange_gaps += gaps
        pair.candles_fetched += len(candles)
        pair.pages_done += 1
        batch: CandleBatch | OpenInterestBatch = (
            OpenInterestBatch(instrument.id, plan.timeframe, candles, coverage)
            if oi
            else CandleBatch(instrument.id, plan.key, candles, coverage)
        )
        await self.queue.put((batch, pair))
        self._progress(pair)
        return True

    async def unless_stopped(self, fetch: Awaitable[T]) -> asyncio.Future[T]:
        """Run ``fetch`` until it is done or the run is asked to stop; the future, maybe cancelled."""
        task = asyncio.ensure_future(fetch)
        stopped = asyncio.ensure_future(self.owner._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                # Stopping: a page waiting for the rate limiter is dropped, not awaited.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return task

    def _fail(self, pair: PairReport, error: BaseException) -> None:
        pair.error = str(error)
        log.error("%s failed: %s", pair.key, error)
        self._finish(pair, "failed")

    def _finish(self, pair: PairReport, status: Literal["done", "failed", "stopped"]) -> None:
        if pair.status != "failed":
            pair.status = status
        self._progress(pair)

    def _progress(self, pair: PairReport) -> None:
        if self.owner.progress is not None:
            try:
                self.owner.progress(pair)
            except Exception:  # a display must never stop the collection
                log.exception("progress callback failed")

    async def _writer(self) -> None:
        done = False
        while not done:
            item = await self.queue.get()
            if item is None:
                break
            items = [item]
            while len(items) < self.settings.max_batches_per_write:
                try:
                    more = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if more is None:
                    done = True
                    break
                items.append(more)
            if self.write_error is not None:
                continue  # drain so fetchers never block on a full queue
            try:
                candles = [b for b, _ in items if isinstance(b, CandleBatch)]
                for data_type, price in CANDLE_PRICES.items():
                    await self._write(
                        data_type, [b for b in candles if split_series(b.timeframe)[1] == price]
                    )
                await self._write_trades([b for b, _ in items if isinstance(b, TradeBatch)])
                funding = [b for b, _ in items if isinstance(b, FundingBatch)]
                await self._write_points(FUNDING_RATES, self.store.write_funding, funding)
                interest = [b for b, _ in items if isinstance(b, OpenInterestBatch)]
                await self._write_points(OPEN_INTEREST, self.store.write_open_interest, interest)
            except Exception as exc:
                self.write_error = (
                    exc if isinstance(exc, CollectorError) else TransientError(f"write failed: {exc}")
                )
                log.error("writing to the store failed: %s", exc)
                for _, pair in items:
                    self._fail(pair, self.write_error)

    async def _write(self, data_type: str, batches: list[CandleBatch]) -> None:
        if not batches:
            return

        async def write() -> tuple[WriteResult, float]:
            started = time.perf_counter()
            return await self.store.write(batches), time.perf_counter() - started

        # Writes are idempotent (coverage + upsert), so a failed drain is simply written again whole.
        result, duration_s = await self.owner._store_call(write)
        monitor = self.owner.monitor
        monitor.record_db_operation("WRITE", duration_s * 1000, result.written)
        monitor.set_queue_depth(self.queue.qsize())
        self.report.rows_written += result.written
        self.report.rows_skipped += result.skipped
        self.report.add_rows(data_type, result.written)

    async def _write_trades(self, batches: list[TradeBatch]) -> None:
        if not batches:
            return
        started = time.perf_counter()
        # Idempotent like candles (keyed by id, coverage merged), so a failed write is retried whole.
        result = await self.owner._store_call(partial(self.store.write_trades, batches))
        self.owner.monitor.record_db_operation(
            "WRITE", (time.perf_counter() - started) * 1000, result.written
        )
        self.report.rows_written += result.written
        self.report.rows_skipped += result.skipped
        self.report.add_rows(TRADES, result.written)

    async def _write_points(
        self, data_type: str, write: Callable[[list[B]], Awaitable[WriteResult]], batches: list[B]
    ) -> None:
        """Write funding or open interest batches (idempotent: a failed write is retried whole)."""
        if not batches:
            return
        result = await self.owner._store_call(partial(write, batches))
        self.report.rows_written += result.written
        self.report.rows_skipped += result.skipped
        self.report.add_rows(data_type, result.written)


def _first_error(errors: BaseExceptionGroup) -> BaseException:
    """The first error of a task group (groups nest as the task groups do); the rest are logged."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [errors]
    while stack:
        item = stack.pop(0)
        if isinstance(item, BaseExceptionGroup):
            stack[:0] = item.exceptions
        else:
            leaves.append(item)
    for other in leaves[1:]:
        log.error("another task of the run failed too: %r", other)
    return leaves[0]


def _snapshot(clients: Sequence[ExchangeClient]) -> tuple[int, int, int, int, int, int]:
    """Request figures summed over the venues' clients."""
    out = [0] * 6
    for client in clients:
        s = client.stats
        row = (s.requests, s.retries, s.http_429, s.http_418, s.malformed, client.limiter.stats.weight)
        out = [a + b for a, b in zip(out, row, strict=True)]
    return (out[0], out[1], out[2], out[3], out[4], out[5])
