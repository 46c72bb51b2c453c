"""Security: asking for TLS gets TLS or an error, never a silent plaintext connection.

The shared servers here speak no TLS, so every TLS request below must fail at the handshake.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data_collector.config import load_config
from data_collector.errors import CollectorError, PermanentError
from tests.support.services import PG_URL, REDIS_URL

TLS_REDIS_URL = REDIS_URL.replace("redis://", "rediss://", 1)


async def _initialize_error(pg_schema: str, query: str) -> CollectorError:
    """The error a store whose ``database.url`` ends in ``query`` raises at initialize()."""
    from data_collector.storage import open_store

    store = open_store(
        load_config(
            {
                "database": {"url": PG_URL + query, "schema": pg_schema, "connect_timeout_s": 2},
                "logging": {"file": None},
            }
        )
    )
    try:
        with pytest.raises(CollectorError) as info:
            await store.initialize()
    finally:
        await store.close()
    return info.value


async def test_rediss_urls_never_fall_back_to_plaintext(redis_prefix: str) -> None:
    cache_manager = pytest.importorskip("utils.cache_manager")
    redis_conn = pytest.importorskip("data_collector.redis.client")
    config = {
        "redis": {"url": TLS_REDIS_URL, "prefix": redis_prefix, "socket_timeout_s": 2},
        "logging": {"file": None},
    }

    async with cache_manager.AsyncCacheManager(config, strict=True) as cache:
        with pytest.raises(cache_manager.CacheUnavailableError):
            await cache.set("k", 1)

    endpoint = redis_conn.RedisEndpoint.from_any(TLS_REDIS_URL, socket_timeout_s=2, connect_timeout_s=2)
    assert "SSL" in endpoint.connection_class.__name__
    with pytest.raises(CollectorError):
        conn = await endpoint.connect()
        await conn.close()


async def test_postgres_ssl_verify_full_never_falls_back_to_plaintext(pg_schema: str) -> None:
    error = await _initialize_error(pg_schema, "?ssl=verify-full")
    assert "certificate" in str(error) or "SSL" in str(error)


async def test_postgres_sslmode_is_understood_or_refused_clearly(pg_schema: str) -> None:
    error = await _initialize_error(pg_schema, "?sslmode=verify-full")
    assert "unexpected keyword" not in str(error), str(error)
    assert isinstance(error, PermanentError) or "certificate" in str(error)


async def test_postgres_missing_root_certificate_is_permanent_and_one_line(pg_schema: str) -> None:
    error = await _initialize_error(pg_schema, "?ssl=verify-full")
    assert "\n" not in str(error)
    assert isinstance(error, PermanentError)


async def test_postgres_unreadable_root_certificate_names_the_file(pg_schema: str, tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    error = await _initialize_error(pg_schema, f"?sslmode=verify-full&sslrootcert={missing}")
    assert isinstance(error, PermanentError)
    assert "\n" not in str(error)
    assert str(missing) in str(error) and "sslrootcert" in str(error)


async def test_health_check_reports_a_refused_tls_connection_in_one_line() -> None:
    from data_collector.health import check_postgresql

    config = load_config(
        {"database": {"url": PG_URL + "?sslmode=require", "connect_timeout_s": 2}, "logging": {"file": None}}
    )
    result = await check_postgresql(config)
    assert result.status == "fail"
    assert "does not accept TLS" in result.detail and "\n" not in result.detail
