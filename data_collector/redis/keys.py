"""Every Redis key the project writes is built here, from validated parts only.

Layout (``<p>`` is ``redis.prefix``, default ``dc``; ``<ex>`` the venue label ``exchange.name``
(``binance``; ``sim-binance`` for the demo and the simulator; ``binanceusdm`` and
``sim-binanceusdm`` for Binance USDⓈ-M futures); ``<sym>`` a canonical ccxt symbol such as
``SOL/USDT``, or ``BTC/USDT:USDT`` for a perpetual (the symbol is always the last part, so its
own colon is never mistaken for a separator); ``<ch>`` a channel such as ``trade`` or ``kline_1m``):

=====================================  =====================================================
``<p>:stream:<ex>:<ch>:<sym>``         Redis Stream of msgpack-packed events (field ``d``)
``<p>:latest:<ex>:<ch>:<sym>``         the last event of that stream (msgpack)
``<p>:book:<ex>:<sym>``                top-N order book (msgpack), only while in sync
``<p>:gaps:<ex>``                      Redis Stream of gap markers (stream, from_ms, to_ms)
``<p>:heartbeat:<component>:<inst>``   JSON heartbeat with a TTL, one per running collector or
                                       streamer (``<inst>``: ``metrics.instance``)
``<p>:<namespace>:<key>``              CacheManager values
=====================================  =====================================================
"""

from __future__ import annotations

import re

from data_collector.echo import shown_input
from data_collector.errors import UsageError
from data_collector.markets import normalize_market

_PART_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def _part(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _PART_RE.match(value):
        raise UsageError(
            f"invalid {kind} {shown_input(value)} for a Redis key: use letters, digits, '_', '.', '@', '-'"
        )
    return value


def key_part(kind: str, value: str) -> str:
    """``value`` when it may be one part of a key, else ``UsageError`` naming ``kind``."""
    return _part(kind, value)


def stream_key(prefix: str, exchange: str, channel: str, symbol: str) -> str:
    return f"{_part('prefix', prefix)}:stream:{_part('exchange', exchange)}:{_part('channel', channel)}:{normalize_market(symbol)}"


def latest_key(prefix: str, exchange: str, channel: str, symbol: str) -> str:
    return f"{_part('prefix', prefix)}:latest:{_part('exchange', exchange)}:{_part('channel', channel)}:{normalize_market(symbol)}"


def book_key(prefix: str, exchange: str, symbol: str) -> str:
    return f"{_part('prefix', prefix)}:book:{_part('exchange', exchange)}:{normalize_market(symbol)}"


def gaps_key(prefix: str, exchange: str) -> str:
    return f"{_part('prefix', prefix)}:gaps:{_part('exchange', exchange)}"


def heartbeat_key(prefix: str, component: str, instance: str) -> str:
    return (
        f"{_part('prefix', prefix)}:heartbeat:{_part('component', component)}:{_part('instance', instance)}"
    )


def heartbeat_pattern(prefix: str, component: str) -> str:
    """The SCAN pattern of every instance's heartbeat of ``component``."""
    return f"{_part('prefix', prefix)}:heartbeat:{_part('component', component)}:*"


def cache_key(prefix: str, namespace: str, key: str) -> str:
    """Cache keys are the caller's own strings; only the prefix and namespace are checked."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise UsageError("cache key must be a non-empty string of at most 1024 characters")
    return f"{_part('prefix', prefix)}:{_part('namespace', namespace)}:{key}"
