"""data_collector: fast, loss-free collection of cryptocurrency market data.

The public entry points live in their own modules:

* :mod:`data_collector.optimized_collector`: ``OptimizedDataCollector``, the OHLCV backfill.
* :mod:`data_collector.optimized_websocket`: ``OptimizedWebSocketStreamer``, live streams to Redis.
* :mod:`data_collector.simulator`: ``SimulatedExchange``, a local Binance-compatible exchange.
* :mod:`data_collector.config`: ``load_config`` and ``Config``.
"""

from __future__ import annotations

__version__ = "0.1.0"
