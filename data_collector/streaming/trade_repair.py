"""Exact repair of lost trades: the ids a gap marker names, fetched back over REST.

Trade and aggregate-trade ids are contiguous per symbol and REST serves them by id
(``<api>/aggTrades?fromId=``, ``<api>/historicalTrades?fromId=``), so a ``sequence``,
``reconnect`` or ``restart`` marker with ``first_seq``..``last_seq`` says exactly what to fetch.
The repaired trades are written with the entry ids they would have had (``<trade ms>-<id>``) into
a companion stream, ``<p>:stream:<ex>:<channel>@repair:<sym>`` (``aggTrade@repair``,
``trade@repair``): Redis
refuses an explicit id older than a stream's top, and the live stream has moved on by the time the
repair arrives. Holding the live tail until the repair lands would make live writes wait behind
REST; the companion stream never does, and ``MarketDataReader`` (``range``, ``last``, ``tail``)
merges both by entry id.
When a gap is repaired a ``repaired`` marker follows (same ``first_seq``/``last_seq``, and
``repaired``: how many trades were written).

Low priority: one job at a time, one request at a time, each a background request of the REST
client's :class:`~data_collector.streaming.rest.RequestGate` (sent only while no live request
such as a depth snapshot waits, within a weight budget), pages handed to the writer only while its
buffer is nearly empty, so live entries never queue behind a repair. Gaps wider than
``max_ids`` are left to the trade backfill (their markers stay open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from data_collector.errors import CollectorError, PermanentError
from data_collector.markets import exchange_symbol
from data_collector.streaming.connection import Route
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import Event, MalformedEvent
from data_collector.streaming.rest import BinanceRest
from data_collector.streaming.writer import GapMarker, RedisWriter

log = logging.getLogger(__name__)

#: Channels whose lost events are fetched back: REST serves trades and aggregate trades by id.
REPAIRED_CHANNELS = frozenset({"aggTrade", "trade"})
#: The companion stream's channel part: ``aggTrade@repair``, ``trade@repair``.
REPAIR_SUFFIX = "@repair"
#: Trades per REST page (Binance's maximum).
PAGE = 1000
#: The writer's buffer depth under which a repair page may be handed over.
WRITER_IDLE_DEPTH = 200
#: Jobs waiting at most (one per gap; a wider backlog is left open and logged).
MAX_JOBS = 10_000


def _as_frame(row: dict[str, Any], symbol: str, agg: bool) -> dict[str, Any]:
    """A REST row as the stream's frame would have carried it (``E``: the trade time)."""
    if agg:
        return {**row, "s": symbol, "E": row.get("T")}
    return {
        "s": symbol,
        "E": row.get("time"),
        "t": row.get("id"),
        "p": row.get("price"),
        "q": row.get("qty"),
        "T": row.get("time"),
        "m": row.get("isBuyerMaker"),
    }


@dataclass(frozen=True, slots=True)
class RepairJob:
    route: Route
    first_seq: int
    last_seq: int
    from_ms: int
    to_ms: int
    #: The companion stream's XADD head and its "latest" SET head.
    xadd_head: bytes
    set_head: bytes


