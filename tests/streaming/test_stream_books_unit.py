"""BookKeeper's update-id rules, with a stub in place of the REST client (pure logic)."""

from __future__ import annotations

from typing import Any

import msgpack

from data_collector.optimized_websocket import monitor_hook
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.order_book import BookKeeper
from tests.support.streaming import wait_for


class StubRest:
    """Serves prepared depth snapshots in order."""

    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self.snapshots = snapshots
        self.calls = 0

    async def depth(self, symbol: str, limit: int) -> dict[str, Any]:
        self.calls += 1
        return self.snapshots[min(self.calls, len(self.snapshots)) - 1]


def diff(
    first: int, last: int, bids: list[list[float]], asks: list[list[float]] | None = None
) -> dict[str, Any]:
    return {"first_update_id": first, "update_id": last, "event_ms": 1, "bids": bids, "asks": asks or []}


async def test_snapshot_plus_diffs_then_a_gap_deletes_the_key_and_rebuilds() -> None:
    published: list[tuple[str, dict[str, Any] | None]] = []
    rest = StubRest(
        [
            {"lastUpdateId": 105, "bids": [["100", "1"], ["99", "1"]], "asks": [["101", "1"]]},
            {"lastUpdateId": 300, "bids": [["90", "5"]], "asks": [["91", "5"]]},
        ]
    )
    metrics = StreamMetrics()
    keeper = BookKeeper(
        ["SOL/USDT"],
        rest=rest,  # type: ignore[arg-type]
        metrics=metrics,
        publish=lambda key, payload: published.append(
            (key, None if payload is None else msgpack.unpackb(payload))
        ),
        prefix="t",
        exchange="binance",
        depth=10,
        publish_interval_ms=0,
        snapshot_limit=100,
    )
    keeper.on_diff("SOL/USDT", diff(100, 104, [[98.0, 1.0]]))  # older than the snapshot: dropped
    keeper.on_diff("SOL/USDT", diff(105, 107, [[99.0, 0.0]]))  # straddles lastUpdateId + 1
    await wait_for(lambda: keeper.snapshot("SOL/USDT") is not None, what="the first sync")
    assert keeper.snapshot("SOL/USDT") == {
        "symbol": "SOL/USDT",
        "update_id": 107,
        "bids": [[100.0, 1.0]],
        "asks": [[101.0, 1.0]],
    }
    keeper.on_diff("SOL/USDT", diff(108, 110, [[100.0, 2.0]]))
    keeper.on_diff("SOL/USDT", diff(112, 115, [[100.0, 3.0]]))  # 111 is missing
    assert keeper.snapshot("SOL/USDT") is None and metrics.book_resyncs == 1
    assert published[-1] == ("t:book:binance:SOL/USDT", None)
    keeper.on_diff("SOL/USDT", diff(301, 302, [[89.0, 1.0]]))
    await wait_for(lambda: keeper.snapshot("SOL/USDT") is not None, what="the rebuilt book")
    books = [p for _, p in published if p is not None]
    # Published: the first sync (107), the diff to 110, the rebuilt book (302); never 115.
    assert [b["update_id"] for b in books] == [107, 110, 302]
    assert books[-1]["bids"] == [[90.0, 5.0], [89.0, 1.0]]
    await keeper.close()


def test_monitor_hook_feeds_count_and_worst_latency() -> None:
    calls: list[tuple[float | None, int]] = []

    class Monitor:
        def record_ws_message(self, latency_ms: float | None = None, count: int = 1) -> None:
            calls.append((latency_ms, count))

    hook = monitor_hook(Monitor())
    hook(3, [1.0, 5.0, 2.0])
    hook(0, [])
    assert calls == [(5.0, 3), (None, 0)]
