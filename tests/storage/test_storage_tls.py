"""How database.url's TLS query parameters are checked and handed to asyncpg (pure logic).

asyncpg builds the ``SSLContext`` from the DSN itself; these tests pin what the DSN carries and
what the project checks first.

The servers on this machine speak no TLS; tests/storage/test_storage_tls_server.py runs a private
cluster that does.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from data_collector.errors import ConfigError, PermanentError
from data_collector.storage.pg_connect import SYSTEM_ROOTS, PgTls, pg_target

BASE = "postgresql+asyncpg://user:secret@db.example:6543/candles"


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEM CA certificate: the system's first one, so no openssl run is needed."""
    paths = ssl.get_default_verify_paths()
    candidates = [Path(p) for p in (paths.cafile, paths.openssl_cafile) if p]
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip("no system CA bundle to load")


@pytest.mark.parametrize(
    ("query", "mode"),
    [
        ("", None),
        ("?sslmode=disable", "disable"),
        ("?sslmode=allow", "allow"),
        ("?sslmode=prefer", "prefer"),
        ("?sslmode=require", "require"),
        ("?sslmode=verify-ca", "verify-ca"),
        ("?sslmode=verify-full", "verify-full"),
        ("?sslmode=VERIFY-FULL", "verify-full"),
        ("?ssl=verify-full", "verify-full"),
        ("?ssl=require", "require"),
        ("?ssl=true", "verify-full"),
        ("?ssl=false", "disable"),
        ("?ssl=require&sslmode=require", "require"),
    ],
)
def test_modes_are_read_from_sslmode_or_ssl(query: str, mode: str | None) -> None:
    target = pg_target(BASE + query)
    assert target.tls.mode == mode
    assert target.tls.required == (mode in ("require", "verify-ca", "verify-full"))


def test_the_engine_url_drops_the_query_and_the_dsn_carries_it_to_asyncpg() -> None:
    target = pg_target(BASE + "?sslmode=verify-full&sslrootcert=/ca.pem")
    assert target.url.query == {}
    assert target.url.drivername == "postgresql+asyncpg"
    dsn = "postgresql://user:secret@db.example:6543/{}?sslmode=verify-full&sslrootcert=%2Fca.pem"
    assert target.dsn() == dsn.format("candles")
    assert target.dsn("postgres") == dsn.format("postgres")
    assert target.where == "PostgreSQL at db.example:6543/candles"
    assert target.tls == PgTls(mode="verify-full", rootcert="/ca.pem")
    assert pg_target(BASE).dsn() == "postgresql://user:secret@db.example:6543/candles"


@pytest.mark.parametrize(
    ("query", "sslmode"),
    [("?ssl=true", "verify-full"), ("?ssl=false", "disable"), ("?ssl=require", "require"), ("", None)],
)
def test_the_ssl_alias_reaches_asyncpg_as_sslmode(query: str, sslmode: str | None) -> None:
    # asyncpg reads no ssl= from a DSN: it would send it to the server as a setting.
    dsn_query = pg_target(BASE + query).tls.dsn_query()
    assert "ssl" not in dsn_query
    assert dsn_query.get("sslmode") == sslmode


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?sslmode=verify-full&foo=1", "foo"),
        ("?prepared_statement_cache_size=0", "prepared_statement_cache_size"),
        ("?sslmode=prefer&sslmode=require", "sslmode"),
        ("?sslmode=strict", "strict"),
        ("?ssl=maybe", "maybe"),
        ("?ssl=disable&sslmode=verify-full", "disagree"),
        ("?sslmode=require&sslkey=/k.pem", "sslkey"),
        ("?sslmode=prefer&sslrootcert=/ca.pem", "sslrootcert"),
        ("?sslrootcert=/ca.pem", "sslrootcert"),
        ("?sslmode=disable&sslcert=/c.pem&sslkey=/k.pem", "sslcert"),
    ],
)
def test_bad_query_parameters_are_config_errors_naming_them(query: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        pg_target(BASE + query)
    message = str(info.value)
    assert message.startswith("database.url: ")
    assert named in message
    assert "\n" not in message


def test_not_a_postgres_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        pg_target("sqlite+aiosqlite:///x.db")


@pytest.mark.parametrize("rootcert", [None, "system"])
@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_without_a_root_certificate_the_system_trust_store_is_used(
    rootcert: str | None, mode: str, ca_pem: Path
) -> None:
    # asyncpg alone would look only for ~/.postgresql/root.crt, and read "system" as a file name.
    given = pg_target(f"{BASE}?sslmode={mode}" + (f"&sslrootcert={rootcert}" if rootcert else ""))
    sent = given.tls.dsn_query()["sslrootcert"]
    assert sent != SYSTEM_ROOTS and Path(sent).is_file()
    assert ssl.create_default_context(cafile=sent).cert_store_stats()["x509_ca"] >= 1


def test_require_without_a_root_certificate_leaves_verification_to_asyncpg() -> None:
    assert pg_target(BASE + "?sslmode=require").tls.dsn_query() == {"sslmode": "require"}


def test_a_missing_root_certificate_is_one_permanent_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(PermanentError) as info:
        pg_target(f"{BASE}?sslmode=verify-full&sslrootcert={missing}").tls.check_files()
    message = str(info.value)
    assert "\n" not in message
    assert str(missing) in message and "sslrootcert" in message and "No such file" in message


def test_a_root_certificate_that_is_not_pem_is_one_permanent_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(PermanentError) as info:
        PgTls(mode="verify-ca", rootcert=str(junk)).check_files()
    assert "\n" not in str(info.value) and "sslrootcert" in str(info.value)


def test_an_unreadable_client_certificate_is_one_permanent_line(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        PgTls(mode="require", cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem")).check_files()
    assert "\n" not in str(info.value) and "sslcert/sslkey" in str(info.value)


def test_tls_failures_are_classified_permanent_and_broken_handshakes_are_not() -> None:
    target = pg_target(BASE + "?sslmode=verify-full")
    refused = target.tls_failure(
        ConnectionError('PostgreSQL server at "db.example:6543" rejected SSL upgrade')
    )
    assert isinstance(refused, PermanentError) and "does not accept TLS" in str(refused)
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"
    rejected = target.tls_failure(verify)
    assert isinstance(rejected, PermanentError) and "self-signed certificate" in str(rejected)
    assert "set sslrootcert" in str(rejected)
    assert target.tls_failure(ssl.SSLEOFError()) is None
    assert target.tls_failure(ConnectionResetError()) is None
    assert target.tls_failure(OSError("Connect call failed")) is None
