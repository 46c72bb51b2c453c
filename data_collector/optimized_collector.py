"""Historical backfill of every data type: every (symbol, series) pair concurrently, resumable, gap-aware.

```python
from data_collector.optimized_collector import OptimizedDataCollector

async with OptimizedDataCollector("config.yaml") as collector:
    report = await collector.collect(symbols=["SOL/USDT"], start="180d")
    print(report.summary())
    frame = await collector.load_ohlcv("SOL/USDT", "1h", "2024-01-01", "2024-02-01")
```

How a run works: for each pair the coverage record says what is already stored (or known to be
empty); only the rest is planned (:mod:`data_collector.backfill`) and fetched, page by page and
several pages at once, through one shared rate limiter. Fetchers put validated pages on a bounded
queue; two writer tasks drain everything waiting and write it in one transaction per drain, the
candles together with the coverage they prove. A run killed at any moment therefore leaves only
whole pages behind, and the next run fetches exactly what is missing.

Times: every ``start``/``end`` argument accepts a ``datetime`` (timezone-naive ones are taken as
UTC), a ``date``, UTC milliseconds, an ISO string or a relative form like ``"180d"``.

Long because it is the one front of every data type and both venues (spot and perpetuals): the
lifecycle, ``collect``, the gap tools and one loader per data type.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import RetryCallState

from data_collector.backfill.exchange import ExchangeClient, classify
from data_collector.backfill.monitor import CollectorMonitor, default_monitor
from data_collector.backfill.open_interest_fetch import check_open_interest_window
from data_collector.backfill.plan import (
    align_range,
    page_coverage,
    pages,
    unproven_rest,
)
from data_collector.backfill.report import CollectionReport, PairReport
from data_collector.backfill.run import BackfillRun, BackfillSettings
from data_collector.backfill.universe import Universe, exact_symbols, resolve_configured
from data_collector.backfill.venues import Venues
from data_collector.config import Config, load_config, to_ms
from data_collector.coverage import CoverageMap, build_coverage_map
from data_collector.datatypes import OPEN_INTEREST, pair_keys, validate_data_types
from data_collector.errors import (
    ClosedError,
    UsageError,
)
from data_collector.markets import (
    FUNDING_SERIES,
    PRICE_TYPES,
    candle_open_ms,
    is_perpetual_symbol,
    normalize_symbol,
    series_key,
    validate_timeframe,
)
from data_collector.retrying import retry_policy
from data_collector.storage import open_store
from data_collector.storage.archive import (
    ArchiveReport,
    ParquetArchive,
    load_ohlcv_tiers,
    load_points_tiers,
    load_trades_tiers,
)
from data_collector.storage.base import CandleBatch, Gap, Instrument
from data_collector.storage.store import CandleStore

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

T = TypeVar("T")
TimeLike = datetime | date | int | float | str
#: Called with the pair's report after every change (planned, page done, finished).
ProgressCallback = Callable[[PairReport], None]

#: Attempts of one store call (the first and the retries), and its backoff's first and longest wait:
#: about 7 s in all, enough to ride out a PostgreSQL restart or a short network blip.
STORE_ATTEMPTS = 5
STORE_BACKOFF_S = (0.5, 5.0)


class OptimizedDataCollector:
    """Backfills OHLCV candles from a ccxt exchange into the configured store.

    Args:
        config: a path to ``config.yaml``, a dict, a :class:`Config`, or ``None`` (``./config.yaml``
            or the defaults, plus ``DC__*`` environment overrides).
        store: a store to use instead of opening the configured one (the caller then owns it).
        client: an :class:`ExchangeClient` to use instead of building one from the config's
            ``exchange`` section (the caller then owns it and closes it); it is opened if it is
            not yet open. Tests pass one wrapping a stand-in exchange. Without a monitor of its
            own it reports to this collector's.
        futures_client: the same for perpetual symbols (``futures_exchange``); built and opened
            on first use otherwise.
        progress: called with a pair's :class:`PairReport` whenever it changes.
        monitor: where request, retry, write and gap figures go; default: the process-wide
            ``utils.performance_monitor.get_default_monitor()``.
    """

    def __init__(
        self,
        config: Config | dict[str, Any] | str | None = None,
        *,
        store: CandleStore | None = None,
        client: ExchangeClient | None = None,
        futures_client: ExchangeClient | None = None,
        progress: ProgressCallback | None = None,
        monitor: CollectorMonitor | None = None,
    ) -> None:
        self.config = load_config(config)
        self.backfill_settings = BackfillSettings.from_config(self.config)
        self.progress = progress
        self.monitor = monitor if monitor is not None else default_monitor()
        self._store: CandleStore | None = store
        self._owns_store = store is None
        self._given_client = client
        self._client: ExchangeClient | None = None
        self.venues = Venues(self.config, self.monitor, spot=client, futures=futures_client)
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
        return f"<OptimizedDataCollector exchange={self.config.exchange.name} {state}>"

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
            InvalidSymbolError: the exchange lists none of the configured symbols (one it does
                not list among others it does becomes a failed pair of :meth:`collect`).
            InvalidTimeframeError: the exchange does not support a configured timeframe.
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
            self._client = client = await self.venues.open_spot()
            for symbol in await self.venues.listed(exact_symbols(self.config.symbols)):
                (await self.venues.client_for(symbol)).check_page_limit(symbol)
            for timeframe in self.config.timeframes:
                client.check_timeframe(timeframe)
        except BaseException:
            # Leave nothing open behind a failed initialize; a later call may try again.
            self._client = None
            await self.venues.close()
            self.venues = Venues(
                self.config, self.monitor, spot=self._given_client, futures=self.venues.given_futures
            )
            if opened_store and self._store is not None:
                store_, self._store = self._store, None
                await store_.close()
            raise
        self._initialized = True
        log.info(
            "collector ready: exchange %s (stored as %r), %d markets, weight budget %s/min, request cap %s/min",
            self.config.exchange.id,
            self.config.exchange.name,
            len(client.markets),
            client.limiter.budget or "n/a",
            client.limiter.requests_per_min or "none",
        )

    async def close(self) -> None:
        """Close the exchange client and (if this collector opened it) the store. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._client = None
        await self.venues.close()
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
        data_types: Sequence[str] | None = None,
    ) -> CollectionReport:
        """Collect every configured data type of one symbol, all concurrently.

        OHLCV over every timeframe, trades, ... (``data_types``), as :meth:`collect` does for
        one symbol; the report gives the rows written per data type (``report.rows_by_type``).

        Args:
            symbol: e.g. ``"SOL/USDT"``.
            start_date, end_date: the range (naive datetimes are UTC); default: the config's
                ``start`` and ``end`` (now).
            timeframes: default: the config's ``timeframes``.
            data_types: default: the config's ``data_types``.
        """
        return await self.collect(
            symbols=[symbol], timeframes=timeframes, start=start_date, end=end_date, data_types=data_types
        )

    async def collect(
        self,
        symbols: Sequence[str] | None = None,
        timeframes: Sequence[str] | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        data_types: Sequence[str] | None = None,
    ) -> CollectionReport:
        """Backfill every (symbol, timeframe) pair and every other data type of every symbol;
        fetch only what the coverage record lacks.

        At most ``performance.concurrent_symbols`` symbols are in flight at once; all timeframes
        of a symbol run concurrently, with ``performance.pages_in_flight_per_pair`` pages in
        flight each, at most ``performance.pages_in_flight`` pages and
        ``performance.requests_in_flight`` requests over all pairs. A pair that fails for
        good (e.g. the exchange rejects it, or does not list its symbol) is listed in the
        report and the others go on.

        Args:
            symbols: default: the config's ``symbols``.
            timeframes: default: the config's ``timeframes``.
            start, end: the range; naive datetimes are UTC. Default: the config's.
            data_types: what to collect (:mod:`data_collector.datatypes`); default: the
                config's ``data_types``. ``ohlcv`` covers the timeframes; ``trades`` the
                aggregate trades of ``[start, end)``. A type the symbol's market does not have
                fails that pair with one line; the others go on.

        Returns:
            The :class:`CollectionReport` of the run.

        Raises:
            UsageError: none of the symbols listed by the exchange, a timeframe it does not
                know, start after end, or open interest asked for beyond the exchange's 30 days
                (raised before anything is fetched or written).
        """
        symbol_list = (await self.resolve_symbols(symbols)).symbols  # initializes first
        start_ms, end_ms = self._resolve_range(start, end)
        client = self.client
        timeframe_list = [validate_timeframe(tf) for tf in (timeframes or self.config.timeframes)]
        type_list = validate_data_types(data_types or self.config.data_types)
        for symbol in await self.venues.listed(symbol_list):
            (await self.venues.client_for(symbol)).check_page_limit(symbol)
        for timeframe in timeframe_list:
            client.check_timeframe(timeframe)
        if OPEN_INTEREST in type_list and any(is_perpetual_symbol(s) for s in symbol_list):
            futures = await self.venues.open_futures()
            check_open_interest_window(start_ms, futures.server_now_ms())
        self._stop.clear()
        report = CollectionReport()
        self.current_report = report
        keys = pair_keys(timeframe_list, type_list)
        for symbol in symbol_list:
            for key in keys:
                report.pair(symbol, key)
        run = BackfillRun(self, self.backfill_settings, report, start_ms, end_ms)
        await run.execute(list(dict.fromkeys(symbol_list)), list(dict.fromkeys(timeframe_list)), type_list)
        return report

    async def resolve_symbols(self, symbols: Sequence[str] | None = None) -> Universe:
        """``symbols`` (default: the config's) resolved now, patterns too: universe.resolve_universe."""
        await self.initialize()
        return await resolve_configured(self.venues.client_for, self.config, symbols)

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
            market = (await self.client_for(symbol)).market(symbol)
            # The venue label, not the ccxt id: rows (and hence coverage) of the simulator
            # ('sim-binance') or of another venue are other instruments, never trusted here.
            self._instruments[symbol] = await self._store_call(
                partial(
                    self.store.ensure_instrument,
                    self.venues.label(symbol),
                    symbol,
                    base=str(market.get("base") or symbol.split("/")[0]),
                    quote=str(market.get("quote") or symbol.split("/")[1]),
                    market_type=str(market.get("type") or "spot"),
                )
            )
        return self._instruments[symbol]

    async def client_for(self, symbol: str) -> ExchangeClient:
        """The exchange client of ``symbol``'s venue: spot, or the futures one for ``BASE/QUOTE:SETTLE``."""
        self._check_open()
        return await self.venues.client_for(symbol)

    def open_clients(self) -> list[ExchangeClient]:
        """The venues' clients open now."""
        return self.venues.opened()

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
        now_ms = (await self.client_for(instrument.symbol)).server_now_ms()
        end_ms = min(to_ms(end), candle_open_ms(now_ms, timeframe))
        start_ms, end_ms = align_range(to_ms(start), end_ms, timeframe)
        return await self._store_call(
            partial(self.store.find_gaps, instrument.id, timeframe, start_ms, end_ms)
        )

    async def coverage_map(
        self, symbols: Sequence[str] | None = None, *, since: TimeLike | None = None, **options: Any
    ) -> CoverageMap:
        """The coverage map of this venue (``exchange.name``): one row per (symbol, data type,
        timeframe), cells coloured stored / exchange-side gap / missing / hole. Shows itself in
        Jupyter; ``.save_png()``, ``.save_html()``, ``.summary()``. ``options``: ``timeframes``,
        ``until``, ``cell``, ``check_holes`` of :func:`data_collector.coverage.build_coverage_map`.
        """
        await self.initialize()
        venues = [self.config.exchange.name]
        return await build_coverage_map(self.store, venues, symbols=symbols, since=since, **options)

    async def repair_gaps(
        self,
        symbol: str,
        timeframe: str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        *,
        restore: bool = False,
    ) -> CollectionReport:
        """Fetch every ``'missing'`` and ``'hole'`` gap of ``[start, end)`` (one timeframe, or all).

        Missing ranges (no coverage) are collected as any run would; holes (covered, yet candles
        are absent) are fetched again page by page and written (rows present are skipped).
        Exchange-side gaps are not asked for again. Naive datetimes are UTC. ``restore``: first
        copy the ``'archived'`` ranges (of every price type) back from the Parquet tier into the database (coverage
        ``'data'`` again; counted in ``rows_written``; the files stay, and a later ``archive
        --prune`` moves them out again); without it archived ranges count as stored.
        """
        timeframes = [validate_timeframe(timeframe)] if timeframe is not None else None
        await self.initialize()
        start_ms, end_ms = self._resolve_range(start, end)
        restored = 0
        if restore:
            archive, instrument = ParquetArchive.from_config(self.config), await self.instrument(symbol)
            # Every price type (a perpetual's mark, index and premium candles too): a series
            # without archived ranges costs one coverage query.
            for tf in timeframes or self.config.timeframes:
                for price in PRICE_TYPES:
                    key = series_key(tf, price)
                    restore_tf = partial(archive.restore_ohlcv, self.store, instrument, key, start_ms, end_ms)
                    restored += await self._store_call(restore_tf)
        report = await self.collect(symbols=[symbol], timeframes=timeframes, start=start, end=end)
        report.rows_written += restored
        instrument = await self.instrument(symbol)
        client = await self.client_for(instrument.symbol)
        limit = client.settings.ohlcv_page_limit if client.futures else self.config.exchange.ohlcv_page_limit
        for tf in timeframes or self.config.timeframes:
            pair = report.pair(instrument.symbol, tf)
            holes = [g for g in await self.find_gaps(symbol, tf, start_ms, end_ms) if g.kind == "hole"]
            report.gaps_found += len(holes)
            for gap in holes:
                aligned = align_range(gap.start_ms, gap.end_ms, tf)
                todo = pages(aligned, tf, limit)
                try:
                    while todo:
                        page = todo.pop(0)
                        candles = await client.fetch_page(instrument.symbol, tf, page, limit)
                        coverage = page_coverage(page, candles, tf, cap=client.most_candles_seen)
                        rest = unproven_rest(page, coverage)
                        if rest is not None:
                            todo[:0] = pages(rest, tf, limit)
                        batch = CandleBatch(instrument.id, tf, candles, coverage)
                        result = await self._store_call(partial(self.store.write, [batch]))
                        report.rows_written += result.written
                        report.rows_skipped += result.skipped
                        pair.candles_fetched += len(candles)
                except Exception as exc:
                    pair.status, pair.error = "failed", str(classify(exc))
                    break
                report.gaps_repaired += 1
        return report

    async def load_ohlcv(
        self, symbol: str, timeframe: str, start: TimeLike, end: TimeLike, price: str = "last"
    ) -> pd.DataFrame:
        """Stored candles opening in ``[start, end)`` as a DataFrame indexed by UTC time.

        Columns: ``open, high, low, close, volume`` (float64); the index is a UTC
        ``DatetimeIndex`` named ``time`` (the candle's open time). Naive datetimes are UTC.
        ``price``: ``last`` (traded), or for a perpetual ``mark``, ``index`` or ``premium``.
        Archived months (every price type) are read from the Parquet tier (``archive.path``).
        """
        await self.initialize()
        key = series_key(timeframe, price)
        instrument = await self.instrument(symbol)
        archive = ParquetArchive.from_config(self.config)
        load = partial(load_ohlcv_tiers, self.store, archive, instrument, key, to_ms(start), to_ms(end))
        return await self._store_call(load)

    async def archive(self, older_than: TimeLike | None = None, *, prune: bool = False) -> ArchiveReport:
        """Move closed months before ``older_than`` to Parquet, verified; ``prune`` drops them (storage.archive)."""
        await self.initialize()
        cutoff = to_ms(older_than or self.config.archive.older_than)
        archive = ParquetArchive.from_config(self.config)
        return await archive.archive(self.store, self.archive_venues(), cutoff, prune=prune)

    def archive_venues(self) -> list[str]:
        """The venue labels :meth:`archive` moves: the spot venue's and the perpetual venue's."""
        return list(dict.fromkeys([self.config.exchange.name, self.config.futures_venue().name]))

    async def load_funding(self, symbol: str, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Stored funding rates of the perpetual ``symbol`` settled in ``[start, end)``.

        Columns: ``rate``, ``mark_price`` (float64); indexed by the UTC funding time (``time``).
        Archived months are read from the Parquet tier.
        """
        await self.initialize()
        instrument, archive = await self.instrument(symbol), ParquetArchive.from_config(self.config)
        load = partial(
            load_points_tiers, self.store, archive, instrument, FUNDING_SERIES, to_ms(start), to_ms(end)
        )
        return await self._store_call(load)

    async def load_trades(self, symbol: str, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Stored aggregate trades of ``[start, end)`` as a DataFrame indexed by UTC time.

        Columns: ``id`` (the aggregate trade id), ``price``, ``qty``, ``first_trade_id``,
        ``last_trade_id``, ``buyer_maker``; the index is a UTC ``DatetimeIndex`` named ``time``
        (the trade's time), in id order. Naive datetimes are UTC. Archived months come from Parquet.
        """
        await self.initialize()
        instrument, archive = await self.instrument(symbol), ParquetArchive.from_config(self.config)
        load = partial(load_trades_tiers, self.store, archive, instrument, to_ms(start), to_ms(end))
        return await self._store_call(load)

    async def load_open_interest(
        self, symbol: str, period: str, start: TimeLike, end: TimeLike
    ) -> pd.DataFrame:
        """Stored open interest of the perpetual ``symbol`` at ``period`` (``5m`` … ``1d``) in
        ``[start, end)``: columns ``amount`` and ``value`` (float64), indexed by UTC time.
        Archived months are read from the Parquet tier."""
        await self.initialize()
        instrument, archive = await self.instrument(symbol), ParquetArchive.from_config(self.config)
        key = series_key(period, "oi")
        load = partial(load_points_tiers, self.store, archive, instrument, key, to_ms(start), to_ms(end))
        return await self._store_call(load)

    async def _store_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one store call under ``database.command_timeout_s``, retrying transient failures.

        The one policy of every store call the collector makes, reads and writes alike: each is
        safe to repeat (reads; upserts; writes that carry their coverage), so a dropped or refused
        connection or a timeout is tried again with backoff, while a permanent error (a missing
        table, a refused login) is raised at once. After the last attempt the last error is raised.
        """
        timeout_s = self.config.database.command_timeout_s
        initial_s, max_s = STORE_BACKOFF_S
        async for attempt in retry_policy(
            attempts=STORE_ATTEMPTS, initial_s=initial_s, max_s=max_s, on_retry=_log_store_retry
        ):
            with attempt:
                async with asyncio.timeout(timeout_s):
                    return await call()
        raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover


def _log_store_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    attempt, wait_s = state.attempt_number + 1, state.upcoming_sleep
    log.warning(
        "a store call failed (%s); attempt %d of %d in %.1f s", error, attempt, STORE_ATTEMPTS, wait_s
    )


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="seconds")
