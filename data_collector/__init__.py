"""data_collector: fast, loss-free collection of cryptocurrency market data.

The public entry points live in their own modules:

* :mod:`data_collector.optimized_collector`: ``OptimizedDataCollector``, the OHLCV backfill.
* :mod:`data_collector.optimized_websocket`: ``OptimizedWebSocketStreamer``, live streams to Redis.
* :mod:`data_collector.simulator`: ``SimulatedExchange``, a local Binance-compatible exchange.
* :mod:`data_collector.config`: ``load_config`` and ``Config``.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os

# pyarrow reads its default memory pool from the environment once, when it is imported; the
# system allocator gives freed memory back where the wheels' mimalloc keeps it: the archive
# backfill's peak RSS at issue 13's size was 283-285 MB so, 292-298 MB otherwise (PERFORMANCE.md,
# *Archive backfill*). A value the user set wins; archive_fetch._use_system_pool covers a pyarrow
# imported before this package.
_os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
