"""Candle storage: one interface (:class:`CandleStore`), one module per backend.

``open_store(config)`` picks the backend from ``database.url``: ``postgresql+asyncpg://`` or
``sqlite+aiosqlite://``.
"""

from __future__ import annotations

from data_collector.storage.base import CandleBatch, CandleStore, CoverageRange, Instrument, WriteResult

__all__ = ["CandleBatch", "CandleStore", "CoverageRange", "Instrument", "WriteResult"]
