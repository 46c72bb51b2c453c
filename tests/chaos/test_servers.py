"""The private servers the scenarios break: they break as told and always come back."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis

from tests.chaos.servers import PrivatePostgres, RestartableRedis


async def test_private_pg_restart_and_terminate(private_pg: PrivatePostgres, private_pg_schema: str) -> None:
    assert private_pg.port != 5432
    conn = await private_pg.connect()
    await conn.execute(f'CREATE TABLE "{private_pg_schema}".t (x int)')
    await conn.execute(f'INSERT INTO "{private_pg_schema}".t VALUES (1)')
    victim = await private_pg.connect()
    busy = asyncio.ensure_future(victim.execute("SELECT pg_sleep(30)"))
    for _ in range(50):
        if any("pg_sleep" in str(b["query"]) for b in await private_pg.backends()):
            break
        await asyncio.sleep(0.05)
    assert await private_pg.terminate_backends(query_like="%pg_sleep%") == 1
    with pytest.raises(
        (asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.ConnectionDoesNotExistError)
    ):
        await busy
    victim.terminate()

    await asyncio.to_thread(private_pg.restart, "fast")
    with pytest.raises(
        (
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.InterfaceError,
        )
    ):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    conn = await private_pg.connect()
    assert await conn.fetchval(f'SELECT x FROM "{private_pg_schema}".t') == 1  # the data survived
    await conn.close()


def test_private_pg_is_restored_after_a_stop(private_pg: PrivatePostgres) -> None:
    private_pg.stop("immediate")
    assert not private_pg.running
    private_pg.ensure_running()  # what the fixture's finalizer does even when a test fails
    assert private_pg.running


def test_restartable_redis(restartable_redis: RestartableRedis) -> None:
    client = redis.Redis.from_url(restartable_redis.url, socket_timeout=1)
    client.set("k", "v")
    restartable_redis.restart()
    assert client.get("k") is None  # an empty server came back on the same port
    assert client.ping()
    client.set("kept", "yes")
    restartable_redis.restart(keep_data=True)
    assert client.get("kept") == b"yes"  # a planned restart keeps the data
    client.close()
