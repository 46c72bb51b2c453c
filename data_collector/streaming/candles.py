"""Closed klines from the stream (and the REST repair), and settled funding rates, into the store.

The live stream then extends the backfilled history with no seam: a closed kline equals the REST
one, a settled funding rate is the ``fundingRate`` row the backfill stores (see
:mod:`.funding`), and the store's writes are idempotent. The storage package is imported only when a store is
actually used, so a Redis-only streamer never loads SQLAlchemy or a database driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from data_collector.backoff import backoff_delay
from data_collector.errors import is_transient
from data_collector.markets import next_open_ms
from data_collector.streaming.metrics import StreamMetrics

if TYPE_CHECKING:
    from data_collector.storage.store import StoreSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Closed candles waiting for the store; past this the oldest are dropped (and counted).
QUEUE_MAX = 50_000
#: Bounds of the wait between attempts at a write that failed transiently.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0

#: ``(symbol, timeframe, (open_ms, open, high, low, close, volume))``
PendingCandle = tuple[str, str, tuple[int, float, float, float, float, float]]


class StoreRetry:
    """The streamer's one policy for a store write that fails: a transient failure (the database
    down or slow) is retried with backoff, counted in ``store_errors`` and logged once until a
    write goes through again; anything else is raised (the caller gives up on its sink)."""

    def __init__(self, what: str, metrics: StreamMetrics) -> None:
        self._what = what
        self._metrics = metrics
        self._failures = 0

    async def until_stored(self, write: Callable[[], Awaitable[T]]) -> T:
        """``write()`` until it goes through (it must be idempotent)."""
        while True:
            try:
                result = await write()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._failures += 1
                self._metrics.store_errors += 1
                if self._failures == 1:
                    log.warning("cannot store %s (%s); retrying with backoff", self._what, exc)
                await asyncio.sleep(backoff_delay(self._failures, RETRY_MIN_S, RETRY_MAX_S))
                continue
            if self._failures:
                log.info("%s are stored again", self._what)
            self._failures = 0
            return result


class PendingFunding(NamedTuple):
    """Settled funding rates ``(ts, rate, mark_price)`` of one symbol, and the span they prove whole."""

    symbol: str
    rates: list[tuple[int, float, float | None]]
    span: tuple[int, int]


class CandleSink:
    """Writes closed candles (and settled funding rates) through a
    :class:`~data_collector.storage.base.CandleStore`.

    Give it an open ``store`` (the caller keeps owning it), or the ``store_settings`` from which
    it opens (and then owns) one with ``data_collector.storage.open_store``.
    """

    def __init__(
        self,
        exchange: str,
        metrics: StreamMetrics,
        *,
        store: Any = None,
        store_settings: StoreSettings | None = None,
        market_type: str = "spot",
    ) -> None:
        self._exchange = exchange
        #: ``spot``, or ``swap`` for perpetuals (``BTC/USDT:USDT``): the instruments' market type.
        self._market_type = market_type
        self._metrics = metrics
        self._store = store
        self._owns_store = store is None
        self._store_settings = store_settings
        self._queue: asyncio.Queue[PendingCandle | PendingFunding] = asyncio.Queue(maxsize=QUEUE_MAX)
        self._instrument_ids: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        #: One store, however many sinks (candles, trades) ask for it at once.
        self._open_lock = asyncio.Lock()
        self._retry = StoreRetry("closed candles", metrics)
        #: The permanent error that stopped the sink; from then on candles are counted, not kept.
        self.failed: BaseException | None = None
        #: The permanent error with which the store refused funding rates; from then on they are
        #: counted, not kept (the candles go on).
        self.funding_failed: BaseException | None = None

    def submit(
        self, symbol: str, timeframe: str, candle: tuple[int, float, float, float, float, float]
    ) -> None:
        """Queue one closed candle (non-blocking)."""
        self._put((symbol, timeframe, candle))

    def submit_funding(self, pending: PendingFunding) -> None:
        """Queue settled funding rates with their coverage (non-blocking)."""
        self._put(pending)

    def _put(self, item: PendingCandle | PendingFunding) -> None:
        if self.failed is not None or (isinstance(item, PendingFunding) and self.funding_failed is not None):
            self._metrics.store_errors += 1
            return
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()
            self._metrics.store_errors += 1
        self._queue.put_nowait(item)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _open(self) -> Any:
        async with self._open_lock:
            return await self._open_once()

    async def _open_once(self) -> Any:
        if self._store is None:
            from data_collector.storage import open_store  # type: ignore[attr-defined,unused-ignore]

            store = open_store(self._store_settings)
            if inspect.isawaitable(store):
                store = await store
            try:
                await store.initialize()
            except BaseException:
                await store.close()
                raise
            self._store = store
        return self._store

    async def store(self) -> Any:
        """The open store (opened on first use): the trades sink writes through it too."""
        return await self._open()

    async def instrument_id(self, symbol: str) -> int:
        """The stored instrument id of ``symbol`` (created on first use)."""
        return await self._instrument_id(await self._open(), symbol)

    async def _instrument_id(self, store: Any, symbol: str) -> int:
        if symbol not in self._instrument_ids:
            base, _, quote = symbol.partition(":")[0].partition("/")
            instrument = await store.ensure_instrument(
                self._exchange, symbol, base=base, quote=quote, market_type=self._market_type
            )
            self._instrument_ids[symbol] = instrument.id
        return self._instrument_ids[symbol]

    async def _run(self) -> None:
        while self.failed is None:
            first = await self._queue.get()
            items = [first]
            while not self._queue.empty() and len(items) < 5000:
                items.append(self._queue.get_nowait())
            try:
                # The same candles are retried until the store takes them (the write is
                # idempotent); meanwhile the bounded queue drops its oldest, counted.
                try:
                    funding = await self._retry.until_stored(partial(self._write, items))
                except Exception as exc:  # refused for good (or a bug): the stream goes on
                    self._give_up(exc, len(items))
                else:
                    self._metrics.funding_stored += funding
                    self._metrics.candles_stored += sum(1 for i in items if not isinstance(i, PendingFunding))
            finally:
                for _ in items:
                    self._queue.task_done()

    def _give_up(self, exc: BaseException, in_hand: int) -> None:
        """A permanent refusal (or a bug): retrying cannot help, so stop, count and say it once."""
        self.failed = exc
        dropped = in_hand
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            dropped += 1
        self._metrics.store_errors += dropped
        log.error(
            "closed candles can no longer be stored (%s): %d dropped, later ones are counted in "
            "store_errors; the Redis streams go on, and the backfill fills the candle store",
            exc,
            dropped,
        )

    def _refuse_funding(self, exc: BaseException, in_hand: int) -> None:
        """The store refuses funding rates for good: count them from now on, keep the candles."""
        self.funding_failed = exc
        self._metrics.store_errors += in_hand
        log.error(
            "settled funding rates can no longer be stored (%s): %d dropped, later ones are counted "
            "in store_errors; closed candles are still stored, and the backfill's funding_rates "
            "fills the funding table",
            exc,
            in_hand,
        )

    async def _write(self, items: list[PendingCandle | PendingFunding]) -> int:
        """Write the candles, then the funding rates, of ``items``; how many funding rates were stored."""
        from data_collector.storage.base import CandleBatch, CoverageRange
        from data_collector.storage.funding import FundingBatch

        store = await self._open()
        groups: dict[tuple[str, str], list[tuple[int, float, float, float, float, float]]] = {}
        funding = []
        for item in items:
            if isinstance(item, PendingFunding):
                iid = await self._instrument_id(store, item.symbol)
                funding.append(FundingBatch(iid, item.rates, [item.span]))
            else:
                symbol, timeframe, candle = item
                groups.setdefault((symbol, timeframe), []).append(candle)
        batches = []
        for (symbol, timeframe), candles in groups.items():
            candles = sorted({c[0]: c for c in candles}.values())
            batches.append(
                CandleBatch(
                    instrument_id=await self._instrument_id(store, symbol),
                    timeframe=timeframe,
                    candles=candles,
                    coverage=[CoverageRange(c[0], next_open_ms(c[0], timeframe), "data") for c in candles],
                    final=True,
                )
            )
        if batches:
            await store.write(batches)
        if not funding or self.funding_failed is not None:
            return 0
        try:
            # The table and coverage the backfill's funding_rates writes (one row per settlement).
            await store.write_funding(funding)
        except Exception as exc:
            if is_transient(exc):
                raise
            self._refuse_funding(exc, sum(len(b.rates) for b in funding))
            return 0
        return sum(len(b.rates) for b in funding)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (bounded by ``timeout_s``), stop, close an owned store; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._queue.join()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._owns_store and self._store is not None:
            store, self._store = self._store, None
            await store.close()
