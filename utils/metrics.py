"""Prometheus metrics for the collector and the streamer, and the optional ``/metrics`` endpoint.

Every :class:`Metrics` owns its own ``CollectorRegistry``, so two in one process (or in one test
run) never share counters. The collector and the streamer do not call it directly: they record
into a :class:`~utils.performance_monitor.PerformanceMonitor` built with ``metrics=``, and one call
feeds both. :func:`~utils.performance_monitor.get_default_monitor` is wired that way.

Exposed names (Prometheus conventions: counters end in ``_total``, durations are ``_seconds``):

=====================================  ============================================================
``dc_requests_total{outcome}``         exchange REST calls; ``outcome`` is ``ok`` or ``error``
``dc_rate_limited_total``              HTTP 429 (and 418) answers
``dc_retries_total``                   retried calls
``dc_request_weight_total``            request weight sent (exchanges with a weight budget)
``dc_request_weight_used``             weight counted in the exchange's current minute (ours or its
                                       ``X-MBX-USED-WEIGHT-1M``, the larger); 0 once it ends
``dc_request_weight_limit``            the exchange's weight limit per minute
``dc_request_weight_budget``           weight per minute the collector allows itself (the limit
                                       less ``exchange.rate_limit_margin``)
``dc_request_duration_seconds``        histogram of REST call latency
``dc_rows_written_total``              candle rows written to the database
``dc_db_operations_total{op}``         database operations by kind (INSERT, COPY, ...)
``dc_db_operation_duration_seconds``   histogram of database operation latency
``dc_ws_messages_total``               WebSocket messages received
``dc_ws_message_latency_seconds``      histogram of exchange-event to handling latency
``dc_gaps_found_total``                gaps detected (candles or stream sequence)
``dc_stream_reconnects_total``         WebSocket reconnects of the streamer
``dc_stream_dropped_total``            stream entries dropped (buffer full while Redis was away)
``dc_queue_depth``                     items waiting between producers and writers
``dc_seconds_since_last_write``        age of the last database write (``+Inf`` before any)
``dc_seconds_since_last_stream_message``  age of the last stream message (``+Inf`` before any)
``dc_seconds_since_last_heartbeat``    age of the last heartbeat written to Redis (``+Inf`` before any)
=====================================  ============================================================
"""

from __future__ import annotations

import math
import time
from types import TracebackType

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from data_collector.errors import UsageError

