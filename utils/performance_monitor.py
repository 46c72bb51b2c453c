"""Throughput and latency of API calls, database operations and WebSocket messages.

Memory stays bounded however long the process runs: each latency series keeps a **fixed recent
window**, the last ``window`` samples (100,000 by default) in a preallocated numpy ring buffer.
Percentiles are computed exactly over that window with the project's one definition
(:func:`data_collector.percentiles.percentiles`, linear interpolation), so they match numpy on the recorded data as long as fewer than ``window`` samples
were recorded, and describe the most recent ``window`` samples after that. Counts, sums and
rates cover the whole uptime. A window was preferred to a streaming quantile sketch because it
is exact, cheap to update (one array store per record) and reflects current behaviour rather than
a mix of days.

The collector and the streamer record into :func:`get_default_monitor`, which also feeds the
Prometheus metrics of :mod:`utils.metrics`.

Long because the monitor, its bounded latency windows and its Prometheus wiring share one lock
and one set of series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

import numpy as np
import psutil

from data_collector.percentiles import percentiles
from utils.metrics import Metrics, MetricsServer

DEFAULT_WINDOW = 100_000
#: Distinct operation / timer names tracked; further names are folded into "other".
MAX_NAMES = 256
#: Database operations whose ``rows`` count as rows written.
WRITE_OPS = frozenset({"INSERT", "UPSERT", "COPY", "UPDATE", "WRITE", "MERGE"})


class LatencyWindow:
    """The last ``capacity`` samples in a numpy ring buffer, plus all-time count and sum.

    Not locked: its owner serialises access.
    """

    __slots__ = ("_buf", "_capacity", "_next", "count", "total")

    def __init__(self, capacity: int = DEFAULT_WINDOW) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._buf = np.empty(capacity, dtype=np.float64)
        self._next = 0
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self._buf[self._next] = value
        self._next = (self._next + 1) % self._capacity
        self.count += 1
        self.total += value

    def add_many(self, values: Any) -> None:
        data = np.asarray(values, dtype=np.float64).ravel()
        n = len(data)
        if n == 0:
            return
        self.count += n
        self.total += float(data.sum())
        if n >= self._capacity:
            self._buf[:] = data[-self._capacity :]
            self._next = 0
            return
        end = self._next + n
        if end <= self._capacity:
            self._buf[self._next : end] = data
        else:
            first = self._capacity - self._next
            self._buf[self._next :] = data[:first]
            self._buf[: n - first] = data[first:]
        self._next = end % self._capacity

    def values(self) -> np.ndarray:
        """A copy of the samples in the window (order not guaranteed)."""
        filled = min(self.count, self._capacity)
        return self._buf[:filled].copy()

    def summary(self) -> dict[str, float | int | None]:
        """count (all time), avg/p50/p95/p99/min/max (window), window (samples used)."""
        data = self.values()
        if len(data) == 0:
            return {"count": self.count, "window": 0, "avg": None, "p50": None, "p95": None, "p99": None}
        return {
            "count": self.count,
            "window": len(data),
            "avg": float(data.mean()),
            **percentiles(data),
            "min": float(data.min()),
            "max": float(data.max()),
        }


class PerformanceMonitor:
    """Thread-safe counters and latency windows for the collector and the streamer.

    Args:
        window: samples kept per latency series (see the module docstring).
        metrics: Prometheus metrics to feed as well; none when omitted.
        disk_path: the filesystem whose usage ``System resources`` reports.

    Example:
        >>> monitor = PerformanceMonitor()
        >>> monitor.record_api_call(duration_ms=45.2, success=True)
        >>> monitor.record_db_operation("INSERT", duration_ms=12.5, rows=1000)
        >>> monitor.print_summary()  # doctest: +SKIP
    """

    def __init__(
        self, window: int = DEFAULT_WINDOW, *, metrics: Metrics | None = None, disk_path: str = "."
    ) -> None:
        self.metrics = metrics
        self.disk_path = disk_path
        self._window = window
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._started_wall = time.time()
        self._api = LatencyWindow(window)
        self._db = LatencyWindow(window)
        self._ws = LatencyWindow(window)
        self._timers: dict[str, LatencyWindow] = {}
        self._api_errors = 0
        self._rate_limited = 0
        self._retries = 0
        self._weight = 0
        self._db_ops: dict[str, list[int]] = {}
        self._rows = 0
        self._rows_written = 0
        self._ws_count = 0
        self._gaps = 0
        #: Archive files (data.binance.vision) read: files, bytes, rows.
        self._archive = [0, 0, 0]
        self._reconnects = 0
        self._dropped = 0
        self._queue_depth = 0
        self._last_heartbeat_ms: int | None = None
        self._last_write_ms: int | None = None
        self._last_message_ms: int | None = None
        self._process = psutil.Process()
        # psutil's CPU percentages are deltas since the previous call; prime them now.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)

    def record_api_call(self, duration_ms: float, success: bool = True, *, status: int | None = None) -> None:
        """One exchange REST call. ``status`` 429/418 also counts as rate limited."""
        with self._lock:
            self._api.add(duration_ms)
            if not success:
                self._api_errors += 1
            if status in (418, 429):
                self._rate_limited += 1
        if self.metrics is not None:
            self.metrics.request(duration_ms / 1000.0, success, status)

    def record_retry(self, n: int = 1) -> None:
        with self._lock:
            self._retries += n
        if self.metrics is not None:
            self.metrics.retry(n)

    def record_request_weight(
        self, sent: int, used: int, limit: int, budget: int, resets_in_s: float
    ) -> None:
        """A request of weight ``sent`` is done; the exchange's current minute counts ``used`` of
        ``limit`` (the collector allows itself ``budget``) and ends in ``resets_in_s`` seconds."""
        with self._lock:
            self._weight += sent
        if self.metrics is not None:
            self.metrics.request_weight(sent, used, limit, budget, resets_in_s)

    def record_db_operation(
        self, op: str, duration_ms: float, rows: int = 0, *, written: bool | None = None
    ) -> None:
        """One database operation.

        Args:
            op: its kind, e.g. ``'INSERT'``, ``'COPY'``, ``'SELECT'``.
            duration_ms: how long it took.
            rows: rows it touched.
            written: whether ``rows`` were written; by default, when ``op`` is one of
                :data:`WRITE_OPS`.
        """
        op = op.upper()
        is_write = written if written is not None else op in WRITE_OPS
        with self._lock:
            self._db.add(duration_ms)
            entry = self._db_ops.get(op)
            if entry is None:
                if len(self._db_ops) >= MAX_NAMES:
                    op = "OTHER"
                entry = self._db_ops.setdefault(op, [0, 0])
            entry[0] += 1
            entry[1] += rows
            self._rows += rows
            if is_write and rows:
                self._rows_written += rows
                self._last_write_ms = _now_ms()
        if self.metrics is not None:
            self.metrics.db_operation(op, duration_ms / 1000.0, rows if is_write else 0)

    def record_ws_message(self, latency_ms: float | None = None, count: int = 1) -> None:
        """``count`` WebSocket messages; ``latency_ms`` from exchange event time, when known."""
        with self._lock:
            self._ws_count += count
            if latency_ms is not None:
                self._ws.add(latency_ms)
            self._last_message_ms = _now_ms()
        if self.metrics is not None:
            self.metrics.ws_messages(count, None if latency_ms is None else latency_ms / 1000.0)

    def record_ws_messages(self, latencies_ms: Any, count: int | None = None) -> None:
        """A batch of WebSocket messages: their latencies (a sequence or numpy array, in ms) and,
        when more messages than latencies arrived, their total ``count``. Several times cheaper
        per message than :meth:`record_ws_message` on a hot path."""
        data = np.asarray(latencies_ms, dtype=np.float64).ravel()
        total = len(data) if count is None else count
        with self._lock:
            self._ws_count += total
            self._ws.add_many(data)
            self._last_message_ms = _now_ms()
        if self.metrics is not None:
            self.metrics.ws_message_batch(data / 1000.0, extra_count=max(0, total - len(data)))

    def record_gaps(self, n: int = 1) -> None:
        with self._lock:
            self._gaps += n
        if self.metrics is not None:
            self.metrics.gaps_found(n)

    def record_archive_file(self, nbytes: int, rows: int) -> None:
        """One archive file verified and its ``rows`` queued; ``nbytes`` the zip's size."""
        with self._lock:
            self._archive[0] += 1
            self._archive[1] += nbytes
            self._archive[2] += rows

    def record_reconnects(self, n: int = 1) -> None:
        """``n`` WebSocket reconnects of the streamer."""
        with self._lock:
            self._reconnects += n
        if self.metrics is not None:
            self.metrics.stream_reconnects(n)

    def record_dropped(self, n: int = 1) -> None:
        """``n`` stream entries dropped (the streamer's buffer was full)."""
        with self._lock:
            self._dropped += n
        if self.metrics is not None:
            self.metrics.stream_dropped(n)

    def record_heartbeat(self, ts_ms: int) -> None:
        """A heartbeat was written at ``ts_ms`` (:class:`data_collector.heartbeat.Heartbeat` calls it)."""
        with self._lock:
            self._last_heartbeat_ms = ts_ms
        if self.metrics is not None:
            self.metrics.heartbeat(ts_ms / 1000.0)

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self._queue_depth = depth
        if self.metrics is not None:
            self.metrics.queue_depth(depth)

    def record_timing(self, name: str, duration_ms: float) -> None:
        """A named duration, as a :class:`Timer` with ``monitor=`` reports it."""
        with self._lock:
            window = self._timers.get(name)
            if window is None:
                if len(self._timers) >= MAX_NAMES:
                    name = "other"
                window = self._timers.get(name)
                if window is None:
                    window = self._timers[name] = LatencyWindow(min(self._window, 10_000))
            window.add(duration_ms)

    @property
    def last_write_ms(self) -> int | None:
        return self._last_write_ms

    @property
    def last_message_ms(self) -> int | None:
        return self._last_message_ms

    def get_summary(self) -> dict[str, Any]:
        """Everything :meth:`print_summary` shows, as a dict (latencies in ms, rates per second)."""
        with self._lock:
            uptime_s = time.monotonic() - self._started
            per_s = 1.0 / uptime_s if uptime_s > 0 else 0.0
            api = self._api.summary()
            db = self._db.summary()
            ws = self._ws.summary()
            summary: dict[str, Any] = {
                "started_ms": int(self._started_wall * 1000),
                "uptime_s": uptime_s,
                "api_calls": {
                    "count": self._api.count,
                    "success": self._api.count - self._api_errors,
                    "errors": self._api_errors,
                    "rate_limited": self._rate_limited,
                    "retries": self._retries,
                    "weight": self._weight,
                    "per_s": self._api.count * per_s,
                    "latency_ms": api,
                },
                "db_operations": {
                    "count": self._db.count,
                    "rows": self._rows,
                    "rows_written": self._rows_written,
                    "per_s": self._db.count * per_s,
                    "by_op": {op: {"count": c, "rows": r} for op, (c, r) in self._db_ops.items()},
                    "latency_ms": db,
                },
                "ws_messages": {"count": self._ws_count, "per_s": self._ws_count * per_s, "latency_ms": ws},
                "timings_ms": {name: w.summary() for name, w in self._timers.items()},
                "gaps_found": self._gaps,
                "archive": {
                    "files": self._archive[0],
                    "bytes": self._archive[1],
                    "rows": self._archive[2],
                    "bytes_per_s": self._archive[1] * per_s,
                    "rows_per_s": self._archive[2] * per_s,
                },
                "stream_reconnects": self._reconnects,
                "stream_dropped": self._dropped,
                "queue_depth": self._queue_depth,
                "last_write_ms": self._last_write_ms,
                "last_message_ms": self._last_message_ms,
                "last_heartbeat_ms": self._last_heartbeat_ms,
            }
        summary["system"] = self._system()
        return summary

    def _system(self) -> dict[str, float | None]:
        try:
            disk = psutil.disk_usage(self.disk_path)
            disk_percent: float | None = disk.percent
            disk_free_gb: float | None = disk.free / 1e9
        except OSError:
            disk_percent = disk_free_gb = None
        return {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_percent": psutil.virtual_memory().percent,
            "disk_percent": disk_percent,
            "disk_free_gb": disk_free_gb,
            "process_rss_mb": self._process.memory_info().rss / 2**20,
            "process_cpu_percent": self._process.cpu_percent(interval=None),
        }

    def format_summary(self) -> str:
        """The text :meth:`print_summary` prints."""
        s = self.get_summary()
        api, db, ws, system = s["api_calls"], s["db_operations"], s["ws_messages"], s["system"]
        rule = "=" * 60
        lines = [
            rule,
            "PERFORMANCE SUMMARY",
            rule,
            f"Uptime: {timedelta(seconds=int(s['uptime_s']))}",
            "",
            "Throughput:",
            f"  API calls: {api['per_s']:.2f} req/s ({api['count']:,} total, {api['errors']:,} failed)",
            f"  DB operations: {db['per_s']:.2f} ops/s ({db['count']:,} total, {db['rows']:,} rows)",
            f"  WS messages: {ws['per_s']:.2f} msg/s ({ws['count']:,} total)",
        ]
        archive = s["archive"]
        if archive["files"]:
            lines.append(
                f"  Archive files: {archive['bytes_per_s'] / 1e6:,.2f} MB/s, {archive['rows_per_s']:,.0f} rows/s "
                f"({archive['files']:,} files, {archive['bytes'] / 1e6:,.1f} MB, {archive['rows']:,} rows)"
            )
        for title, latency in (("API calls", api["latency_ms"]), ("DB operations", db["latency_ms"])):
            lines += ["", f"Latency ({title}):"]
            lines += [f"  {label}: {_ms(latency[key])}" for label, key in _LATENCY_ROWS]
        lines += [
            "",
            "System resources:",
            f"  CPU: {system['cpu_percent']:.1f}%",
            f"  Memory: {system['memory_percent']:.1f}%",
            f"  Disk: {_pct(system['disk_percent'])} used ({_num(system['disk_free_gb'], 'GB')} free)",
            f"  Process RSS: {system['process_rss_mb']:.1f} MB",
            rule,
        ]
        return "\n".join(lines)

    def print_summary(self) -> None:
        """Print the summary: uptime, throughput, latency percentiles, system resources."""
        print(self.format_summary())