class TradeRepairer:
    """Fetches the trades gap markers name and writes them to the companion streams.

    Args:
        rest: the streamer's REST client.
        writer: the streamer's Redis writer.
        metrics: ``repaired_trades`` is counted here.
        max_ids: the widest gap repaired here; wider ones are left to the trade backfill.
    """

    def __init__(self, rest: BinanceRest, writer: RedisWriter, metrics: StreamMetrics, max_ids: int) -> None:
        self._rest = rest
        self._writer = writer
        self._metrics = metrics
        self.max_ids = max_ids
        self._jobs: deque[RepairJob] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        #: Gaps wider than ``max_ids``, left open: (stream key, first id, last id).
        self.too_wide: list[tuple[str, int, int]] = []
        #: Called with ``(symbol, event)`` for every repaired aggregate trade (the trades store's sink).
        self.on_trade: Callable[[str, Event], None] | None = None

    def submit(self, job: RepairJob, *, first: bool = False) -> bool:
        """Queue one gap (never blocks); False when it is left open (too wide, backlog full).
        ``first``: ahead of the others (a Redis restart's refill, whose ids are below theirs: each
        companion stream is written in id order)."""
        width = job.last_seq - job.first_seq + 1
        if width > self.max_ids:
            self.too_wide.append((job.route.stream_key, job.first_seq, job.last_seq))
            log.warning(
                "%s: %d trades missing (%d..%d), more than streaming.repair_max_ids; left to the trade backfill",
                job.route.stream_key, width, job.first_seq, job.last_seq,
            )  # fmt: skip
            return False
        if len(self._jobs) >= MAX_JOBS:
            log.warning(
                "%s: repair backlog full; gap %d..%d stays open",
                job.route.stream_key,
                job.first_seq,
                job.last_seq,
            )
            return False
        if first:
            self._jobs.appendleft(job)
        else:
            self._jobs.append(job)
        self._wake.set()
        if self._task is None and not self._paused:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trade-repair")
        return True

    async def pause(self) -> None:
        """Stop between pages (the job in hand starts again from its first id on :meth:`resume`)."""
        self._paused = True
        await self.close()

    def resume(self) -> None:
        self._paused = False
        if self._jobs and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trade-repair")

    def drop_below(self, stream_key: str, seq: int) -> None:
        """Forget the queued jobs of ``stream_key`` whose ids all lie below ``seq`` (a refill
        covers them)."""
        self._jobs = deque(j for j in self._jobs if j.route.stream_key != stream_key or j.last_seq >= seq)

    @property
    def pending(self) -> int:
        return len(self._jobs)

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._jobs[0]
            try:
                await self._repair(job)
            except PermanentError as exc:  # asking again would get the same answer
                log.warning("%s: trade repair refused (%s); the gap stays marked", job.route.stream_key, exc)
                self._jobs.popleft()
                continue
            except (CollectorError, TimeoutError, OSError) as exc:
                log.warning("%s: trade repair failed (%s); retrying", job.route.stream_key, exc)
                await asyncio.sleep(1.0)
                continue
            self._jobs.popleft()

    async def _repair(self, job: RepairJob) -> None:
        route = job.route
        packb = msgpack.packb
        symbol = exchange_symbol(route.symbol)
        cursor, written = job.first_seq, 0
        agg = route.channel == "aggTrade"
        fetch = self._rest.agg_trades if agg else self._rest.historical_trades
        while cursor <= job.last_seq:
            rows = await fetch(route.symbol, cursor, min(PAGE, job.last_seq - cursor + 1))
            if not rows:
                break
            now = time.time()
            recv_ms = int(now * 1000)
            for row in rows:
                seq = row.get("a" if agg else "id")
                if type(seq) is not int or seq < cursor or seq > job.last_seq:
                    continue
                try:
                    entry_id, event = route.normalize(_as_frame(row, symbol, agg), recv_ms)
                except (MalformedEvent, ValueError, KeyError, TypeError):
                    continue
                event["repaired"] = True
                self._writer.submit(
                    (job.xadd_head, job.set_head, entry_id, packb(event), event["event_ms"], now)
                )
                if agg and self.on_trade is not None:  # the trades table takes aggregate trades
                    self.on_trade(route.symbol, event)
                written += 1
                cursor = seq + 1
            self._metrics.repaired_trades += len(rows)
            # Low priority: live entries go first; the next page waits while the writer drains.
            depth = self._writer.queue_depth
            if depth > WRITER_IDLE_DEPTH:
                await asyncio.sleep(min(0.5, depth * 1e-5))
            if len(rows) < PAGE and cursor <= job.last_seq:
                break  # REST has no more (yet): what is written is what exists
        self._writer.submit_gap(
            GapMarker(
                route.stream_key,
                route.channel,
                route.symbol,
                job.from_ms,
                job.to_ms,
                "repaired",
                count=job.last_seq - job.first_seq + 1,
                first_seq=job.first_seq,
                last_seq=job.last_seq,
                repaired=written,
            )
        )

    async def close(self) -> None:
        """Stop repairing (what is queued stays marked as a gap); idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
