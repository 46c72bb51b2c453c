"""PerformanceMonitor and Timer: the user's snippet, exact percentiles, threads, bounded memory."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc

import numpy as np
import psutil
import pytest

from utils.performance_monitor import LatencyWindow, PerformanceMonitor, Timer, get_default_monitor, timed


def do_something() -> None:
    sum(range(10_000))


def test_user_snippet_runs_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    monitor = PerformanceMonitor()
    monitor.record_api_call(duration_ms=45.2, success=True)
    monitor.record_db_operation("INSERT", duration_ms=12.5, rows=1000)
    with Timer("expensive_operation") as t:
        do_something()
    print(f"Took {t.elapsed_ms}ms")
    monitor.print_summary()
    out = capsys.readouterr().out
    assert t.elapsed_ms > 0
    assert f"Took {t.elapsed_ms}ms" in out
    expected_in_order = [
        "PERFORMANCE SUMMARY",
        "Uptime: 0:00:0",
        "Throughput:",
        "API calls:",
        "req/s",
        "DB operations:",
        "ops/s",
        "WS messages:",
        "msg/s",
        "Latency (API calls):",
        "Avg: 45.20ms",
        "P50: 45.20ms",
        "P95: 45.20ms",
        "P99: 45.20ms",
        "Latency (DB operations):",
        "Avg: 12.50ms",
        "P99: 12.50ms",
        "System resources:",
        "CPU:",
        "Memory:",
        "Disk:",
        "Process RSS:",
    ]
    position = 0
    for text in expected_in_order:
        found = out.find(text, position)
        assert found >= 0, f"{text!r} missing or out of order in:\n{out}"
        position = found + len(text)


def test_percentiles_match_numpy_on_recorded_data() -> None:
    rng = np.random.default_rng(7)
    api = rng.lognormal(3, 1, 50_000)
    db = rng.exponential(10, 20_000)
    ws = rng.gamma(2, 2, 5_000)
    monitor = PerformanceMonitor()
    for i, value in enumerate(api):
        monitor.record_api_call(float(value), success=i % 10 != 0, status=429 if i % 100 == 0 else 200)
    for value in db:
        monitor.record_db_operation("copy", float(value), rows=10)
    for value in ws:
        monitor.record_ws_message(latency_ms=float(value))
    monitor.record_ws_message(count=5)
    summary = monitor.get_summary()
    for section, data in (("api_calls", api), ("db_operations", db), ("ws_messages", ws)):
        latency = summary[section]["latency_ms"]
        for key, q in (("p50", 50), ("p95", 95), ("p99", 99)):
            assert latency[key] == pytest.approx(float(np.percentile(data, q)), rel=1e-12)
        assert latency["avg"] == pytest.approx(float(data.mean()), rel=1e-9)
    assert summary["api_calls"]["count"] == 50_000
    assert summary["api_calls"]["errors"] == 5_000
    assert summary["api_calls"]["rate_limited"] == 500
    assert summary["db_operations"]["rows_written"] == 200_000
    assert summary["db_operations"]["by_op"] == {"COPY": {"count": 20_000, "rows": 200_000}}
    assert summary["ws_messages"]["count"] == 5_005
    assert summary["last_write_ms"] is not None and summary["last_message_ms"] is not None


def test_window_keeps_the_most_recent_samples() -> None:
    window = LatencyWindow(capacity=1000)
    data = np.arange(2500, dtype=float)
    for value in data[:1700]:
        window.add(float(value))
    window.add_many(data[1700:])
    assert window.count == 2500
    assert sorted(window.values()) == list(data[-1000:])
    summary = window.summary()
    assert summary["p50"] == pytest.approx(float(np.percentile(data[-1000:], 50)))
    big = LatencyWindow(capacity=10)
    big.add_many(np.arange(25.0))
    assert sorted(big.values()) == list(range(15, 25))


def test_thread_safe_counts() -> None:
    monitor = PerformanceMonitor()

    def worker() -> None:
        for _ in range(20_000):
            monitor.record_api_call(1.0)
            monitor.record_db_operation("INSERT", 2.0, rows=1)
            monitor.record_ws_message()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = monitor.get_summary()
    assert summary["api_calls"]["count"] == 80_000
    assert summary["db_operations"]["rows_written"] == 80_000
    assert summary["ws_messages"]["count"] == 80_000


def test_memory_stays_flat_over_ten_million_records() -> None:
    """RSS over 10 million records (fast), plus tracemalloc's exact count over the first million."""
    monitor = PerformanceMonitor(window=100_000)
    record = monitor.record_api_call
    for _ in range(200_000):  # fill the window first
        record(1.5, True)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(1_000_000):
            record(1.5, True)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 16 * 1024, (before, after)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    for _ in range(10_000_000):
        record(2.5, False)
    rss_after = process.memory_info().rss
    assert monitor.get_summary()["api_calls"]["count"] == 11_200_000
    assert rss_after - rss_before < 4 * 2**20, (rss_before, rss_after)


def test_timer_sync_async_and_reporting() -> None:
    monitor = PerformanceMonitor()
    with Timer("load", monitor) as t:
        time.sleep(0.01)
    assert t.elapsed_ms >= 10
    frozen = t.elapsed_ms
    time.sleep(0.002)
    assert t.elapsed_ms == frozen

    async def run() -> Timer:
        async with Timer("fetch", monitor, kind="api") as at:
            await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError), Timer("fail", monitor, kind="api"):
            raise RuntimeError("boom")
        async with Timer("COPY", monitor, kind="db") as dbt:
            dbt.rows = 500
        return at

    at = asyncio.run(run())
    assert at.elapsed_ms >= 10
    summary = monitor.get_summary()
    assert summary["timings_ms"]["load"]["count"] == 1
    assert summary["api_calls"]["count"] == 2 and summary["api_calls"]["errors"] == 1
    assert summary["db_operations"]["rows_written"] == 500


def test_timed_decorator_and_default_monitor() -> None:
    monitor = PerformanceMonitor()

    @timed(monitor)
    def work() -> int:
        return 1

    @timed(monitor, name="async_work")
    async def awork() -> int:
        return 2

    assert work() == 1 and asyncio.run(awork()) == 2
    names = monitor.get_summary()["timings_ms"]
    assert names[work.__qualname__]["count"] == 1 and names["async_work"]["count"] == 1
    assert get_default_monitor() is get_default_monitor()
    assert get_default_monitor().metrics is not None
