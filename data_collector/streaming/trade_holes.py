"""Holes in the stored trade history, closed by the trade backfill in the background.

A hole is an id range of one symbol that the trades table lacks, found by
:class:`~data_collector.streaming.trades_store.TradeStoreSink`: a gap wider than
``streaming.repair_max_ids``, what a killed streamer had not stored, what a slow database made
the sink drop. :class:`TradeGapCloser` runs the trade backfill
(``OptimizedDataCollector.collect(data_types=["trades"])``) over the hole's time span. It is the
venue's own: its adapter's trades ``PairFetch`` (Binance's ``aggTrades`` forward by ``fromId``,
OKX's ``history-trades`` back by ``tradeId``), paced by its rate limiter (OKX: the share of
``history-trades``' 2 s window that the streamer's ``trade_job_limits`` leave it). It plans from
the id-keyed coverage and fetches exactly the ids the table lacks, a page at a time through its
bounded page slots and write queue, so memory stays bounded however long the hole. One job runs at a time, and the holes of one symbol waiting together are joined, so the
backlog is at most one hole per symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from data_collector.backoff import backoff_delay
from data_collector.errors import is_transient
from data_collector.streaming.metrics import StreamMetrics

if TYPE_CHECKING:
    from data_collector.config import Config

log = logging.getLogger(__name__)

#: Bounds of the wait before a backfill job that left its hole open is run again (a hole
#: younger than the backfill's ``SETTLE_MS``, an exchange or a database that is down).
JOB_RETRY_MIN_S = 1.0
JOB_RETRY_MAX_S = 60.0


@dataclass(slots=True)
class Hole:
    """Ids ``[first_id, end_id)`` of ``symbol`` the store lacks, between trade times ``from_ms`` and ``to_ms``."""

    symbol: str
    first_id: int
    end_id: int
    from_ms: int
    to_ms: int
    attempts: int = 0

    def join(self, other: Hole) -> None:
        self.first_id = min(self.first_id, other.first_id)
        self.end_id = max(self.end_id, other.end_id)
        self.from_ms = min(self.from_ms, other.from_ms)
        self.to_ms = max(self.to_ms, other.to_ms)


class TradeGapCloser:
    """Closes trade holes with the trade backfill, one job at a time, in the background.

    Holes of one symbol waiting together are joined into one job, so the backlog is at most one
    job per symbol. Each job is a ``collect(data_types=["trades"])`` over the hole's time span by
    an :class:`~data_collector.optimized_collector.OptimizedDataCollector` on the streamer's
    database, in a thread of its own; the job is done when the stored coverage holds the
    hole's ids.

    Args:
        config: the backfill's config (the streamer's ``database``, and its venue as
            ``exchange``, and as ``futures_exchange`` for perpetuals, so the rows get the
            streamer's instruments).
        metrics: ``trade_holes_closed`` counts the holes closed.
        retry_for_s: how long a hole is tried before it is left to a later backfill run.
    """

    def __init__(self, config: Config, metrics: StreamMetrics, *, retry_for_s: float = 3600.0) -> None:
        self._config = config
        self._metrics = metrics
        self._retry_for_s = retry_for_s
        self._waiting: dict[str, Hole] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The running job's loop and its collector's ``request_stop`` (for :meth:`close`).
        self._job_stop: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None
        #: The running (or last) job's thread, as a future of this loop.
        self._job_thread: asyncio.Future[bool] | None = None
        #: Holes closed, in order (for the report and the tests).
        self.closed: list[Hole] = []
        #: Set each time a hole is closed.
        self.closed_one = asyncio.Event()
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def submit(self, hole: Hole) -> None:
        """Queue one hole (never blocks); joined with one of its symbol still waiting."""
        if self._closed:
            return
        waiting = self._waiting.get(hole.symbol)
        if waiting is not None:
            waiting.join(hole)
        else:
            self._waiting[hole.symbol] = hole
        log.info(
            "%s: trades %d..%d are not stored; handed to the trade backfill",
            hole.symbol,
            hole.first_id,
            hole.end_id - 1,
        )
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trade-gap-closer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started: dict[str, float] = {}
        #: symbol -> when its hole may be tried again (a symbol in backoff holds no other back).
        not_before: dict[str, float] = {}
        while True:
            now = loop.time()
            ready = [s for s in self._waiting if not_before.get(s, now) <= now]
            if not ready:
                self._wake.clear()
                delay = min((not_before[s] - now for s in self._waiting), default=None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            symbol = ready[0]
            hole = self._waiting.pop(symbol)
            started.setdefault(symbol, now)
            try:
                done = await self._close(hole)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the streamer goes on; the job is tried again
                if not is_transient(exc):
                    log.warning("%s: the trade backfill of a hole failed: %s", symbol, exc)
                done = False
            if done or loop.time() - started[symbol] > self._retry_for_s:
                started.pop(symbol, None)
                not_before.pop(symbol, None)
                if done:
                    self.closed.append(hole)
                    self.closed_one.set()
                    self._metrics.trade_holes_closed += 1
                    log.info(
                        "%s: trades %d..%d stored by the backfill", symbol, hole.first_id, hole.end_id - 1
                    )
                else:
                    log.warning(
                        "%s: trades %d..%d still not stored; left to the next backfill run",
                        symbol,
                        hole.first_id,
                        hole.end_id - 1,
                    )
                continue
            # Asked again later: a hole younger than the backfill's settle time, an exchange or
            # a database that is down.
            hole.attempts += 1
            later = self._waiting.get(symbol)
            if later is not None:
                hole.join(later)
            self._waiting[symbol] = hole
            not_before[symbol] = loop.time() + backoff_delay(hole.attempts, JOB_RETRY_MIN_S, JOB_RETRY_MAX_S)

    async def _close(self, hole: Hole) -> bool:
        """One backfill run over the hole's time span; whether its ids are now all stored.

        The run has a thread and an event loop of its own (and so its own exchange client and
        database pool): ccxt's import, its markets and its pages are parsed in Python, which on
        the streamer's loop would hold the live path back for milliseconds at a time.
        """
        job = asyncio.ensure_future(asyncio.to_thread(asyncio.run, self._job(hole)))
        self._job_thread = job
        # Shielded: cancelling this task cannot stop the thread; close() waits for it instead.
        return await asyncio.shield(job)

    async def _job(self, hole: Hole) -> bool:
        from data_collector.optimized_collector import OptimizedDataCollector

        async with OptimizedDataCollector(self._config) as collector:
            self._job_stop = (asyncio.get_running_loop(), collector.request_stop)
            try:
                if self._closed:
                    return False
                start_ms = min(hole.from_ms, hole.to_ms)  # coverage times touch, never cross; be safe
                await collector.collect(
                    symbols=[hole.symbol], start=start_ms, end=hole.to_ms + 1, data_types=["trades"]
                )
                instrument = await collector.instrument(hole.symbol)
                rows = await collector.store.trade_coverage(instrument.id)
            finally:
                self._job_stop = None
        return any(r.first_id <= hole.first_id and r.end_id >= hole.end_id for r in rows)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop: a job in flight is asked to stop (its fetched pages are written) and waited for
        up to ``timeout_s``; idempotent."""
        self._closed = True
        stop = self._job_stop
        if stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has just ended
                stop[0].call_soon_threadsafe(stop[1])
        job = self._job_thread
        if job is not None and not job.done():
            await asyncio.wait({job}, timeout=timeout_s)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
