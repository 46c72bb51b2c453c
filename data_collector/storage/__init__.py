"""Candle storage: one abstract base (:class:`CandleStore`), one module per backend.

``open_store(config)`` picks the backend from ``database.url``: ``postgresql+asyncpg://`` or
``sqlite+aiosqlite://``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_collector.storage.base import (
    Candle,
    CandleBatch,
    CoverageRange,
    Gap,
    Instrument,
    WriteResult,
)
from data_collector.storage.store import CandleStore, StoreSettings
from data_collector.storage.trades import Trade, TradeBatch, TradeCoverage
from data_collector.storage.url import parse_database_url

if TYPE_CHECKING:
    # The config imports this package's URL parser, so it is imported lazily here (no cycle).
    from data_collector.config import Config

__all__ = [
    "Candle",
    "CandleBatch",
    "CandleStore",
    "CoverageRange",
    "Gap",
    "Instrument",
    "StoreSettings",
    "Trade",
    "TradeBatch",
    "TradeCoverage",
    "WriteResult",
    "open_store",
]


def open_store(config: StoreSettings | Config | Any) -> CandleStore:
    """The store for ``database.url``, not yet initialised (call ``await store.initialize()``).

    Args:
        config: :class:`StoreSettings`, a :class:`~data_collector.config.Config`, or anything
            ``load_config`` accepts.

    Raises:
        ConfigError: the URL names neither ``postgresql+asyncpg`` nor ``sqlite+aiosqlite``.
    """
    from data_collector.config import load_config

    settings = config if isinstance(config, StoreSettings) else StoreSettings.from_config(load_config(config))
    backend = parse_database_url(settings.url).get_backend_name()
    if backend == "postgresql":
        from data_collector.storage.postgres import PostgresCandleStore

        return PostgresCandleStore(settings)
    from data_collector.storage.sqlite import SqliteCandleStore

    return SqliteCandleStore(settings)
