"""Bad frames from a real WebSocket server are counted and skipped; the connection stays up."""

from __future__ import annotations

import time

import orjson
import redis
from websockets.asyncio.server import ServerConnection, serve

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from tests.support.services import REDIS_URL, free_port
from tests.support.streaming import entries, wait_for


def wrapped(data: object) -> str:
    return orjson.dumps({"stream": "solusdt@trade", "data": data}).decode()


def trade(trade_id: int, **over: object) -> dict[str, object]:
    now = int(time.time() * 1000)
    data: dict[str, object] = {
        "e": "trade",
        "E": now,
        "s": "SOLUSDT",
        "t": trade_id,
        "p": "101.5",
        "q": "2",
        "T": now,
        "m": False,
        "M": True,
    }
    data.update(over)
    return data


async def test_bad_frames_are_counted_and_skipped(redis_prefix: str) -> None:
    bad = [
        "{not json",
        "[]",
        "null",
        wrapped(trade(2, p="NaN")),
        wrapped(trade(3, p="Infinity")),
        wrapped(trade(4, p="-5")),
        wrapped(trade(5, q="abc")),
        wrapped(trade(6, T=42)),
        wrapped(trade(7, T=4_102_444_800_000)),
        wrapped(trade(8, t="8")),
        wrapped(trade(9, s="BTCUSDT")),
        orjson.dumps({"stream": "nosuch@trade", "data": trade(10)}).decode(),
        wrapped(trade(11, pad="x" * 5000)),  # larger than max_frame_bytes
        orjson.dumps({"result": None, "id": 1}).decode(),  # a SUBSCRIBE answer: not data, not bad
    ]
    frames = [wrapped(trade(1)), *bad, wrapped(trade(12))]
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    port = free_port()
    async with serve(handler, "127.0.0.1", port, compression=None):
        streamer = OptimizedWebSocketStreamer(
            symbols=["SOL/USDT"],
            redis_client=REDIS_URL,
            channels=["trade"],
            ws_url=f"ws://127.0.0.1:{port}",
            rest_url=f"http://127.0.0.1:{port}",
            batch_interval=0.01,
            config={
                "redis": {"prefix": redis_prefix},
                "logging": {"file": None},
                "streaming": {"max_frame_bytes": 4096, "watchdog_s": 60},
            },
        )
        async with streamer:
            await wait_for(lambda: streamer.get_metrics()["written"] == 2, what="the two good trades")
            metrics = streamer.get_metrics()
    assert len(connections) == 1 and metrics["reconnects"] == 0
    assert metrics["malformed"] == len(bad) - 1
    client = redis.Redis.from_url(REDIS_URL)
    got = entries(client, f"{redis_prefix}:stream:binance:trade:SOL/USDT")
    assert [e["id"] for _, e in got] == [1, 12]
    client.close()
