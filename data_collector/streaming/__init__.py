"""Live market data into Redis: the parts behind ``OptimizedWebSocketStreamer``.

One module per concern: :mod:`.connection` (one WebSocket, reconnects, watchdog),
:mod:`.normalize` (payload -> typed event + entry id), :mod:`.writer` (bounded buffer ->
pipelined, idempotent Redis writes), :mod:`.redis_conn` (redis-py handshake, hiredis fast path),
:mod:`.order_book` (snapshot + diffs), :mod:`.trade_repair` (lost aggTrades by id),
:mod:`.candles` (closed klines -> the candle store), :mod:`.service` (wires them on one loop),
:mod:`.metrics`, :mod:`.reader` (``MarketDataReader``). What is venue-specific (hosts,
channels, subscribe protocols, book rules, REST calls) is in :mod:`data_collector.venues`.
"""

from __future__ import annotations

from data_collector.streaming.reader import MarketDataReader

__all__ = ["MarketDataReader"]
