"""Helpers of the gap-free fault tests (issue 15), shared by the Binance and OKX ones: a fast
simulated clock, the repair check and the accounting of marked holes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis

from data_collector.simulator import SimulatedExchange
from tests.chaos.report import ScenarioReport
from tests.support.services import REDIS_URL
from tests.support.streaming import gap_entries, okx_stream_config, wait_for


@asynccontextmanager
async def fast_clock(sim: SimulatedExchange, speed: int) -> AsyncIterator[None]:
    """Run ``sim``'s clock ``speed`` times faster than wall time while inside (the market's tapes
    are then that much denser) and until it is frozen (``sim.clock.freeze()`` stops the flow);
    stopped, not frozen, on the way out."""
    running = True

    async def run() -> None:
        while running:
            if sim.clock.frozen_ms is None:
                sim.clock.advance(20 * (speed - 1))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        running = False
        await asyncio.gather(task, return_exceptions=True)


async def drop_and_reconnect(
    streamer: Any, drop: Callable[[], object], report: ScenarioReport, n: int
) -> None:
    """Drop every WebSocket (``drop``), count the fault, wait for the streamer's ``n``-th
    reconnect, then let it read for half a second."""
    reconnects = streamer.get_metrics()["reconnects"]
    drop()
    report.fault("ws_drop")
    await wait_for(
        lambda: streamer.get_metrics()["reconnects"] > reconnects and streamer.connected,
        timeout_s=30,
        what=f"reconnect {n}",
    )
    await asyncio.sleep(0.5)


def all_repaired(client: redis.Redis, prefix: str, venue: str, channel: str) -> bool:
    """Whether every exact (``first_seq``) gap marker of ``channel`` has its ``repaired`` marker."""
    markers = [m for m in gap_entries(client, prefix, venue) if m["channel"] == channel]
    opened = sum(1 for m in markers if m.get("first_seq") and m["reason"] != "repaired")
    return opened == sum(1 for m in markers if m["reason"] == "repaired")


def unmarked_holes(
    times_ms: list[int], markers: list[dict[str, str]], hole_ms: int, slack_ms: int = 1000
) -> int:
    """Holes longer than ``hole_ms`` between consecutive event times of one stream that no gap
    marker of that stream covers (a marker covers a hole when it spans it, give or take
    ``slack_ms``)."""
    spans = [(int(m["from_ms"]), int(m["to_ms"])) for m in markers]
    holes = 0
    for a, b in zip(times_ms, times_ms[1:], strict=False):
        if b - a > hole_ms and not any(lo - slack_ms <= a and b <= hi + slack_ms for lo, hi in spans):
            holes += 1
    return holes


def okx_streamer_on(sim: SimulatedExchange, prefix: str, symbols: list[str], channels: list[str]) -> Any:
    """An ``OptimizedWebSocketStreamer`` of ``channels`` × ``symbols`` from ``sim``'s OKX venue."""
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    return OptimizedWebSocketStreamer(
        symbols=symbols,
        redis_client=REDIS_URL,
        channels=channels,
        config=okx_stream_config(sim, prefix),
    )


def open_trade_gaps(client: redis.Redis, prefix: str, venue: str) -> set[tuple[str, str, str]]:
    """``(stream, first_seq, last_seq)`` of every exact gap marker without its ``repaired`` one."""
    markers = gap_entries(client, prefix, venue)
    opened = {(m["stream"], m["first_seq"], m["last_seq"]) for m in markers if m.get("first_seq")}
    return opened - {
        (m["stream"], m["first_seq"], m["last_seq"]) for m in markers if m["reason"] == "repaired"
    }


def restart_marked(
    client: redis.Redis, prefix: str, venue: str, streams: set[str], kline_streams: int
) -> bool:
    """Whether each of ``streams`` has a ``redis_restart`` marker, every exact gap its
    ``repaired`` one, and ``kline_streams`` kline streams their refill's ``repaired`` marker."""
    markers = gap_entries(client, prefix, venue)
    marked = {m["stream"] for m in markers if m["reason"] == "redis_restart"}
    opened = sum(1 for m in markers if m.get("first_seq") and m["reason"] != "repaired")
    repaired = sum(1 for m in markers if m.get("first_seq") and m["reason"] == "repaired")
    refilled = {
        m["stream"] for m in markers if m["channel"].startswith("kline_") and m["reason"] == "repaired"
    }
    return marked >= streams and opened == repaired and len(refilled) == kline_streams


def restart_unmarked(client: redis.Redis, markers: list[dict[str, str]], key: str) -> bool:
    """Whether stream ``key`` lacks a ``redis_restart`` marker over all it lost: everything before
    its oldest entry left (give or take a minute, a candle's)."""
    oldest = client.xrange(key, count=1)
    first_ms = int(oldest[0][0].decode().partition("-")[0]) if oldest else 0
    mine = [m for m in markers if m["stream"] == key and m["reason"] == "redis_restart"]
    return not any(int(m["from_ms"]) == 0 and int(m["to_ms"]) >= first_ms - 60_000 for m in mine)