_LATENCY_ROWS = (("Avg", "avg"), ("P50", "p50"), ("P95", "p95"), ("P99", "p99"))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _num(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.1f} {unit}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class Timer:
    """Measure a block, as ``with Timer(...) as t:`` or ``async with Timer(...) as t:``.

    Args:
        name: what is timed; the key under ``timings_ms`` when reported to a monitor.
        monitor: where to report the duration when the block ends; nothing is reported when
            omitted.
        kind: ``'timing'`` (a named duration), ``'api'`` (counts as an API call, failed if the
            block raised) or ``'db'`` (a database operation named ``name``).
        rows: for ``kind='db'``, the rows the operation touched (settable inside the block as
            ``t.rows``).

    ``elapsed_ms`` grows while the block runs and is fixed once it ends.
    """

    def __init__(
        self,
        name: str = "timer",
        monitor: PerformanceMonitor | None = None,
        *,
        kind: str = "timing",
        rows: int = 0,
    ) -> None:
        if kind not in ("timing", "api", "db"):
            raise ValueError("kind must be 'timing', 'api' or 'db'")
        self.name = name
        self.monitor = monitor
        self.kind = kind
        self.rows = rows
        self._start: int | None = None
        self._end: int | None = None

    @property
    def elapsed_ms(self) -> float:
        if self._start is None:
            return 0.0
        end = self._end if self._end is not None else time.perf_counter_ns()
        return (end - self._start) / 1e6

    def start(self) -> Timer:
        self._start = time.perf_counter_ns()
        self._end = None
        return self

    def stop(self, failed: bool = False) -> float:
        """End the measurement, report it and return ``elapsed_ms``."""
        self._end = time.perf_counter_ns()
        elapsed = self.elapsed_ms
        if self.monitor is not None:
            if self.kind == "api":
                self.monitor.record_api_call(elapsed, success=not failed)
            elif self.kind == "db":
                self.monitor.record_db_operation(self.name, elapsed, self.rows)
            else:
                self.monitor.record_timing(self.name, elapsed)
        return elapsed

    def __enter__(self) -> Timer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(failed=exc_type is not None)

    async def __aenter__(self) -> Timer:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(failed=exc_type is not None)

    def __repr__(self) -> str:
        return f"Timer({self.name!r}, elapsed_ms={self.elapsed_ms:.3f})"


