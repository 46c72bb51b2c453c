"""Helpers shared by the streaming tests (not a test module)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import redis

from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL
from tests.support.waiting import wait_for as wait_for  # re-exported for the streaming tests
from tests.support.waiting import wait_for_async as wait_for_async

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"]
CHANNELS = ["trade", "bookTicker", "kline_1m", "depth"]


def stream_config(
    sim: SimulatedExchange, prefix: str, redis_url: str = REDIS_URL, futures: bool = False, **streaming: Any
) -> dict[str, Any]:
    """A streamer config on ``sim`` (its USDⓈ-M futures with ``futures``) under ``prefix``."""
    return {
        "exchange": sim.futures_exchange_config() if futures else sim.exchange_config(),
        "redis": {"url": redis_url, "prefix": prefix, "socket_timeout_s": 1.0, "connect_timeout_s": 1.0},
        "logging": {"file": None},
        "performance": {"ws_batch_interval": 0.02},
        "streaming": {"watchdog_s": 1.0, "reconnect_min_backoff_s": 0.2, **streaming},
    }


def sent_by_stream(sim: SimulatedExchange, symbols: list[str]) -> dict[tuple[str, str], dict[str, int]]:
    """(channel, symbol) -> the simulator's {count, last_id}."""
    by_stream = {s.replace("/", "").lower(): s for s in symbols}
    out = {}
    for name, info in sim.ws_sent().items():
        sym, _, channel = name.partition("@")
        channel = "depth" if channel.startswith("depth") else channel
        out[(channel, by_stream[sym])] = info
    return out


def entries(client: redis.Redis, key: str) -> list[tuple[str, dict[str, Any]]]:
    return [(i.decode(), msgpack.unpackb(f[b"d"])) for i, f in client.xrange(key)]


async def settle_quietly(streamer: Any, sim: SimulatedExchange) -> None:
    """Freeze the simulator's clock (it then produces nothing) and wait until all is written."""
    sim.clock.freeze()
    await asyncio.sleep(0.3)
    last = -1
    while True:
        m = streamer.get_metrics()
        done = m["written"] + m["deduplicated"] + m["dropped"] + m["malformed"]
        if m["queue_depth"] == 0 and done == last:
            return
        last = done
        await asyncio.sleep(0.3)


async def read_until(stdout: asyncio.StreamReader | None, marker: bytes, timeout_s: float = 30.0) -> bytes:
    """A subprocess's output up to the first line holding ``marker`` (its status line, say)."""
    assert stdout is not None
    seen = b""
    while marker not in seen:
        line = await asyncio.wait_for(stdout.readline(), timeout_s)
        assert line, seen
        seen += line
    return seen


def gap_entries(client: redis.Redis, prefix: str, venue: str = "sim-binance") -> list[dict[str, str]]:
    """Every marker of the gaps stream under ``prefix``, fields decoded, oldest first."""
    return [
        {k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(f"{prefix}:gaps:{venue}")
    ]


def streamer_on(
    sim: SimulatedExchange,
    prefix: str,
    symbols: list[str],
    channels: list[str],
    futures: bool = False,
    **streaming: Any,
) -> Any:
    """An ``OptimizedWebSocketStreamer`` of ``channels`` × ``symbols`` from ``sim`` (its USDⓈ-M
    futures with ``futures``) into the shared Redis; ``streaming``: more ``streaming`` settings."""
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    return OptimizedWebSocketStreamer(
        symbols=symbols,
        redis_client=REDIS_URL,
        channels=channels,
        config=stream_config(sim, prefix, futures=futures, **streaming),
    )


def okx_stream_config(sim: SimulatedExchange, prefix: str, **streaming: Any) -> dict[str, Any]:
    """A streamer config on ``sim``'s OKX venue (label ``sim-okx``) under ``prefix``."""
    ccxt_config = sim.okx_ccxt_config()
    config = stream_config(sim, prefix, **streaming)
    config["exchange"] = {
        "id": "okx",
        "name": "sim-okx",
        "urls": ccxt_config["urls"],
        "options": ccxt_config["options"],
        "ws_url": sim.okx.ws_url,
    }
    return config


def record_okx_books(
    sim: SimulatedExchange, depth: int
) -> dict[tuple[str, int], tuple[list[Any], list[Any]]]:
    """The simulator's true top ``depth`` levels of every OKX book state it sends, by
    ``(instId, seqId)``, as floats (what a published book must equal)."""
    hub = sim.okx.hub
    flush = hub._flush_book
    truth: dict[tuple[str, int], tuple[list[Any], list[Any]]] = {}

    def recording(inst: Any, now: int) -> None:
        flush(inst, now)
        bids, asks = sim.okx.venue.levels(inst, depth)
        truth[(inst.inst_id, inst.book.update_id)] = (
            [[float(p), float(q)] for p, q, *_ in bids],
            [[float(p), float(q)] for p, q, *_ in asks],
        )

    hub._flush_book = recording  # type: ignore[method-assign]
    return truth


def tap_books(streamer: Any) -> list[tuple[str, dict[str, Any] | None]]:
    """Every book the streamer publishes (``None``: the key deleted), in order."""
    keeper = streamer._service.books
    publish = keeper._publish
    seen: list[tuple[str, dict[str, Any] | None]] = []

    def tapped(key: str, payload: bytes | None) -> None:
        seen.append((key, msgpack.unpackb(payload) if payload is not None else None))
        publish(key, payload)

    keeper._publish = tapped
    return seen


def delete_prefix(prefix: str) -> None:
    """Delete every key under ``prefix`` (a second prefix a test made beside ``redis_prefix``)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
