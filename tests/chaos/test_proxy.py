"""The fault proxy itself, against a tiny echo server and the shared Redis/PostgreSQL (through the
proxy only: the shared servers themselves are never disturbed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.chaos.proxy import FaultProxy
from tests.support.services import PG_ADMIN_DSN, REDIS_URL
from tests.support.waiting import wait_for

MakeProxy = Callable[[str, int], Awaitable[FaultProxy]]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An echo server; a line ``BIG <n>\\n`` answers n bytes instead."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if data.startswith(b"BIG "):
                    writer.write(b"x" * int(data[4:].strip()))
                else:
                    writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def _open(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


async def test_forwards_both_ways_and_counts(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    reader, writer = await _open(proxy)
    assert await _echo(reader, writer, b"hello") == b"hello"
    assert proxy.stats.accepted == 1 and proxy.stats.upstream_connected == 1
    assert proxy.stats.bytes_up == 5 and proxy.stats.bytes_down == 5
    writer.close()


async def test_latency_delays_each_direction(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    reader, writer = await _open(proxy)
    await _echo(reader, writer, b"warm")
    proxy.set_latency(0.15, "up")
    proxy.set_latency(0.1, "down")
    started = time.monotonic()
    assert await _echo(reader, writer, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.25  # a lower bound: the delay was added
    writer.close()


async def test_blackhole_new_connection_holds_until_lifted(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    proxy.blackhole = True
    reader, writer = await _open(proxy)  # accepted
    writer.write(b"ping")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(4), 0.3)
    assert proxy.stats.blackholed == 1 and proxy.stats.upstream_connected == 0
    proxy.blackhole = False
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    writer.close()


async def test_blackhole_existing_connection(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    reader, writer = await _open(proxy)
    await _echo(reader, writer, b"one")
    proxy.blackhole = True
    writer.write(b"two")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(3), 0.3)
    proxy.blackhole = False
    assert await asyncio.wait_for(reader.readexactly(3), 5) == b"two"
    writer.close()


async def test_reset_new_connections(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    proxy.reset_new = True
    reader, writer = await _open(proxy)
    with pytest.raises(ConnectionResetError):
        writer.write(b"x" * 10)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(10), 5)
        assert data == b""  # pragma: no cover - a FIN instead of a RST fails here
        raise AssertionError("expected a reset, got EOF")
    assert proxy.stats.resets == 1 and proxy.stats.upstream_connected == 0
    proxy.reset_new = False
    reader, writer = await _open(proxy)
    assert await _echo(reader, writer, b"back") == b"back"
    writer.close()


async def test_reset_existing_connections(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    conns = [await _open(proxy) for _ in range(3)]
    for reader, writer in conns:
        await _echo(reader, writer, b"ok")
    assert proxy.reset_all() == 3
    for reader, _ in conns:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 5)
    assert proxy.stats.resets == 3


async def test_bandwidth_limit(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    reader, writer = await _open(proxy)
    proxy.bandwidth_bps = 20_000
    started = time.monotonic()
    writer.write(b"BIG 30000\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.readexactly(30_000), 30)
    assert len(data) == 30_000
    assert time.monotonic() - started >= 1.0  # 30 kB at 20 kB/s cannot arrive sooner
    writer.close()


async def test_cut_mid_transfer(make_proxy: MakeProxy, echo_port: int) -> None:
    proxy = await make_proxy("127.0.0.1", echo_port)
    reader, writer = await _open(proxy)
    await _echo(reader, writer, b"hi")
    proxy.cut_after(10_000, "down")
    writer.write(b"BIG 1000000\n")
    await writer.drain()
    got = 0
    with pytest.raises(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            got += len(chunk)
    assert got == 10_000
    assert proxy.stats.cuts == 1


async def test_close_drops_everything(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port)
    await proxy.start()
    conns = [await _open(proxy) for _ in range(3)]
    proxy.blackhole = True
    held = await _open(proxy)
    await wait_for(lambda: proxy.stats.blackholed >= 1, what="the proxy holding the new connection")
    await proxy.close()
    await proxy.close()  # idempotent
    for reader, _ in [*conns, held]:
        assert await asyncio.wait_for(reader.read(1), 5) == b""
    with pytest.raises(OSError):
        await asyncio.open_connection(proxy.host, proxy.port)
    assert not proxy._handlers


async def test_unreachable_target_resets_client(make_proxy: MakeProxy) -> None:
    from tests.support.services import free_port

    proxy = await make_proxy("127.0.0.1", free_port())
    reader, writer = await _open(proxy)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    assert proxy.stats.upstream_failed == 1


def _host_port(url: str, default: int) -> tuple[str, int]:
    netloc = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    host, _, port = netloc.partition(":")
    return host, int(port or default)


async def test_shared_redis_through_proxy(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(*_host_port(REDIS_URL, 6379))
    client = aioredis.Redis.from_url(proxy.url(REDIS_URL), socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        assert await client.ping()
        proxy.blackhole = True
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.ping()
        proxy.blackhole = False
        proxy.reset_all()
        proxy.reset_new = True
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
        proxy.reset_new = False
        assert await client.ping()
    finally:
        await client.aclose()


async def test_shared_postgres_through_proxy(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(*_host_port(PG_ADMIN_DSN, 5432))
    conn = await asyncpg.connect(proxy.url(PG_ADMIN_DSN), timeout=5)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        proxy.blackhole = True
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 2", timeout=0.5)
        proxy.blackhole = False
    finally:
        conn.terminate()
    conn = await asyncpg.connect(proxy.url(PG_ADMIN_DSN), timeout=5)
    try:
        proxy.cut_after(50_000, "down")
        with pytest.raises((asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionError, OSError)):
            await conn.fetch("SELECT repeat('x', 1000) FROM generate_series(1, 1000)", timeout=10)
        assert proxy.stats.cuts == 1
    finally:
        conn.terminate()
    proxy.clear()
    conn = await asyncpg.connect(proxy.url(PG_ADMIN_DSN), timeout=5)
    assert await conn.fetchval("SELECT 3") == 3
    await conn.close()
