"""database.url's TLS modes against a real PostgreSQL that speaks TLS.

A private cluster (the shared one speaks no TLS and is never reconfigured) with a throwaway CA
(tests/support/tls_certs.py): the server certificate names only ``localhost``, so connecting to
``127.0.0.1`` passes ``verify-ca`` but must fail ``verify-full``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_collector.config import load_config
from data_collector.errors import PermanentError
from data_collector.health import check_postgresql
from data_collector.storage import open_store
from data_collector.storage.pg_connect import pg_target
from tests.chaos.servers import PrivatePostgres
from tests.support.tls_certs import make_pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

_SSL_OF_THIS_BACKEND = "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@dataclass(frozen=True)
class TlsCluster:
    server: PrivatePostgres
    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path

    def url(self, host: str, query: str) -> str:
        return f"postgresql+asyncpg://postgres@{host}:{self.server.port}/postgres?{query}"


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    server = PrivatePostgres()
    try:
        pki = make_pki(Path(server.root))
        for path in (pki.server_cert, pki.server_key):
            shutil.chown(path, user="postgres", group="postgres")
            os.chmod(path, 0o600)
        server.initdb()
        with open(os.path.join(server.data, "postgresql.conf"), "a") as conf:
            # ssl_ca_file makes the server ask for (not require) a client certificate.
            conf.write(
                f"ssl = on\nssl_cert_file = '{pki.server_cert}'\nssl_key_file = '{pki.server_key}'\n"
                f"ssl_ca_file = '{pki.ca}'\n"
            )
        server.start()
        yield TlsCluster(server, pki.ca, pki.other_ca, pki.client_cert, pki.client_key)
    finally:
        server.destroy()


@pytest.fixture
async def tls_schema(tls_cluster: TlsCluster) -> AsyncIterator[str]:
    name = f"tls_{os.getpid()}"
    yield name
    conn = await tls_cluster.server.connect()
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def _ssl_of(url: str) -> tuple[bool, str | None]:
    conn = await pg_target(url).connect(connect_timeout_s=5)
    try:
        row = await conn.fetchrow(_SSL_OF_THIS_BACKEND)
    finally:
        await conn.close()
    assert row is not None
    return row["ssl"], row["client_dn"]


@pytest.mark.parametrize(
    ("host", "query", "encrypted"),
    [
        ("localhost", "sslmode=verify-full&sslrootcert={ca}", True),
        ("127.0.0.1", "sslmode=verify-ca&sslrootcert={ca}", True),
        ("127.0.0.1", "sslmode=require", True),
        ("127.0.0.1", "sslmode=require&sslrootcert={ca}", True),
        ("127.0.0.1", "sslmode=prefer", True),
        ("127.0.0.1", "sslmode=disable", False),
        ("127.0.0.1", "sslmode=allow", False),  # plaintext first, TLS only if the server insists
    ],
)
async def test_each_mode_connects_as_documented(
    tls_cluster: TlsCluster, host: str, query: str, encrypted: bool
) -> None:
    ssl_used, _ = await _ssl_of(tls_cluster.url(host, query.format(ca=tls_cluster.ca)))
    assert ssl_used is encrypted


@pytest.mark.parametrize(
    ("host", "query", "words"),
    [
        (
            "127.0.0.1",
            "sslmode=verify-full&sslrootcert={ca}",
            "a host name the server's certificate names",
        ),  # cert names only localhost
        ("localhost", "sslmode=verify-full&sslrootcert={other}", "TLS certificate rejected"),
        ("127.0.0.1", "sslmode=verify-ca&sslrootcert={other}", "TLS certificate rejected"),
        ("127.0.0.1", "sslmode=require&sslrootcert={other}", "TLS certificate rejected"),
        ("localhost", "sslmode=verify-full", "system trust store was used"),
    ],
)
async def test_verification_failures_are_one_permanent_line(
    tls_cluster: TlsCluster, host: str, query: str, words: str
) -> None:
    with pytest.raises(PermanentError) as info:
        await _ssl_of(tls_cluster.url(host, query.format(ca=tls_cluster.ca, other=tls_cluster.other_ca)))
    assert words in str(info.value)
    assert "\n" not in str(info.value)


async def test_a_client_certificate_is_presented(tls_cluster: TlsCluster) -> None:
    query = f"sslmode=verify-ca&sslrootcert={tls_cluster.ca}&sslcert={tls_cluster.client_cert}"
    query += f"&sslkey={tls_cluster.client_key}"
    ssl_used, client_dn = await _ssl_of(tls_cluster.url("127.0.0.1", query))
    assert ssl_used
    assert client_dn == "/CN=postgres"


async def test_the_store_writes_and_the_health_check_passes_over_verify_full(
    tls_cluster: TlsCluster, tls_schema: str
) -> None:
    url = tls_cluster.url("localhost", f"sslmode=verify-full&sslrootcert={tls_cluster.ca}")
    config = load_config({"database": {"url": url, "schema": tls_schema}, "logging": {"file": None}})
    async with open_store(config) as store:
        instrument = await store.ensure_instrument("binance", "BTC/USDT", base="BTC", quote="USDT")
        assert instrument.id > 0
    result = await check_postgresql(config)
    assert result.status == "ok", result.detail


async def test_the_store_refuses_a_certificate_for_another_host(
    tls_cluster: TlsCluster, tls_schema: str
) -> None:
    url = tls_cluster.url("127.0.0.1", f"sslmode=verify-full&sslrootcert={tls_cluster.ca}")
    config = load_config(
        {"database": {"url": url, "schema": tls_schema, "connect_timeout_s": 5}, "logging": {"file": None}}
    )
    store = open_store(config)
    try:
        with pytest.raises(PermanentError) as info:
            await store.initialize()
    finally:
        await store.close()
    assert "TLS certificate rejected" in str(info.value) and "\n" not in str(info.value)
    result = await check_postgresql(config)
    assert result.status == "fail" and "TLS certificate rejected" in result.detail
