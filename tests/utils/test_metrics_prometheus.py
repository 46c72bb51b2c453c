"""A scrape of /metrics over HTTP shows what the code recorded through the monitor."""

from __future__ import annotations

import math
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from data_collector.errors import UsageError
from tests.support.services import free_port
from utils.metrics import Metrics
from utils.performance_monitor import PerformanceMonitor


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_scrape_matches_what_was_recorded() -> None:
    metrics = Metrics()
    monitor = PerformanceMonitor(metrics=metrics)
    with metrics.serve(0) as server:
        before = scrape(server.url)
        assert math.isinf(before[("dc_seconds_since_last_write", ())])
        assert math.isinf(before[("dc_seconds_since_last_stream_message", ())])
        for i in range(40):
            monitor.record_api_call(20.0 + i, success=i % 8 != 0, status=429 if i % 10 == 0 else 200)
        monitor.record_retry(3)
        monitor.record_db_operation("COPY", 12.5, rows=1000)
        monitor.record_db_operation("COPY", 7.5, rows=500)
        monitor.record_db_operation("SELECT", 1.0, rows=77)
        monitor.record_ws_message(latency_ms=3.0, count=10)
        monitor.record_ws_message(count=5)
        monitor.record_gaps(2)
        monitor.set_queue_depth(17)
        got = scrape(server.url)
    assert got[("dc_requests_total", (("outcome", "ok"),))] == 35
    assert got[("dc_requests_total", (("outcome", "error"),))] == 5
    assert got[("dc_rate_limited_total", ())] == 4
    assert got[("dc_retries_total", ())] == 3
    assert got[("dc_request_duration_seconds_count", ())] == 40
    assert got[("dc_request_duration_seconds_sum", ())] == pytest.approx(
        sum(20.0 + i for i in range(40)) / 1000
    )
    assert got[("dc_request_duration_seconds_bucket", (("le", "0.025"),))] == 6  # 20..25 ms
    assert got[("dc_rows_written_total", ())] == 1500
    assert got[("dc_db_operations_total", (("op", "COPY"),))] == 2
    assert got[("dc_db_operations_total", (("op", "SELECT"),))] == 1
    assert got[("dc_db_operation_duration_seconds_count", ())] == 3
    assert got[("dc_ws_messages_total", ())] == 15
    assert got[("dc_ws_message_latency_seconds_count", ())] == 1
    assert got[("dc_gaps_found_total", ())] == 2
    assert got[("dc_queue_depth", ())] == 17
    assert 0 <= got[("dc_seconds_since_last_write", ())] < 60
    assert 0 <= got[("dc_seconds_since_last_stream_message", ())] < 60
    summary = monitor.get_summary()
    assert summary["api_calls"]["count"] == 40 and summary["db_operations"]["rows_written"] == 1500


def test_registries_are_isolated_and_server_closes() -> None:
    one, two = Metrics(), Metrics()
    one.rows_written(5)
    port = free_port()
    server = two.serve(port)
    try:
        assert scrape(server.url)[("dc_rows_written_total", ())] == 0
    finally:
        server.close()
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_port_in_use_is_a_usage_error() -> None:
    metrics = Metrics()
    with metrics.serve(0) as server, pytest.raises(UsageError, match="cannot serve /metrics"):
        Metrics().serve(server.port)


def test_serve_metrics_from_a_port_setting() -> None:
    from utils.performance_monitor import serve_metrics

    assert serve_metrics(None) is None
    monitor = PerformanceMonitor()
    server = serve_metrics(0, monitor)
    assert server is not None
    try:
        monitor.record_db_operation("INSERT", 3.0, rows=42)
        assert scrape(server.url)[("dc_rows_written_total", ())] == 42
    finally:
        server.close()


def test_batched_ws_latencies_match_one_by_one_observations() -> None:
    rng = np.random.default_rng(3)
    latencies_ms = np.concatenate([rng.exponential(5, 5000), [0.5, 1.0, 2.5, 10_000.0, 0.0]])
    one, many = Metrics(), Metrics()
    single = PerformanceMonitor(metrics=one)
    batched = PerformanceMonitor(metrics=many)
    for value in latencies_ms:
        single.record_ws_message(latency_ms=float(value))
    batched.record_ws_messages(latencies_ms[:2000])
    batched.record_ws_messages(latencies_ms[2000:], count=len(latencies_ms) - 2000 + 7)
    with one.serve(0) as a, many.serve(0) as b:
        got_one, got_many = scrape(a.url), scrape(b.url)
    buckets = [k for k in got_one if k[0] == "dc_ws_message_latency_seconds_bucket"]
    assert len(buckets) == 15
    for key in buckets + [("dc_ws_message_latency_seconds_count", ())]:
        assert got_many[key] == got_one[key], key
    assert got_many[("dc_ws_message_latency_seconds_sum", ())] == pytest.approx(
        got_one[("dc_ws_message_latency_seconds_sum", ())]
    )
    assert got_many[("dc_ws_messages_total", ())] == got_one[("dc_ws_messages_total", ())] + 7
    s1, s2 = single.get_summary()["ws_messages"], batched.get_summary()["ws_messages"]
    assert s2["count"] == s1["count"] + 7
    assert s2["latency_ms"]["p99"] == pytest.approx(s1["latency_ms"]["p99"])
