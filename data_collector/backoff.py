"""The project's one backoff formula: capped exponential with jitter.

Every retry loop waits ``backoff_delay(attempt, min_s, max_s)`` between tries: the WebSocket
reconnects, the order-book resync, the candle sink, the Redis writer's reconnects and, as
tenacity's ``wait``, :func:`data_collector.retrying.retry_policy` (exchange requests and store
calls). Standard library only, so the streamer can use it without importing ccxt.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, min_s: float, max_s: float) -> float:
    """Capped exponential backoff with jitter: within ``[d/2, d]``, ``d = min(max_s, min_s * 2**attempt)``."""
    delay = min(max_s, min_s * float(2 ** min(attempt, 30)))
    return float(delay * (0.5 + random.random() / 2))
