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


def fdiff(first: int, last: int, prev: int, bids: list[list[float]], event_ms: int) -> dict[str, Any]:
    """A USDⓈ-M diff: ``prev`` is its ``pu`` (ids need not be contiguous, as on Binance)."""
    return {**diff(first, last, bids), "prev_update_id": prev, "event_ms": event_ms}


async def test_futures_books_chain_by_pu_and_a_break_marks_a_gap() -> None:
    published: list[dict[str, Any] | None] = []
    breaks: list[tuple[str, int, int]] = []
    rest = StubRest(
        [
            {"lastUpdateId": 105, "bids": [["100", "1"], ["99", "1"]], "asks": [["101", "1"]]},
            {"lastUpdateId": 300, "bids": [["90", "5"]], "asks": [["91", "5"]]},
        ]
    )
    metrics = StreamMetrics()
    keeper = BookKeeper(
        ["BTC/USDT:USDT"],
        rest=rest,  # type: ignore[arg-type]
        metrics=metrics,
        publish=lambda key, payload: published.append(None if payload is None else msgpack.unpackb(payload)),
        prefix="t",
        exchange="binanceusdm",
        depth=10,
        publish_interval_ms=0,
        snapshot_limit=100,
        chained_by_pu=True,
        on_break=lambda *gap: breaks.append(gap),
    )
    symbol = "BTC/USDT:USDT"
    keeper.on_diff(symbol, fdiff(96, 102, 95, [[98.0, 1.0]], 1))  # u < lastUpdateId: dropped
    # U <= lastUpdateId <= u: the first applied (spot's U <= lastUpdateId + 1 <= u would refuse it).
    keeper.on_diff(symbol, fdiff(103, 105, 102, [[99.0, 0.0]], 2))
    await wait_for(lambda: keeper.snapshot(symbol) is not None, what="the first sync")
    assert keeper.snapshot(symbol) == {
        "symbol": symbol,
        "update_id": 105,
        "bids": [[100.0, 1.0]],
        "asks": [[101.0, 1.0]],
    }
    keeper.on_diff(symbol, fdiff(110, 112, 105, [[100.0, 2.0]], 3))  # ids jump, pu follows on
    assert keeper.snapshot(symbol)["update_id"] == 112  # type: ignore[index]
    keeper.on_diff(symbol, fdiff(120, 121, 115, [[100.0, 3.0]], 7))  # pu 115 != 112: one was lost
    assert keeper.snapshot(symbol) is None and metrics.book_resyncs == 1
    assert breaks == [(symbol, 3, 7)] and published[-1] is None
    keeper.on_diff(symbol, fdiff(299, 301, 290, [[89.0, 1.0]], 9))
    await wait_for(lambda: keeper.snapshot(symbol) is not None, what="the rebuilt book")
    books = [b for b in published if b is not None]
    assert [b["update_id"] for b in books] == [105, 112, 301]  # never 121
    assert books[-1]["bids"] == [[90.0, 5.0], [89.0, 1.0]]
    await keeper.close()
