"""The one percentile definition: equal to numpy's default on any data, used by every reporter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_collector.percentiles import percentiles
from data_collector.streaming.metrics import StreamMetrics
from utils.performance_monitor import LatencyWindow

FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def test_empty_and_single_sample() -> None:
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert percentiles([3.5]) == {"p50": 3.5, "p95": 3.5, "p99": 3.5}


def test_one_to_a_hundred() -> None:
    p = percentiles(float(i) for i in range(1, 101))
    assert p == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.05), "p99": pytest.approx(99.01)}


@settings(derandomize=True, max_examples=200)
@given(st.lists(FINITE, min_size=1, max_size=300), st.lists(st.integers(1, 99), min_size=1, max_size=5))
def test_equals_numpy_default_on_any_data(data: list[float], qs: list[int]) -> None:
    ours = percentiles(data, qs)
    expected = np.percentile(np.asarray(data), qs)
    for q, value in zip(qs, expected, strict=True):
        assert ours[f"p{q}"] == pytest.approx(float(value), rel=1e-9, abs=1e-9)


def test_streamer_and_monitor_report_the_same_p99_for_the_same_samples() -> None:
    rng = np.random.default_rng(7)
    samples = rng.exponential(2.0, 5_000).tolist()
    metrics = StreamMetrics()
    metrics.event_latency_ms.extend(samples)
    window = LatencyWindow(10_000)
    window.add_many(samples)
    streamer_p99 = metrics.snapshot(0)["latency_ms"]["event_to_redis"]["p99"]
    monitor_p99 = window.summary()["p99"]
    assert streamer_p99 == pytest.approx(monitor_p99, abs=1e-3)
