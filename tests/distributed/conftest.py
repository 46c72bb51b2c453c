"""Fixtures of the distributed tests: a queue schema and worker processes torn down pass or fail."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from data_collector.simulator import SimulatedExchange
from tests.support.distributed import SYMBOLS
from tests.support.services import PG_ADMIN_DSN, unique


@pytest.fixture
async def queue_schema() -> AsyncIterator[str]:
    name = unique("q")
    yield name
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes of the test; every one is killed at the end, pass or fail."""
    out: list[subprocess.Popen[bytes]] = []
    yield out
    for proc in out:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=SYMBOLS, seed=17, gaps={}, latency_ms=5) as exchange:
        yield exchange
