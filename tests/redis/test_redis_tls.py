"""``rediss://`` URLs (redis-py's TLS query parameters) against a private TLS redis-server.

Checks what the README's TLS section promises: the CA, host-name and client-certificate options
work through the project's Redis clients (cache, streaming connections, health check), a
certificate that fails verification is refused, and TLS never falls back to plaintext.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import redis

from data_collector.config import Config, load_config
from data_collector.errors import CollectorError
from data_collector.health import CheckResult, check_redis
from data_collector.redis.client import RedisEndpoint, RedisSettings, async_client
from tests.support.services import REDIS_URL, free_port
from tests.support.tls_certs import Pki, make_pki
from utils.cache_manager import AsyncCacheManager, CacheUnavailableError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@dataclass(frozen=True)
class TlsRedis:
    port: int
    pki: Pki

    def url(self, host: str, query: str = "") -> str:
        return f"rediss://{host}:{self.port}/0" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    root = tmp_path_factory.mktemp("tls-redis")
    pki = make_pki(root)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "optional",
         "--save", "", "--appendonly", "no", "--dir", str(root), "--logfile", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        probe = redis.Redis.from_url(f"rediss://localhost:{port}/0?ssl_ca_certs={pki.ca}", socket_timeout=1)
        for _ in range(100):
            try:
                probe.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        else:
            pytest.skip("redis-server here does not speak TLS")
        probe.close()
        yield TlsRedis(port, pki)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _config(url: str, prefix: str) -> Config:
    return load_config(
        {
            "redis": {"url": url, "prefix": prefix, "socket_timeout_s": 2, "connect_timeout_s": 2},
            "logging": {"file": None},
        }
    )


async def _health(config: Config) -> CheckResult:
    client = async_client(RedisSettings.from_config(config))
    try:
        return await check_redis(config, client)
    finally:
        await client.aclose()


async def _works_everywhere(url: str, prefix: str) -> None:
    config = _config(url, prefix)
    async with AsyncCacheManager(config, strict=True) as cache:
        assert await cache.set("k", 1)
        assert await cache.get("k") == 1
        await cache.delete("k")
    conn = await RedisEndpoint.from_any(url, socket_timeout_s=2, connect_timeout_s=2).connect()
    await conn.close()
    result = await _health(config)
    assert result.status == "ok", result.detail


async def _refused_everywhere(url: str, prefix: str) -> None:
    config = _config(url, prefix)
    async with AsyncCacheManager(config, strict=True) as cache:
        with pytest.raises(CacheUnavailableError):
            await cache.set("k", 1)
    with pytest.raises(CollectorError):
        conn = await RedisEndpoint.from_any(url, socket_timeout_s=2, connect_timeout_s=2).connect()
        await conn.close()
    result = await _health(config)
    assert result.status == "fail"


@pytest.mark.parametrize(
    ("host", "query"),
    [
        ("localhost", "ssl_ca_certs={ca}"),  # verifies the chain and the host name by default
        ("localhost", "ssl_cert_reqs=required&ssl_ca_certs={ca}"),
        ("127.0.0.1", "ssl_ca_certs={ca}&ssl_check_hostname=false"),
        ("127.0.0.1", "ssl_cert_reqs=none"),  # encrypted, nothing verified
        ("localhost", "ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}"),
        ("localhost", "ssl_ca_data={ca_data}&ssl_ciphers=HIGH"),  # the rest check_redis_url accepts
    ],
)
async def test_documented_rediss_options_connect(
    tls_redis: TlsRedis, redis_prefix: str, host: str, query: str
) -> None:
    pki = tls_redis.pki
    ca_data = quote(pki.ca.read_text(), safe="")
    url = tls_redis.url(
        host, query.format(ca=pki.ca, cert=pki.client_cert, key=pki.client_key, ca_data=ca_data)
    )
    await _works_everywhere(url, redis_prefix)


@pytest.mark.parametrize(
    ("host", "query"),
    [
        ("127.0.0.1", "ssl_ca_certs={ca}"),  # the certificate names only localhost
        ("localhost", "ssl_ca_certs={other}"),
        ("localhost", ""),  # the system trust store does not know the test CA
    ],
)
async def test_a_certificate_failing_verification_is_refused(
    tls_redis: TlsRedis, redis_prefix: str, host: str, query: str
) -> None:
    url = tls_redis.url(host, query.format(ca=tls_redis.pki.ca, other=tls_redis.pki.other_ca))
    await _refused_everywhere(url, redis_prefix)


async def test_rediss_to_a_plaintext_server_fails_instead_of_falling_back(redis_prefix: str) -> None:
    await _refused_everywhere(
        REDIS_URL.replace("redis://", "rediss://", 1) + "?ssl_cert_reqs=none", redis_prefix
    )


async def test_plaintext_to_the_tls_port_fails(tls_redis: TlsRedis, redis_prefix: str) -> None:
    await _refused_everywhere(f"redis://127.0.0.1:{tls_redis.port}/0", redis_prefix)
