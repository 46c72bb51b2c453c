"""Exact repair of lost trades: the ids a gap marker names, fetched back over REST.

Binance's trade and aggregate-trade ids and OKX's trade ids are contiguous per symbol and REST
serves them by id (each venue's :class:`~.trade_sources.TradeSource`, one per repaired channel:
Binance's ``aggTrades?fromId=`` and ``historicalTrades?fromId=``, OKX's ``history-trades``), so a
``sequence``, ``reconnect`` or ``restart`` marker with ``first_seq``..``last_seq`` says exactly
what to fetch. The repaired trades are written with the entry ids they would have had
(``<trade ms>-<id>``) into a companion stream, ``<p>:stream:<ex>:<channel>@repair:<sym>``
(``aggTrade@repair``, ``trade@repair``): Redis
refuses an explicit id older than a stream's top, and the live stream has moved on by the time the
repair arrives. Holding the live tail until the repair lands would make live writes wait behind
REST; the companion stream never does, and ``MarketDataReader`` (``range``, ``last``, ``tail``)
merges both by entry id. Holding is built too (``streaming.repair_mode: hold``,
:mod:`.repair_hold`) and measured against it: about 4.7x the live p99 with a drop every 30 s
(PERFORMANCE.md, *Repair mode*), so the companion stream is the default.
When a gap is repaired a ``repaired`` marker follows (same ``first_seq``/``last_seq``, and
``repaired``: how many trades were written).

Low priority: one job at a time, one request at a time, each a background request of the REST
client's :class:`~data_collector.venues.binance.rest.RequestGate` (sent only while no live request
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack

from data_collector.errors import CollectorError, PermanentError
from data_collector.streaming.connection import Route
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import Event, MalformedEvent
from data_collector.streaming.trade_sources import TradeSource
from data_collector.streaming.writer import GapMarker, RedisWriter

if TYPE_CHECKING:
    from data_collector.streaming.repair_hold import Hold

log = logging.getLogger(__name__)

#: Channels whose lost events are fetched back: REST serves trades and aggregate trades by id.
REPAIRED_CHANNELS = frozenset({"aggTrade", "trade"})
#: The companion stream's channel part: ``aggTrade@repair``, ``trade@repair``.
REPAIR_SUFFIX = "@repair"
#: The writer's buffer depth under which a repair page may be handed over.
WRITER_IDLE_DEPTH = 200
#: Jobs waiting at most (one per gap; a wider backlog is left open and logged).
MAX_JOBS = 10_000


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
    #: Repair mode ``hold``: the live stream held for this gap; its pages go there while it is
    #: active (:mod:`.repair_hold`), to the companion stream once it fell back.
    hold: Hold | None = None


class TradeRepairer:
    """Fetches the trades gap markers name and writes them to the companion streams.

    Args:
        sources: the venue's trades by id range, one per repaired channel (empty: none).
        writer: the streamer's Redis writer.
        metrics: ``repaired_trades`` is counted here.
        max_ids: the widest gap repaired here; wider ones are left to the trade backfill.
    """

    def __init__(
        self, sources: Sequence[TradeSource], writer: RedisWriter, metrics: StreamMetrics, max_ids: int
    ) -> None:
        self._sources = {source.channel: source for source in sources}
        #: The channels repaired here.
        self.channels = frozenset(self._sources)
        self._writer = writer
        self._metrics = metrics
        self.max_ids = max_ids
        self._jobs: deque[RepairJob] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        #: The job in hand, the next id it fetches and how many it wrote: a retry after a REST
        #: failure goes on from there (a held stream that fell back meanwhile would otherwise get
        #: its pages already in the live stream written again, to the companion stream).
        self._progress: tuple[RepairJob, int, int] | None = None
        #: Gaps wider than ``max_ids``, left open: (stream key, first id, last id).
        self.too_wide: list[tuple[str, int, int]] = []
        #: Called with ``(symbol, event)`` for every repaired trade of ``on_trade_channel`` (the
        #: trades store's sink).
        self.on_trade: Callable[[str, Event], None] | None = None
        self.on_trade_channel = ""

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
        """Stop between pages (the job in hand starts again from its first id on :meth:`resume`:
        what it wrote may be gone with a restarted Redis)."""
        self._paused = True
        await self.close()
        self._progress = None

    def resume(self) -> None:
        self._paused = False
        if self._jobs and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="trade-repair")

    def drop_below(self, stream_key: str, seq: int) -> None:
        """Forget the queued jobs of ``stream_key`` whose ids all lie below ``seq`` (a refill
        covers them)."""
        kept: deque[RepairJob] = deque()
        for job in self._jobs:
            if job.route.stream_key != stream_key or job.last_seq >= seq:
                kept.append(job)
            elif job.hold is not None:
                job.hold.fall_back("a Redis-restart refill covers the gap")
        self._jobs = kept

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
                self._progress = None
                if job.hold is not None:
                    job.hold.fall_back("trade repair refused")
                continue
            except (CollectorError, TimeoutError, OSError) as exc:
                log.warning("%s: trade repair failed (%s); retrying", job.route.stream_key, exc)
                await asyncio.sleep(1.0)
                continue
            self._jobs.popleft()
            self._progress = None
            if job.hold is not None:  # its repair and marker are queued: the held entries follow
                job.hold.release()

    async def _repair(self, job: RepairJob) -> None:
        route = job.route
        packb = msgpack.packb
        source = self._sources[route.channel]  # jobs come only for these channels' streams
        on_trade = self.on_trade if route.channel == self.on_trade_channel else None
        cursor, written = job.first_seq, 0
        if self._progress is not None and self._progress[0] is job:  # a retry: on from there
            _, cursor, written = self._progress
        hold = job.hold
        while cursor <= job.last_seq:
            rows = await source.fetch(route.symbol, cursor, job.last_seq)
            if not rows:
                break
            # Into the held live stream, or (default, or a hold that fell back) the companion.
            xadd_head, set_head = (
                hold.heads if hold is not None and hold.active else (job.xadd_head, job.set_head)
            )
            now = time.time()
            recv_ms = int(now * 1000)
            for seq, raw in rows:
                if seq < cursor or seq > job.last_seq:
                    continue
                try:
                    entry_id, event = route.normalize(raw, recv_ms)
                except (MalformedEvent, ValueError, KeyError, TypeError):
                    continue
                event["repaired"] = True
                self._writer.submit((xadd_head, set_head, entry_id, packb(event), event["event_ms"], now))
                if on_trade is not None:
                    on_trade(route.symbol, event)
                written += 1
                cursor = seq + 1
            self._metrics.repaired_trades += len(rows)
            self._progress = (job, cursor, written)
            # Low priority: live entries go first; the next page waits while the writer drains.
            depth = self._writer.queue_depth
            if depth > WRITER_IDLE_DEPTH:
                await asyncio.sleep(min(0.5, depth * 1e-5))
            if len(rows) < source.page and cursor <= job.last_seq:
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
