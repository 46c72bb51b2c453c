"""A real ccxt client (REST or pro) that is closed however the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any


@asynccontextmanager
async def ccxt_client(cls: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> AsyncIterator[Any]:
    """``cls(config)``, closed on exit."""
    ex = cls(config)
    try:
        yield ex
    finally:
        await ex.close()
