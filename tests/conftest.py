"""Shared fixtures: real PostgreSQL and Redis, each test in its own schema or key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import redis

PG_ADMIN_DSN = os.environ.get("DC_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_URL = os.environ.get("DC_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False, help="run the full (long) chaos and soak forms"
    )


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True when the suite runs with --long (full chaos/soak forms)."""
    return bool(request.config.getoption("--long"))


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema in database ``test``, dropped after the test."""
    name = _unique("t")
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
    prefix = _unique("test")
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A real redis-server of the test's own, so that pausing or killing it disturbs nothing else."""

    def __init__(self, tmp_dir: str) -> None:
        self.tmp_dir = tmp_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None

    def start(self) -> None:
        import subprocess
        import time

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.tmp_dir,
                "--logfile",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        else:
            raise RuntimeError("private redis-server did not start")
        client.close()

    def pause(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Any) -> Iterator[PrivateRedis]:
    """A running redis-server on a free port, stopped after the test (even a paused one)."""
    server = PrivateRedis(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()
