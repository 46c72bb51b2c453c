"""A streamer whose thread or task dies says so: start(), get_metrics() and stop() re-raise."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from tests.support.services import REDIS_URL, free_port


def _streamer(prefix: str) -> OptimizedWebSocketStreamer:
    port = free_port()  # nothing listens: the streamer must not get as far as connecting
    return OptimizedWebSocketStreamer(
        symbols=["BTC/USDT"],
        redis_client=REDIS_URL,
        channels=["trade"],
        ws_url=f"ws://127.0.0.1:{port}/stream",
        rest_url=f"http://127.0.0.1:{port}",
        config={"redis": {"prefix": prefix}, "logging": {"file": None}},
        heartbeat=False,
    )


def _fail_service_start(streamer: OptimizedWebSocketStreamer, error: Exception) -> None:
    # Fault injection at the one seam that runs inside the streamer's own thread.
    async def failing_start() -> None:
        raise error

    service: Any = streamer._service
    service.start = failing_start


def test_background_thread_death_is_reraised(redis_prefix: str) -> None:
    streamer = _streamer(redis_prefix)
    _fail_service_start(streamer, RuntimeError("writer could not start"))
    with pytest.raises(RuntimeError, match="writer could not start"):
        streamer.start()
    with pytest.raises(RuntimeError, match="writer could not start"):
        streamer.get_metrics()
    with pytest.raises(RuntimeError, match="writer could not start"):
        streamer.stop()


async def test_task_death_inside_a_running_loop_is_reraised(redis_prefix: str) -> None:
    streamer = _streamer(redis_prefix)
    _fail_service_start(streamer, RuntimeError("writer could not start"))
    streamer.start()
    task = streamer._task
    assert task is not None
    await asyncio.wait({task}, timeout=10)
    assert isinstance(task.exception(), RuntimeError)  # retrieved: no "never retrieved" noise
    with pytest.raises(RuntimeError, match="writer could not start"):
        streamer.get_metrics()
    with pytest.raises(RuntimeError, match="writer could not start"):
        await streamer.astop()
