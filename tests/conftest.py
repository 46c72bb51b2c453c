"""Shared fixtures: real PostgreSQL and Redis, each test in its own schema or key prefix."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from tests.support.services import PG_ADMIN_DSN, PG_URL, REDIS_URL, PrivateRedis, unique


def pytest_configure(config: pytest.Config) -> None:
    """Child processes (``python scripts/...``, ``python -c``) import this checkout's package.

    The scripts carry no ``sys.path`` edits: outside the tests they import the installed package
    (``pip install -r requirements.txt`` installs the checkout, editable). Under test they must run
    the code under test, even with no install or another copy installed, as pytest's own process does.
    """
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False, help="run the full (long) chaos and soak forms"
    )


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True when the suite runs with --long (full chaos/soak forms)."""
    return bool(request.config.getoption("--long"))


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema in database ``test``, dropped after the test."""
    name = unique("t")
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique Redis key prefix; every key under it is deleted after the test."""
    prefix = unique("test")
    yield prefix
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def base_config(pg_schema: str, redis_prefix: str) -> dict[str, Any]:
    """A config dict wired to the test schema and key prefix (no exchange URLs yet)."""
    return {
        "database": {"url": PG_URL, "schema": pg_schema},
        "redis": {"url": REDIS_URL, "prefix": redis_prefix},
        "logging": {"file": None},
    }


@pytest.fixture
def private_redis(tmp_path: Any) -> Iterator[PrivateRedis]:
    """A running redis-server on a free port, stopped after the test (even a paused one)."""
    server = PrivateRedis(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _root_logger_level_restored() -> Iterator[None]:
    """A test that runs a script's main() in-process sets the root logger's level (to DEBUG with
    --log-level DEBUG); left so, every later test would build and capture a record per WebSocket
    frame, and the soak's memory check would measure pytest's log capture instead of the streamer."""
    import logging

    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
