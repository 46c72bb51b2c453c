"""Fixtures shared by the backfill tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.services import dropped_schemas


@pytest.fixture
async def schemas() -> AsyncIterator[tuple[str, ...]]:
    """Two fresh PostgreSQL schemas (a clean run and a killed one), dropped afterwards."""
    async with dropped_schemas(2) as names:
        yield names
