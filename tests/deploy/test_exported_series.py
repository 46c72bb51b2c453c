"""The streamer's own counters reach the Prometheus registry through the monitor (no server
needed): what the dashboard's reconnect, dropped, gap and heartbeat panels read."""

from __future__ import annotations

import time

from data_collector.optimized_websocket import monitor_events
from data_collector.streaming.metrics import StreamMetrics
from utils.metrics import Metrics
from utils.performance_monitor import PerformanceMonitor


def test_stream_counts_and_heartbeat_reach_the_registry() -> None:
    monitor = PerformanceMonitor(metrics=Metrics())
    assert monitor.metrics is not None
    registry = monitor.metrics.registry
    assert registry.get_sample_value("dc_seconds_since_last_heartbeat") == float("inf")
    stream = StreamMetrics()
    stream.on_event = monitor_events(monitor)
    for _ in range(2):
        stream.add_reconnect()
    stream.add_gap()
    for _ in range(3):
        stream.add_dropped()
    beat_ms = int(time.time() * 1000) - 4000
    stream.heartbeat_written(beat_ms)
    assert (stream.reconnects, stream.gaps, stream.dropped) == (2, 1, 3)
    assert registry.get_sample_value("dc_stream_reconnects_total") == 2
    assert registry.get_sample_value("dc_gaps_found_total") == 1
    assert registry.get_sample_value("dc_stream_dropped_total") == 3
    age = registry.get_sample_value("dc_seconds_since_last_heartbeat")
    assert age is not None and 4.0 <= age < 60.0
    summary = monitor.get_summary()
    assert (summary["stream_reconnects"], summary["stream_dropped"]) == (2, 3)
    assert summary["last_heartbeat_ms"] == beat_ms


def test_request_weight_used_expires_with_the_exchange_minute() -> None:
    metrics = Metrics()
    metrics.request_weight(sent=20, used=120, limit=6000, budget=5940, resets_in_s=30.0)
    metrics.request_weight(sent=2, used=122, limit=6000, budget=5940, resets_in_s=30.0)
    value = metrics.registry.get_sample_value
    assert value("dc_request_weight_total") == 22
    assert (value("dc_request_weight_used"), value("dc_request_weight_limit")) == (122, 6000)
    assert value("dc_request_weight_budget") == 5940
    metrics.request_weight(sent=1, used=5, limit=6000, budget=5940, resets_in_s=-0.001)
    assert value("dc_request_weight_used") == 0