_default_lock = threading.Lock()
_default_monitor: PerformanceMonitor | None = None


def get_default_monitor() -> PerformanceMonitor:
    """The process-wide monitor the collector and the streamer record into.

    It feeds Prometheus metrics too (``get_default_monitor().metrics``); serve them with
    ``get_default_monitor().metrics.serve(port)``.
    """
    global _default_monitor
    with _default_lock:
        if _default_monitor is None:
            _default_monitor = PerformanceMonitor(metrics=Metrics())
        return _default_monitor


def serve_metrics(
    port: int | None, monitor: PerformanceMonitor | None = None, host: str = "127.0.0.1"
) -> MetricsServer | None:
    """Serve ``monitor``'s Prometheus metrics on ``host:port``; nothing when ``port`` is None.

    Scripts call it with ``--metrics-port`` or ``config.metrics.port`` and close what it returns.
    The default monitor is used when ``monitor`` is omitted; a monitor made without metrics gets
    them now.
    """
    if port is None:
        return None
    target = monitor if monitor is not None else get_default_monitor()
    if target.metrics is None:
        target.metrics = Metrics()
    return target.metrics.serve(port, host)


def timed(
    monitor: PerformanceMonitor | Callable[[], PerformanceMonitor] = get_default_monitor,
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: time each call of a sync or async function into ``monitor`` under ``name``."""
    import functools
    import inspect

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        label = name or func.__qualname__

        def target() -> PerformanceMonitor:
            return monitor if isinstance(monitor, PerformanceMonitor) else monitor()

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with Timer(label, target()):
                    return await func(*args, **kwargs)

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Timer(label, target()):
                return func(*args, **kwargs)

        return wrapper

    return decorate


__all__ = [
    "DEFAULT_WINDOW",
    "LatencyWindow",
    "PerformanceMonitor",
    "Timer",
    "get_default_monitor",
    "serve_metrics",
    "timed",
]
