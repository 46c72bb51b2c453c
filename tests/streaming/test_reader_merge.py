"""``MarketDataReader`` over a trade stream and its ``@repair`` companion, written by hand into the
real Redis: every entry once, in id order, and nothing from beyond a trimmed live stream."""

from __future__ import annotations

import msgpack
import redis

from data_collector.streaming.reader import MarketDataReader
from tests.support.services import REDIS_URL


def _add(client: redis.Redis, key: str, ids: range, maxlen: int | None = None) -> None:
    for i in ids:
        event = {"id": i, "trade_ms": 1000 + i}
        client.xadd(key, {"d": msgpack.packb(event)}, id=f"{1000 + i}-{i}", maxlen=maxlen, approximate=False)


async def test_range_and_last_merge_the_repair_and_drop_what_aged_out_of_the_live_stream(
    redis_prefix: str,
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    live = f"{redis_prefix}:stream:sim-binance:trade:SOL/USDT"
    repair = f"{redis_prefix}:stream:sim-binance:trade@repair:SOL/USDT"
    _add(client, live, range(0, 10))
    _add(client, live, range(15, 30))
    _add(client, repair, range(10, 15))  # the hole 10..14, fetched back
    async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange="sim-binance") as reader:
        assert [e["id"] for e in await reader.range("SOL/USDT", "trade", 0, 10**6)] == list(range(30))
        assert [e["id"] for e in await reader.last("SOL/USDT", "trade", 25)] == list(range(5, 30))
        # The live stream ages out past the repaired ids (MAXLEN): they go with it, no hole opens.
        _add(client, live, range(30, 40), maxlen=20)
        assert [e["id"] for e in await reader.range("SOL/USDT", "trade", 0, 10**6)] == list(range(20, 40))
        assert [e["id"] for e in await reader.last("SOL/USDT", "trade", 100)] == list(range(20, 40))
    client.close()
