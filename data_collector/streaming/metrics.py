"""Counters and latency samples of one streamer, and the dict ``get_metrics()`` returns."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from data_collector.percentiles import percentiles

#: Latency samples kept for the percentiles (the most recent ones).
LATENCY_SAMPLES = 20_000
#: Seconds of history behind ``messages_per_second``.
RATE_WINDOW_S = 5.0

#: Called after every batch written: ``(messages written, event->Redis latencies in ms)``.
BatchHook = Callable[[int, list[float]], None]
#: Called as reconnects, gaps and dropped entries are counted, and heartbeats written:
#: ``(kind, n)`` with kind ``reconnects``, ``gaps`` or ``dropped`` (n: how many), or
#: ``heartbeat`` (n: when, in Unix ms).
EventHook = Callable[[str, int], None]


class StreamMetrics:
    """Mutable counters shared by the connections, the book keeper and the writer (one loop)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.received = 0
        self.written = 0
        self.deduplicated = 0
        self.batches = 0
        self.batched_messages = 0
        self.reconnects = 0
        self.gaps = 0
        self.book_resyncs = 0
        self.books_published = 0
        self.dropped = 0
        self.unconfirmed = 0
        self.malformed = 0
        self.redis_errors = 0
        self.rejected = 0
        self.repaired_klines = 0
        #: Aggregate trades fetched back over REST for sequence gaps (issue 15).
        self.repaired_trades = 0
        #: Repair mode ``hold``: streams held for a repair, and holds that fell back (bound,
        #: timeout) to the companion stream (:mod:`.repair_hold`).
        self.repair_holds = 0
        self.repair_hold_fallbacks = 0
        self.rest_errors = 0
        self.candles_stored = 0
        self.funding_stored = 0
        self.store_errors = 0
        #: Streamed aggTrades written to the trades table, dropped before it (left as a hole),
        #: and holes closed by the trade backfill (:mod:`.trades_store`).
        self.trades_stored = 0
        self.trades_store_dropped = 0
        self.trade_holes_closed = 0
        self.event_latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.receive_latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        # (monotonic second, messages written in it)
        self._rate: deque[list[float]] = deque()
        self.on_batch: BatchHook | None = None
        self.on_event: EventHook | None = None
        #: Wall-clock ms of the newest round trip that wrote something (for the heartbeat).
        self.last_write_ms: int | None = None

    def record_batch(self, size: int, written: int, event_lat: list[float], recv_lat: list[float]) -> None:
        """Account one round trip of ``size`` entries, ``written`` of them new."""
        self.batches += 1
        self.batched_messages += size
        self.written += written
        if written:
            self.last_write_ms = int(time.time() * 1000)
        self.event_latency_ms.extend(event_lat)
        self.receive_latency_ms.extend(recv_lat)
        second = float(int(time.monotonic()))
        rate = self._rate
        if rate and rate[-1][0] == second:
            rate[-1][1] += written
        else:
            rate.append([second, float(written)])
            while rate and rate[0][0] < second - RATE_WINDOW_S - 1:
                rate.popleft()
        if self.on_batch is not None:
            self.on_batch(written, event_lat)

    def add_reconnect(self) -> None:
        self.reconnects += 1
        if self.on_event is not None:
            self.on_event("reconnects", 1)

    def add_gap(self) -> None:
        self.gaps += 1
        if self.on_event is not None:
            self.on_event("gaps", 1)

    def add_dropped(self) -> None:
        self.dropped += 1
        if self.on_event is not None:
            self.on_event("dropped", 1)

    def heartbeat_written(self, ts_ms: int) -> None:
        if self.on_event is not None:
            self.on_event("heartbeat", ts_ms)

    def messages_per_second(self) -> float:
        """Messages written per second over the last ``RATE_WINDOW_S`` seconds."""
        now = time.monotonic()
        current = float(int(now))
        # list() copies in one C call: safe while the streamer's thread appends.
        total = sum(n for s, n in list(self._rate) if s >= current - RATE_WINDOW_S)
        span = min(RATE_WINDOW_S + (now - current), now - self.started)
        return round(total / max(span, 1e-3), 1)

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        return {
            "latency_ms": {
                "event_to_redis": _rounded(percentiles(self.event_latency_ms)),
                "receive_to_redis": _rounded(percentiles(self.receive_latency_ms)),
            },
            "messages_per_second": self.messages_per_second(),
            "received": self.received,
            "written": self.written,
            "deduplicated": self.deduplicated,
            "batches": self.batches,
            "mean_batch_size": round(self.batched_messages / self.batches, 2) if self.batches else 0.0,
            "reconnects": self.reconnects,
            "gaps": self.gaps,
            "book_resyncs": self.book_resyncs,
            "books_published": self.books_published,
            "dropped": self.dropped,
            "unconfirmed": self.unconfirmed,
            "malformed": self.malformed,
            "redis_errors": self.redis_errors,
            "rejected": self.rejected,
            "repaired_klines": self.repaired_klines,
            "repaired_trades": self.repaired_trades,
            "repair_holds": self.repair_holds,
            "repair_hold_fallbacks": self.repair_hold_fallbacks,
            "rest_errors": self.rest_errors,
            "candles_stored": self.candles_stored,
            "funding_stored": self.funding_stored,
            "store_errors": self.store_errors,
            "trades_stored": self.trades_stored,
            "trades_store_dropped": self.trades_store_dropped,
            "trade_holes_closed": self.trade_holes_closed,
            "queue_depth": queue_depth,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 3) for k, v in values.items()}
