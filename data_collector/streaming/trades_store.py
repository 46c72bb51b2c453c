"""Live trades into the ``trades`` table, and the holes in it closed by the trade backfill.

The streamer's trades of its venue's :attr:`~data_collector.venues.stream.StreamVenue.stored_trades`
channel (Binance's aggTrades, spot and USDⓈ-M, by aggregate-trade id; OKX's ``trade``, spot and
swaps, by ``tradeId``) go through the store's own ``write_trades``: the
idempotent COPY path with coverage by id that the trade backfill writes (:mod:`data_collector.storage.trades`).
Each write takes what is queued (at most ``write_max`` trades), cuts every symbol's trades into
runs of contiguous ids, and stores each run ``[a, b]`` with the coverage it proves,
``(a, b + 1, T(a) + 1, T(b))`` (ids below ``a`` came before ``T(a) + 1``, ids past ``b`` at or
after ``T(b)``: the claims of :func:`~data_collector.backfill.trades_plan.trade_page_coverage`).
Runs that follow each other merge into one coverage row, so an unbroken stream leaves one row,
and a row that ends where the backfill's began (or the other way round) joins it: no seam.

The Redis write path never waits for this: :meth:`TradeStoreSink.submit` only appends to a
bounded queue. A slow or unreachable database keeps the queue filling while the same write is
retried (with backoff); past ``queue_max`` new trades are dropped and counted
(``trades_store_dropped``), and their ids are left without coverage. Nothing is lost for good:
every id range the store lacks is a *hole* the sink sees, and closes.

Holes. For each symbol the sink keeps the id after the newest one it stored (its *frontier*);
the first write of a symbol reads it from the stored coverage (what a backfill, or a previous
streamer that was killed, left), and the holes between the stored rows of the last
:data:`LOOKBACK_MS` (what a killed run left open) are holes too. A run that starts past the
frontier leaves the hole ``[frontier, a)``. The parts of it that the streamer's REST repair
fetches anyway (a sequence, reconnect or restart gap of at most ``streaming.repair_max_ids``,
announced with :meth:`TradeStoreSink.expect_repair`) come back through
:meth:`TradeStoreSink.submit` like live trades; one that the sink drops (its queue full) makes
the rest of its repair's ids a hole, even when the live trades past them are stored already. The
rest (a wider gap, what a killed streamer had not stored yet, what was dropped here) goes to the
trade backfill
(:class:`~data_collector.streaming.trade_holes.TradeGapCloser`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from data_collector.errors import UsageError
from data_collector.streaming.candles import CandleSink, StoreRetry
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import Event
from data_collector.streaming.trade_holes import Hole, TradeGapCloser

if TYPE_CHECKING:
    from data_collector.config import Config
    from data_collector.storage.trades import Trade, TradeCoverage
    from data_collector.venues.stream import StreamVenue

log = logging.getLogger(__name__)

StoreAccess = Callable[[], Awaitable[Any]]
InstrumentId = Callable[[str], Awaitable[int]]

#: How far back a starting streamer looks for holes between the stored coverage rows (what a
#: killed run left open); older ones are the trade backfill's to find.
LOOKBACK_MS = 24 * 3_600_000
#: Trades per write at most. A write's preparation (runs, coverage, ``prepare_trades``; the COPY
#: then encodes the records) runs on the streamer's loop, between Redis batches: 2,000 trades took
#: 1-10 ms of it, 20,000 took 17-94 ms (a few runs at load 8 on 2 shared cores), which would show
#: in the live event->Redis latency. Smaller writes cost more transactions: a few a second at 10k
#: trades/s.
WRITE_MAX = 2_000
#: ``(symbol, trade)``: what waits for the store.
Pending = tuple[str, "Trade"]


def event_trade(event: Event) -> Trade:
    """The stored row of one normalised trade event (the backfill's :data:`Trade` shape): an
    aggTrade's first and last single-trade ids, a single trade's (OKX) own id for both; the buyer
    is the maker when the taker sold."""
    trade_id = int(event["id"])
    return (
        trade_id,
        int(event["trade_ms"]),
        float(event["price"]),
        float(event["amount"]),
        int(event.get("first_id", trade_id)),
        int(event.get("last_id", trade_id)),
        event["side"] == "sell",
    )


def id_runs(trades: list[Trade]) -> list[list[Trade]]:
    """``trades`` sorted by id, each id once, cut where an id is missing."""
    unique = sorted({t[0]: t for t in trades}.values())
    runs: list[list[Trade]] = []
    for t in unique:
        if runs and t[0] == runs[-1][-1][0] + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def run_coverage(run: list[Trade]) -> TradeCoverage:
    """What a run of contiguous ids proves (see the module's docstring)."""
    from data_collector.storage.trades import TradeCoverage

    first, last = run[0], run[-1]
    end_ms = last[1]
    return TradeCoverage(first[0], last[0] + 1, min(first[1] + 1, end_ms), end_ms)


def subtract_ids(first: int, end: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[first, end)`` less the ``[a, b)`` ranges of ``taken``."""
    out: list[tuple[int, int]] = []
    cursor = first
    for a, b in sorted(taken):
        if b <= cursor or a >= end:
            continue
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end:
        out.append((cursor, end))
    return out


@dataclass(frozen=True, slots=True)
class _Repair:
    """Ids ``[first_id, end_id)`` the REST repair fetches, traded between ``from_ms`` and ``to_ms``."""

    first_id: int
    end_id: int
    from_ms: int
    to_ms: int


@dataclass(slots=True)
class _Frontier:
    next_id: int
    last_ms: int
    #: Id ranges ``[a, b)`` the REST repair is fetching (they come back through ``submit``).
    repairing: list[tuple[int, int]] = field(default_factory=list)


class TradeStoreSink:
    """Writes the streamed trades to the trades table and hands its holes to a :class:`TradeGapCloser`.

    Args:
        store: the open store (the candle sink's: one pool for candles, funding and trades).
        instrument_id: the instrument id of a symbol in that store.
        metrics: ``trades_stored``, ``trades_store_dropped`` and ``store_errors`` are counted here.
        closer: where the holes go; ``None``: they stay without coverage (a later backfill run
            fetches them).
        queue_max: trades waiting for the store at most; past it new ones are dropped (and
            become a hole).
        write_max: trades per write at most.
    """

    def __init__(
        self,
        store: StoreAccess,
        instrument_id: InstrumentId,
        metrics: StreamMetrics,
        closer: TradeGapCloser | None,
        *,
        queue_max: int = 200_000,
        write_max: int = WRITE_MAX,
    ) -> None:
        self._store = store
        self._instrument_id = instrument_id
        self._metrics = metrics
        self.closer = closer
        self._queue_max = queue_max
        self._write_max = write_max
        self._queue: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._frontiers: dict[str, _Frontier] = {}
        self._repairing: dict[str, list[_Repair]] = {}
        self._task: asyncio.Task[None] | None = None
        self._retry = StoreRetry("streamed trades", metrics)
        #: The permanent error that stopped the sink (trades are then left to the backfill).
        self.failed: BaseException | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(self, symbol: str, event: Event) -> None:
        """Queue one trade event, live or repaired (never blocks)."""
        if self.failed is not None or len(self._queue) >= self._queue_max:
            self._metrics.trades_store_dropped += 1
            if self.failed is None and event.get("repaired"):
                self._repair_dropped(symbol, event)
            return
        try:
            trade = event_trade(event)
        except (KeyError, TypeError, ValueError):
            self._metrics.store_errors += 1
            return
        self._queue.append((symbol, trade))
        self._idle.clear()
        self._wake.set()

    def expect_repair(self, symbol: str, first_id: int, last_id: int, from_ms: int, to_ms: int) -> None:
        """The REST repair fetches ids ``first_id..last_id`` of ``symbol`` (traded between
        ``from_ms`` and ``to_ms``): no job for them, unless this sink drops them."""
        ranges = self._repairing.setdefault(symbol, [])
        ranges.append(_Repair(first_id, last_id + 1, from_ms, to_ms))
        if len(ranges) > 1000:  # bounded: the oldest are long repaired (or left to the backfill)
            del ranges[:-1000]

    def _repair_dropped(self, symbol: str, event: Event) -> None:
        """A repaired trade dropped (the queue full): the rest of its repair's ids are a hole
        (a hole that ends past them no longer leaves them out), whether or not the frontier has
        passed them already. Once per repair: the range is cut where the first drop was."""
        try:
            trade_id = int(event["id"])
        except (KeyError, TypeError, ValueError):
            return
        ranges = self._repairing.get(symbol, [])
        for i in range(len(ranges) - 1, -1, -1):  # the newest first: a repair is recent
            r = ranges[i]
            if r.first_id <= trade_id < r.end_id:
                if trade_id > r.first_id:
                    ranges[i] = _Repair(r.first_id, trade_id, r.from_ms, r.to_ms)
                else:
                    del ranges[i]
                if self.closer is not None:
                    self.closer.submit(Hole(symbol, trade_id, r.end_id, r.from_ms, r.to_ms))
                return

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trades-store")

    async def _run(self) -> None:
        while self.failed is None:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            count = min(len(self._queue), self._write_max)
            items = [self._queue.popleft() for _ in range(count)]
            # The same trades are retried until the store takes them (the write is idempotent);
            # meanwhile new ones queue up to ``queue_max``, and past it are dropped (a hole).
            try:
                await self._retry.until_stored(partial(self._write, items))
            except Exception as exc:  # refused for good (or a bug): the stream goes on
                self._give_up(exc, len(items))
        self._idle.set()

    def _give_up(self, exc: BaseException, in_hand: int) -> None:
        self.failed = exc
        dropped = in_hand + len(self._queue)
        self._queue.clear()
        self._metrics.trades_store_dropped += dropped
        log.error(
            "streamed trades can no longer be stored (%s): %d dropped; the Redis streams go on, "
            "and the trade backfill fills the trades table",
            exc,
            dropped,
        )

    async def _write(self, items: list[Pending]) -> None:
        from data_collector.storage.trades import TradeBatch

        by_symbol: dict[str, list[Trade]] = {}
        for symbol, trade in items:
            by_symbol.setdefault(symbol, []).append(trade)
        store = await self._store()
        batches: list[TradeBatch] = []
        plans: list[tuple[str, list[list[Trade]]]] = []
        for symbol, trades in by_symbol.items():
            iid = await self._instrument_id(symbol)
            runs = id_runs(trades)
            if symbol not in self._frontiers:
                self._frontiers[symbol] = await self._stored_frontier(store, symbol, iid, runs[0][0])
            batches.extend(TradeBatch(iid, run, [run_coverage(run)]) for run in runs)
            plans.append((symbol, runs))
        result = await store.write_trades(batches)
        self._metrics.trades_stored += result.written
        for symbol, runs in plans:
            self._advance(symbol, runs)

    async def _stored_frontier(self, store: Any, symbol: str, iid: int, first: Trade) -> _Frontier:
        """Where the stored history before ``first`` ends (a backfill's, a previous run's); the
        holes between its rows of the last :data:`LOOKBACK_MS` (a previous run killed before
        its holes were closed) go to the closer."""
        rows: list[TradeCoverage] = await store.trade_coverage(iid)
        before = [r for r in rows if r.first_id <= first[0]]
        if not before:
            return _Frontier(first[0], first[1])  # nothing stored before: nothing to join
        for a, b in zip(before, before[1:], strict=False):
            if b.first_id > a.end_id and b.start_ms >= first[1] - LOOKBACK_MS:
                self._hole(symbol, a.end_id, b.first_id, a.end_ms, b.start_ms)
        last = max(before, key=lambda r: r.end_id)
        return _Frontier(last.end_id, last.end_ms)

    def _advance(self, symbol: str, runs: list[list[Trade]]) -> None:
        """Move the frontier over the runs just stored; what they skip is a hole."""
        frontier = self._frontiers[symbol]
        for run in runs:
            first, last = run[0], run[-1]
            if first[0] > frontier.next_id:
                self._hole(symbol, frontier.next_id, first[0], frontier.last_ms, first[1])
            if last[0] + 1 > frontier.next_id:
                frontier.next_id, frontier.last_ms = last[0] + 1, last[1]

    def _hole(self, symbol: str, first_id: int, end_id: int, from_ms: int, to_ms: int) -> None:
        # The repairs' ranges stay (bounded) after the frontier passes them: their trades come
        # later than the live ones past them, and one dropped then is a hole of its own.
        rest = subtract_ids(
            first_id, end_id, [(r.first_id, r.end_id) for r in self._repairing.get(symbol, [])]
        )
        if self.closer is None:
            return
        for a, b in rest:
            self.closer.submit(Hole(symbol, a, b, from_ms, to_ms))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (bounded by ``timeout_s``), then stop; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.closer is not None:
            await self.closer.close()


def check_store_trades(venue: StreamVenue, channels: list[str], has_database: bool) -> None:
    """Refuse, in one line, a ``store_trades`` the streamer cannot honour (the trade backfill job
    that closes the holes connects to the config's ``database`` itself)."""
    if venue.stored_trades is None:
        raise UsageError(
            f"streaming.store_trades needs trades with contiguous ids, which exchange.id "
            f"{venue.protocol!r} does not stream: use binance, binanceusdm or okx (native adapter)"
        )
    if venue.stored_trades not in channels:
        raise UsageError(
            f"streaming.store_trades stores the {venue.stored_trades} channel's trades: "
            f"add {venue.stored_trades} to streaming.channels"
        )
    if not has_database:
        raise UsageError("streaming.store_trades needs a database section in the config")


def trade_store_sink(
    config: Config,
    stream: StreamVenue,
    exchange: str,
    symbols: list[str],
    market_type: str,
    sink: CandleSink,
    metrics: StreamMetrics,
) -> TradeStoreSink:
    """The trades sink of a streamer on ``stream``: writing through ``sink``'s store, its holes
    closed by the trade backfill of the streamer's venue (its adapter's trades ``PairFetch``),
    labelled ``exchange`` so both write the same instruments, and paced by the venue's
    ``trade_job_limits`` so that it and the live REST repair stay inside the venue's limits."""
    from data_collector.venues import adapter_for

    st = config.streaming
    limits = dict(config.exchange.endpoint_limits)
    for endpoint, n in stream.trade_job_limits.items():
        limits[endpoint] = min(n, limits.get(endpoint, n))
    venue = config.exchange.model_copy(update={"name": exchange, "endpoint_limits": limits})
    backfill = config.model_copy(deep=True)
    backfill.exchange = venue
    # One client for spot and swaps (OKX) needs no futures section; Binance's perpetuals do.
    separate = market_type == "swap" and not adapter_for(config.exchange.id).one_client
    backfill.futures_exchange = venue if separate else None
    backfill.venues = []
    backfill.symbols = list(symbols)
    backfill.data_types = ["trades"]
    closer = TradeGapCloser(backfill, metrics)
    return TradeStoreSink(sink.store, sink.instrument_id, metrics, closer, queue_max=st.store_trades_queue)
