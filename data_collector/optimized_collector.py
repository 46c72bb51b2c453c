"""Historical OHLCV backfill: every (symbol, timeframe) pair concurrently, resumable, gap-aware.

```python
from data_collector.optimized_collector import OptimizedDataCollector

async with OptimizedDataCollector("config.yaml") as collector:
    report = await collector.collect(symbols=["SOL/USDT"], start="180d")
    print(report.summary())
    frame = await collector.load_ohlcv("SOL/USDT", "1h", "2024-01-01", "2024-02-01")
```

How a run works: for each pair the coverage record says what is already stored (or known to be
empty); only the rest is planned (:mod:`data_collector.backfill.plan`) and fetched, page by page and
several pages at once, through one shared rate limiter. Fetchers put validated pages on a bounded
queue; two writer tasks drain everything waiting and write it in one transaction per drain, the
candles together with the coverage they prove. A run killed at any moment therefore leaves only
whole pages behind, and the next run fetches exactly what is missing.

Times: every ``start``/``end`` argument accepts a ``datetime`` (timezone-naive ones are taken as
UTC), a ``date``, UTC milliseconds, an ISO string or a relative form like ``"180d"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from data_collector.backfill.exchange import ExchangeClient, classify
from data_collector.backfill.monitor import CollectorMonitor, default_monitor
from data_collector.backfill.plan import BackfillPlan, Range, align_range, page_coverage, pages, plan_backfill
from data_collector.backfill.report import CollectionReport, PairReport
from data_collector.config import Config, load_config, to_ms
from data_collector.errors import (
    ClosedError,
    CollectorError,
    InvalidSymbolError,
    PermanentError,
    TransientError,
    UsageError,
)
from data_collector.markets import candle_open_ms, normalize_symbol, validate_timeframe
from data_collector.retrying import retry_policy
from data_collector.storage import open_store
from data_collector.storage.base import CandleBatch, CandleStore, CoverageRange, Gap, Instrument

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TimeLike = datetime | date | int | float | str
#: Called with the pair's report after every change (planned, page done, finished).
ProgressCallback = Callable[[PairReport], None]

PAGES_IN_FLIGHT_PER_PAIR = 8
#: Pages between their request and the write queue, over all pairs.
PAGES_IN_PROCESS = 12
WRITE_QUEUE_BATCHES = 8
WRITERS = 2
MAX_BATCHES_PER_WRITE = 8


class OptimizedDataCollector:
    """Backfills OHLCV candles from a ccxt exchange into the configured store.

    Args:
        config: a path to ``config.yaml``, a dict, a :class:`Config`, or ``None`` (``./config.yaml``
            or the defaults, plus ``DC__*`` environment overrides).
        store: a store to use instead of opening the configured one (the caller then owns it).
        progress: called with a pair's :class:`PairReport` whenever it changes.
        monitor: where request, retry, write and gap figures go; default: the process-wide
            ``utils.performance_monitor.get_default_monitor()``.
    """

    def __init__(
        self,
        config: Config | dict[str, Any] | str | None = None,
        *,
        store: CandleStore | None = None,
        progress: ProgressCallback | None = None,
        monitor: CollectorMonitor | None = None,
    ) -> None:
        self.config = load_config(config)
        self.progress = progress
        self.monitor = monitor if monitor is not None else default_monitor()
        self._store: CandleStore | None = store
        self._owns_store = store is None
        self._client: ExchangeClient | None = None
        self._initialized = False
        self._closed = False
        self._stop = asyncio.Event()
        self._instruments: dict[str, Instrument] = {}
        #: The report of the run in progress (or the last one), for live monitoring.
        self.current_report: CollectionReport | None = None

    async def __aenter__(self) -> OptimizedDataCollector:
        await self.initialize()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ready" if self._initialized else "new")
        return f"<OptimizedDataCollector exchange={self.config.exchange.id} {state}>"

    @property
    def store(self) -> CandleStore:
        self._check_open()
        if self._store is None:
            raise UsageError("call 'await collector.initialize()' first")
        return self._store

    @property
    def client(self) -> ExchangeClient:
        self._check_open()
        if self._client is None:
            raise UsageError("call 'await collector.initialize()' first")
        return self._client

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this OptimizedDataCollector is closed; create a new one")

    async def initialize(self) -> None:
        """Create the schema (idempotently), connect to the exchange and check the configuration.

        Raises:
            ServerUnavailableError: the database or the exchange cannot be reached.
            InvalidSymbolError, InvalidTimeframeError: the exchange does not list a configured
                symbol or timeframe.
        """
        self._check_open()
        if self._initialized:
            return
        opened_store = False
        try:
            if self._store is None:
                self._store = open_store(self.config)
                opened_store = True
            await self._store.initialize()
            client = ExchangeClient(self.config, monitor=self.monitor)
            self._client = client
            await client.open()
            for symbol in self.config.symbols:
                client.market(symbol)
            for timeframe in self.config.timeframes:
                client.check_timeframe(timeframe)
        except BaseException:
            # Leave nothing open behind a failed initialize; a later call may try again.
            client_, self._client = self._client, None
            if client_ is not None:
                await client_.close()
            if opened_store and self._store is not None:
                store_, self._store = self._store, None
                await store_.close()
            raise
        self._initialized = True
        log.info(
            "collector ready: exchange %s, %d markets, weight budget %s/min, %d requests/min cap",
            self.config.exchange.id,
            len(client.markets),
            client.limiter.budget or "n/a",
            client.limiter.requests_per_min,
        )

    async def close(self) -> None:
        """Close the exchange client and (if this collector opened it) the store. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self._store is not None and self._owns_store:
            await self._store.close()

    def request_stop(self) -> None:
        """Stop gracefully: no new pages are started, fetched pages are written, ``collect`` returns."""
        self._stop.set()

    async def collect_all_data_concurrent(
        self,
        symbol: str = "SOL/USDT",
        start_date: TimeLike | None = None,
        end_date: TimeLike | None = None,
        timeframes: Sequence[str] | None = None,
    ) -> CollectionReport:
        """Backfill one symbol over every configured timeframe, all concurrently.

        Args:
            symbol: e.g. ``"SOL/USDT"``.
            start_date, end_date: the range (naive datetimes are UTC); default: the config's
                ``start`` and ``end`` (now).
            timeframes: default: the config's ``timeframes``.
        """
        return await self.collect(symbols=[symbol], timeframes=timeframes, start=start_date, end=end_date)

    async def collect(
        self,
        symbols: Sequence[str] | None = None,
        timeframes: Sequence[str] | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
    ) -> CollectionReport:
        """Backfill every (symbol, timeframe) pair; fetch only what the coverage record lacks.

        At most ``performance.concurrent_symbols`` symbols are in flight at once; all timeframes
        of a symbol run concurrently, with several pages in flight each. A pair that fails for
        good (e.g. the exchange rejects it) is listed in the report and the others go on.

        Args:
            symbols: default: the config's ``symbols``.
            timeframes: default: the config's ``timeframes``.
            start, end: the range; naive datetimes are UTC. Default: the config's.

        Returns:
            The :class:`CollectionReport` of the run.

        Raises:
            UsageError: a symbol or timeframe the exchange does not know, or start after end
                (raised before anything is fetched or written).
        """
        await self.initialize()
        client = self.client
        start_ms, end_ms = self._resolve_range(start, end)
        symbol_list = [normalize_symbol(s) for s in (symbols or self.config.symbols)]
        timeframe_list = [validate_timeframe(tf) for tf in (timeframes or self.config.timeframes)]
        for symbol in symbol_list:
            client.market(symbol)
        for timeframe in timeframe_list:
            client.check_timeframe(timeframe)
        self._stop.clear()
        report = CollectionReport()
        self.current_report = report
        for symbol in symbol_list:
            for timeframe in timeframe_list:
                report.pair(symbol, timeframe)
        run = _Run(self, report, start_ms, end_ms)
        await run.execute(list(dict.fromkeys(symbol_list)), list(dict.fromkeys(timeframe_list)))
        return report

    def _resolve_range(self, start: TimeLike | None, end: TimeLike | None) -> tuple[int, int]:
        now_ms = self.client.server_now_ms()
        start_ms = to_ms(start) if start is not None else self.config.start_ms(now_ms)
        end_ms = to_ms(end) if end is not None else self.config.end_ms(now_ms)
        if start_ms >= end_ms:
            raise UsageError(f"start ({_iso(start_ms)}) must be before end ({_iso(end_ms)})")
        return start_ms, end_ms

    async def instrument(self, symbol: str) -> Instrument:
        """The stored instrument of ``symbol`` (created on first use)."""
        symbol = normalize_symbol(symbol)
        if symbol not in self._instruments:
            market = self.client.market(symbol)
            self._instruments[symbol] = await self.store.ensure_instrument(
                self.config.exchange.id,
                symbol,
                base=str(market.get("base") or symbol.split("/")[0]),
                quote=str(market.get("quote") or symbol.split("/")[1]),
                market_type=str(market.get("type") or "spot"),
            )
        return self._instruments[symbol]

    async def find_gaps(self, symbol: str, timeframe: str, start: TimeLike, end: TimeLike) -> list[Gap]:
        """Ranges of ``[start, end)`` without candles, sorted, each of one kind.

        * ``'exchange'``: fetched and confirmed empty (maintenance, before the listing); not
          fetched again.
        * ``'missing'``: never fetched (or the run stopped first); :meth:`repair_gaps` and any
          later ``collect`` fetch it.
        * ``'hole'``: recorded as fetched, yet candles are absent (lost afterwards).

        The candle still forming is not a gap. Naive datetimes are UTC.
        """
        await self.initialize()
        timeframe = validate_timeframe(timeframe)
        instrument = await self.instrument(symbol)
        end_ms = min(to_ms(end), candle_open_ms(self.client.server_now_ms(), timeframe))
        start_ms, end_ms = align_range(to_ms(start), end_ms, timeframe)
        return await self.store.find_gaps(instrument.id, timeframe, start_ms, end_ms)

    async def repair_gaps(
        self,
        symbol: str,
        timeframe: str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
    ) -> CollectionReport:
        """Fetch every ``'missing'`` and ``'hole'`` gap of ``[start, end)`` (one timeframe, or all).

        Missing ranges (no coverage) are collected as any run would; holes (covered, yet candles
        are absent) are fetched again page by page and written (rows present are skipped).
        Exchange-side gaps are not asked for again. Naive datetimes are UTC.
        """
        timeframes = [validate_timeframe(timeframe)] if timeframe is not None else None
        report = await self.collect(symbols=[symbol], timeframes=timeframes, start=start, end=end)
        start_ms, end_ms = self._resolve_range(start, end)
        instrument = await self.instrument(symbol)
        limit = self.config.exchange.ohlcv_page_limit
        for tf in timeframes or self.config.timeframes:
            pair = report.pair(instrument.symbol, tf)
            holes = [g for g in await self.find_gaps(symbol, tf, start_ms, end_ms) if g.kind == "hole"]
            report.gaps_found += len(holes)
            for gap in holes:
                aligned = align_range(gap.start_ms, gap.end_ms, tf)
                try:
                    for page in pages(aligned, tf, limit):
                        candles = await self.client.fetch_page(instrument.symbol, tf, page, limit)
                        batch = CandleBatch(instrument.id, tf, candles, page_coverage(page, candles, tf))
                        result = await self.store.write([batch])
                        report.rows_written += result.written
                        report.rows_skipped += result.skipped
                        pair.candles_fetched += len(candles)
                except Exception as exc:
                    pair.status, pair.error = "failed", str(classify(exc))
                    break
                report.gaps_repaired += 1
        return report

    async def load_ohlcv(self, symbol: str, timeframe: str, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Stored candles opening in ``[start, end)`` as a DataFrame indexed by UTC time.

        Columns: ``open, high, low, close, volume`` (float64); the index is a UTC
        ``DatetimeIndex`` named ``time`` (the candle's open time). Naive datetimes are UTC.
        """
        await self.initialize()
        timeframe = validate_timeframe(timeframe)
        instrument = await self.instrument(symbol)
        return await self.store.load_frame(instrument.id, timeframe, to_ms(start), to_ms(end))


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="seconds")


class _Run:
    """One ``collect`` call: the fetchers, the bounded write queue and the two writers."""

    def __init__(
        self, owner: OptimizedDataCollector, report: CollectionReport, start_ms: int, end_ms: int
    ) -> None:
        self.owner = owner
        self.client = owner.client
        self.store = owner.store
        self.config = owner.config
        self.report = report
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.queue: asyncio.Queue[tuple[CandleBatch, PairReport] | None] = asyncio.Queue(WRITE_QUEUE_BATCHES)
        self.symbols = asyncio.Semaphore(self.config.performance.concurrent_symbols)
        self.page_slots = asyncio.Semaphore(PAGES_IN_PROCESS)
        self.write_error: BaseException | None = None

    async def execute(self, symbols: list[str], timeframes: list[str]) -> None:
        started = time.perf_counter()
        stats0 = _snapshot(self.client)
        writers = [asyncio.create_task(self._writer(), name=f"dc-writer-{i}") for i in range(WRITERS)]
        try:
            await asyncio.gather(*(self._symbol(s, timeframes) for s in symbols))
        finally:
            for _ in writers:
                await self.queue.put(None)
            await asyncio.gather(*writers, return_exceptions=True)
            stats1 = _snapshot(self.client)
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

    async def _symbol(self, symbol: str, timeframes: list[str]) -> None:
        async with self.symbols:
            if self.owner._stop.is_set():
                for tf in timeframes:
                    self._finish(self.report.pair(symbol, tf), "stopped")
                return
            try:
                instrument = await self.owner.instrument(symbol)
                plans = {tf: await self._plan(instrument, symbol, tf) for tf in timeframes}
                if instrument.listing_ms is None and any(p.pages for p in plans.values()):
                    listing = await self.client.first_candle_ms(symbol)
                    if listing is not None:
                        await self.store.set_listing(instrument.id, listing)
                        instrument = await self._relisted(instrument, listing)
                        plans = {tf: await self._plan(instrument, symbol, tf) for tf in timeframes}
            except Exception as exc:
                error = classify(exc)
                if not isinstance(error, (PermanentError, TransientError, InvalidSymbolError)):
                    raise
                for tf in timeframes:
                    self._fail(self.report.pair(symbol, tf), error)
                return
            await asyncio.gather(*(self._pair(instrument, plans[tf]) for tf in timeframes))

    async def _relisted(self, instrument: Instrument, listing_ms: int) -> Instrument:
        updated = replace(instrument, listing_ms=listing_ms)
        self.owner._instruments[instrument.symbol] = updated
        return updated

    async def _plan(self, instrument: Instrument, symbol: str, timeframe: str) -> BackfillPlan:
        covered = await self.store.coverage(instrument.id, timeframe)
        plan = plan_backfill(
            symbol,
            timeframe,
            self.start_ms,
            self.end_ms,
            covered=covered,
            listing_ms=instrument.listing_ms,
            server_now_ms=self.client.server_now_ms(),
            limit=self.config.exchange.ohlcv_page_limit,
        )
        pair = self.report.pair(symbol, timeframe)
        pair.pages_planned = len(plan.pages)
        pair.candles_expected = plan.expected_candles
        pair.gaps_found = plan.holes
        return plan

    async def _pair(self, instrument: Instrument, plan: BackfillPlan) -> None:
        pair = self.report.pair(plan.symbol, plan.timeframe)
        pair.status = "running"
        self.report.gaps_found += plan.holes
        if plan.holes:
            self.owner.monitor.record_gaps(plan.holes)
        self._progress(pair)
        if plan.before_listing is not None:
            s, e = plan.before_listing
            batch = CandleBatch(instrument.id, plan.timeframe, [], [CoverageRange(s, e, "empty")])
            await self.queue.put((batch, pair))
        todo = list(reversed(plan.pages))
        failure: list[CollectorError] = []

        async def worker() -> None:
            while todo and not failure and not self.owner._stop.is_set() and self.write_error is None:
                # A slot covers the page from its request until it is on the write queue, so
                # pages waiting for a full queue count too: memory stays bounded.
                async with self.page_slots:
                    if not await self._page(instrument, plan, pair, todo, failure):
                        return

        await asyncio.gather(*(worker() for _ in range(min(PAGES_IN_FLIGHT_PER_PAIR, max(1, len(todo))))))
        if failure:
            self._fail(pair, failure[0])
        elif todo or self.write_error is not None:
            self._finish(pair, "stopped")
        else:
            self.report.gaps_repaired += plan.holes
            self._finish(pair, "done")

    async def _page(
        self,
        instrument: Instrument,
        plan: BackfillPlan,
        pair: PairReport,
        todo: list[Range],
        failure: list[CollectorError],
    ) -> bool:
        """Fetch one page and queue it for the writers; False when the pair must stop."""
        if not todo or failure or self.owner._stop.is_set() or self.write_error is not None:
            return False
        page = todo.pop()
        limit = self.config.exchange.ohlcv_page_limit
        fetch = asyncio.ensure_future(self.client.fetch_page(plan.symbol, plan.timeframe, page, limit))
        stopped = asyncio.ensure_future(self.owner._stop.wait())
        try:
            await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not fetch.done():
                # Stopping: a page waiting for the rate limiter is dropped, not awaited.
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
        if fetch.cancelled():
            todo.append(page)
            return False
        try:
            candles = fetch.result()
        except Exception as exc:
            failure.append(classify(exc))
            return False
        coverage = page_coverage(page, candles, plan.timeframe)
        gaps = sum(1 for c in coverage if c.kind == "empty")
        pair.exchange_gaps += gaps
        self.report.exchange_gaps += gaps
        pair.candles_fetched += len(candles)
        pair.pages_done += 1
        await self.queue.put((CandleBatch(instrument.id, plan.timeframe, candles, coverage), pair))
        self._progress(pair)
        return True

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
            while len(items) < MAX_BATCHES_PER_WRITE:
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
                await self._write([b for b, _ in items])
            except Exception as exc:
                self.write_error = (
                    exc if isinstance(exc, CollectorError) else TransientError(f"write failed: {exc}")
                )
                log.error("writing to the store failed: %s", exc)
                for _, pair in items:
                    self._fail(pair, self.write_error)

    async def _write(self, batches: list[CandleBatch]) -> None:
        timeout_s = self.config.database.command_timeout_s
        # Writes are idempotent (coverage + upsert), so the whole drain is simply written again.
        async for attempt in retry_policy(attempts=5, initial_s=0.5, max_s=5.0):
            with attempt:
                started = time.perf_counter()
                async with asyncio.timeout(timeout_s):
                    result = await self.store.write(batches)
        monitor = self.owner.monitor
        monitor.record_db_operation("WRITE", (time.perf_counter() - started) * 1000, result.written)
        monitor.set_queue_depth(self.queue.qsize())
        self.report.rows_written += result.written
        self.report.rows_skipped += result.skipped


def _snapshot(client: ExchangeClient) -> tuple[int, int, int, int, int, int]:
    s = client.stats
    return (s.requests, s.retries, s.http_429, s.http_418, s.malformed, client.limiter.stats.weight)