# Seconds; covers a loopback call (sub-ms) up to a slow exchange answer.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The project's Prometheus metrics in a registry of their own.

    Args:
        registry: where to register; a fresh ``CollectorRegistry`` when omitted.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter("dc_requests", "Exchange REST requests", ["outcome"], registry=r)
        self._requests_ok = self._requests.labels(outcome="ok")
        self._requests_error = self._requests.labels(outcome="error")
        self._rate_limited = Counter("dc_rate_limited", "HTTP 429/418 answers from the exchange", registry=r)
        self._retries = Counter("dc_retries", "Retried calls", registry=r)
        self._request_seconds = Histogram(
            "dc_request_duration_seconds", "Exchange REST latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self._weight = Counter("dc_request_weight", "Request weight sent to the exchange", registry=r)
        self._weight_limit = Gauge("dc_request_weight_limit", "Exchange weight limit per minute", registry=r)
        self._weight_budget = Gauge(
            "dc_request_weight_budget", "Weight per minute the collector allows itself", registry=r
        )
        self._weight_used = 0
        self._weight_resets_s = 0.0
        weight_used = Gauge(
            "dc_request_weight_used", "Weight counted in the exchange's current minute", registry=r
        )
        weight_used.set_function(lambda: self._weight_used if time.time() < self._weight_resets_s else 0)
        self._rows_written = Counter("dc_rows_written", "Candle rows written to the database", registry=r)
        self._db_ops = Counter("dc_db_operations", "Database operations", ["op"], registry=r)
        self._db_seconds = Histogram(
            "dc_db_operation_duration_seconds",
            "Database operation latency",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._ws_messages = Counter("dc_ws_messages", "WebSocket messages received", registry=r)
        self._ws_latency = Histogram(
            "dc_ws_message_latency_seconds",
            "Latency from exchange event time to handling",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._gaps = Counter("dc_gaps_found", "Gaps detected in candles or streams", registry=r)
        self._reconnects = Counter("dc_stream_reconnects", "WebSocket reconnects", registry=r)
        self._dropped = Counter("dc_stream_dropped", "Stream entries dropped (buffer full)", registry=r)
        self._queue_depth = Gauge("dc_queue_depth", "Items waiting to be written", registry=r)
        self._last_write_s: float | None = None
        self._last_message_s: float | None = None
        since_write = Gauge(
            "dc_seconds_since_last_write", "Seconds since the last database write", registry=r
        )
        since_write.set_function(lambda: _age(self._last_write_s))
        since_message = Gauge(
            "dc_seconds_since_last_stream_message", "Seconds since the last stream message", registry=r
        )
        since_message.set_function(lambda: _age(self._last_message_s))
        self._last_heartbeat_s: float | None = None
        since_heartbeat = Gauge(
            "dc_seconds_since_last_heartbeat", "Seconds since the last heartbeat written", registry=r
        )
        since_heartbeat.set_function(lambda: _age(self._last_heartbeat_s))

    def request(self, duration_s: float | None, success: bool = True, status: int | None = None) -> None:
        """One exchange REST call; ``status`` 429 or 418 also counts as rate limited."""
        (self._requests_ok if success else self._requests_error).inc()
        if status in (418, 429):
            self._rate_limited.inc()
        if duration_s is not None:
            self._request_seconds.observe(duration_s)

    def retry(self, n: int = 1) -> None:
        self._retries.inc(n)

    def request_weight(self, sent: int, used: int, limit: int, budget: int, resets_in_s: float) -> None:
        """A request of weight ``sent`` is done; the exchange's minute counts ``used`` of ``limit``
        (we allow ourselves ``budget``) and starts again in ``resets_in_s`` seconds."""
        self._weight.inc(sent)
        self._weight_used = used
        self._weight_resets_s = time.time() + resets_in_s
        self._weight_limit.set(limit)
        self._weight_budget.set(budget)

    def db_operation(self, op: str, duration_s: float | None, rows_written: int = 0) -> None:
        """One database operation, with the rows it wrote (0 for reads)."""
        self._db_ops.labels(op=op).inc()
        if duration_s is not None:
            self._db_seconds.observe(duration_s)
        if rows_written:
            self.rows_written(rows_written)

    def rows_written(self, n: int) -> None:
        self._rows_written.inc(n)
        self._last_write_s = time.time()

    def ws_messages(self, n: int = 1, latency_s: float | None = None) -> None:
        self._ws_messages.inc(n)
        if latency_s is not None:
            self._ws_latency.observe(latency_s)
        self._last_message_s = time.time()

    def ws_message_batch(self, latencies_s: np.ndarray, extra_count: int = 0) -> None:
        """A batch of WebSocket messages with their latencies, in one update per histogram bucket."""
        self._ws_messages.inc(len(latencies_s) + extra_count)
        if len(latencies_s):
            observe_many(self._ws_latency, latencies_s)
        self._last_message_s = time.time()

    def gaps_found(self, n: int = 1) -> None:
        self._gaps.inc(n)

    def stream_reconnects(self, n: int = 1) -> None:
        self._reconnects.inc(n)

    def stream_dropped(self, n: int = 1) -> None:
        self._dropped.inc(n)

    def heartbeat(self, at_s: float | None = None) -> None:
        """A heartbeat was written (at ``at_s``, Unix seconds; now when omitted)."""
        self._last_heartbeat_s = time.time() if at_s is None else at_s

    def queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` over HTTP on ``host:port`` (port 0 picks a free one)."""
        return MetricsServer(self.registry, port, host)


class MetricsServer:
    """The ``/metrics`` HTTP endpoint, in a daemon thread. ``close()`` stops it (idempotent)."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise UsageError(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.host = host
        self.port = int(self._server.server_address[1])
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, with one increment per bucket instead of per value.

    It relies on prometheus_client's layout (per-bucket counters ``_buckets`` and ``_sum``, pinned
    in requirements.txt) and falls back to plain ``observe`` calls if that layout ever changes.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(buckets) != len(bounds):
        for value in values:
            histogram.observe(float(value))
        return
    # observe() counts a value in the first bucket whose bound is >= the value.
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    for i, count in enumerate(counts[: len(bounds)]):
        if count:
            buckets[i].inc(int(count))
    total.inc(float(np.sum(values)))


def _age(since_s: float | None) -> float:
    return math.inf if since_s is None else max(0.0, time.time() - since_s)
