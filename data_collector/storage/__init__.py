"""Candle storage: one abstract base (:class:`CandleStore`), one module per backend.

``open_store(config)`` picks the backend from ``database.url``: ``postgresql+asyncpg://`` or
``sqlite+aiosqlite://``.
"""

from __future__ import annotations

from typing import Any

from data_collector.config import Config, load_config
from data_collector.errors import ConfigError
from data_collector.storage.base import (
    Candle,
    CandleBatch,
    CoverageRange,
    Gap,
    Instrument,
    WriteResult,
)
from data_collector.storage.store import CandleStore

__all__ = [
    "Candle",
    "CandleBatch",
    "CandleStore",
    "CoverageRange",
    "Gap",
    "Instrument",
    "WriteResult",
    "open_store",
]


def open_store(config: Config | Any) -> CandleStore:
    """The store for ``database.url``, not yet initialised (call ``await store.initialize()``).

    Args:
        config: a :class:`~data_collector.config.Config`, or anything ``load_config`` accepts.

    Raises:
        ConfigError: the URL names neither ``postgresql+asyncpg`` nor ``sqlite+aiosqlite``.
    """
    config = load_config(config)
    url = config.database.url.get_secret_value()
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql+asyncpg", "postgresql", "postgres"):
        from data_collector.storage.postgres import PostgresCandleStore

        return PostgresCandleStore(config)
    if scheme in ("sqlite+aiosqlite", "sqlite"):
        from data_collector.storage.sqlite import SqliteCandleStore

        return SqliteCandleStore(config)
    raise ConfigError(
        f"database.url: unsupported scheme {scheme!r}; use postgresql+asyncpg:// or sqlite+aiosqlite://"
    )
