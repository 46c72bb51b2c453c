"""How ``database.url`` reaches asyncpg: the one place a PostgreSQL connection is opened.

Every PostgreSQL connection the project makes (the store's pool, the database-creation
connection, the health checks) goes through :func:`pg_target`, so a URL means the same thing
everywhere.

asyncpg reads libpq's TLS parameters from a DSN itself (``sslmode``, ``sslrootcert``,
``sslcert``, ``sslkey``: ``asyncpg/connect_utils.py``, ``_parse_connect_dsn_and_args``) and builds
the ``SSLContext``; the project hands it the DSN with those parameters. SQLAlchemy's asyncpg
dialect would instead pass a URL's query parameters to ``asyncpg.connect()`` as keywords
(``sslmode=verify-full`` became a ``TypeError``), so the store's engine connects through
:meth:`PgTarget.connect` (``async_creator``) rather than from the URL.

What is added to asyncpg, each because asyncpg 0.32 does not do it:

* refusing any query parameter but the TLS ones, given once: asyncpg keeps the last of a repeated
  parameter and sends an unknown one to the server as a setting, which fails at connect;
* ``ssl=`` (SQLAlchemy's and asyncpg's keyword spelling, ``true`` = ``verify-full``) as an alias of
  ``sslmode``, which asyncpg does not read from a DSN;
* the system trust store for ``verify-ca`` / ``verify-full`` without ``sslrootcert`` (or with
  libpq 16's ``sslrootcert=system``): asyncpg only looks for ``~/.postgresql/root.crt``;
* refusing certificate parameters that asyncpg would silently ignore (below ``require``, or a key
  without a certificate);
* one line naming the parameter for a certificate file asyncpg cannot load (it raises a bare
  ``FileNotFoundError`` / ``ssl.SSLError`` from inside ``connect()``, which reads like a failed
  handshake), and :meth:`PgTarget.tls_failure`, which tells a TLS refusal or a failed verification
  (permanent: never a plaintext fallback, never a retry) from a broken connection (transient).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.connect_utils import SSLMode
from sqlalchemy.engine import URL

from data_collector.errors import ConfigError, PermanentError
from data_collector.storage.url import parse_database_url

#: asyncpg's (and libpq's) sslmode values.
SSL_MODES = tuple(mode.name.replace("_", "-") for mode in SSLMode)
#: The modes that never connect in plaintext.
REQUIRED_MODES = frozenset({"require", "verify-ca", "verify-full"})
TLS_PARAMETERS = ("sslmode", "ssl", "sslrootcert", "sslcert", "sslkey")
_SSL_TRUE = frozenset({"true", "1", "yes", "on"})
_SSL_FALSE = frozenset({"false", "0", "no", "off"})
#: ``sslrootcert`` value asking for the system's trust store (libpq 16 spells it so too).
SYSTEM_ROOTS = "system"
#: TLS errors that mean the connection broke, not that TLS was refused: those stay transient.
_BROKEN_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True)
class PgTls:
    """The TLS settings of a PostgreSQL URL, checked; asyncpg turns them into an ``SSLContext``.

    Attributes:
        mode: One of :data:`SSL_MODES`, or None when the URL does not say (asyncpg's default:
            ``PGSSLMODE``, else ``prefer``).
        rootcert: CA file to verify the server against; None or ``system`` for the system store.
        cert: Client certificate file.
        key: Client private key file.
    """

    mode: str | None = None
    rootcert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def required(self) -> bool:
        """True when this connection must be encrypted or fail."""
        return self.mode in REQUIRED_MODES

    def dsn_query(self) -> dict[str, str]:
        """The libpq parameters asyncpg reads from the DSN for these settings.

        Raises:
            PermanentError: the system trust store is wanted and this machine has no CA file.
        """
        query = {"sslmode": self.mode} if self.mode is not None else {}
        rootcert = self.rootcert
        if rootcert == SYSTEM_ROOTS or (rootcert is None and self.mode in ("verify-ca", "verify-full")):
            rootcert = _system_ca_file()
        for name, value in (("sslrootcert", rootcert), ("sslcert", self.cert), ("sslkey", self.key)):
            if value is not None:
                query[name] = value
        return query

    def check_files(self) -> None:
        """Load the certificate files once, as asyncpg will, so that a bad one is named.

        Raises:
            PermanentError: a certificate or key file is missing, unreadable or not PEM (one
                line naming the file and the URL parameter to fix).
        """
        if not self.required:
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        rootcert = self.rootcert
        if rootcert is not None and rootcert != SYSTEM_ROOTS:
            _load(
                lambda: context.load_verify_locations(cafile=rootcert),
                "sslrootcert",
                rootcert,
                "the CA certificate that signed the server's certificate",
            )
        if self.cert is not None:
            cert, key = self.cert, self.key
            _load(
                lambda: context.load_cert_chain(cert, keyfile=key),
                "sslcert/sslkey",
                cert if key is None else f"{cert}, {key}",
                "a client certificate and its unencrypted private key",
            )


def _system_ca_file() -> str:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    raise PermanentError(
        "database.url: this machine has no system CA file to verify the server with; "
        "set sslrootcert to the CA that signed the server's certificate"
    )


def _load(action: Callable[[], None], parameter: str, path: str, wanted: str) -> None:
    """Run a certificate-loading ``action``; a bad file becomes one PermanentError line."""
    try:
        action()
    except OSError as exc:  # ssl.SSLError is an OSError too: a file that is not PEM
        reason = (
            (exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror) or str(exc) or type(exc).__name__
        )
        raise PermanentError(
            f"database.url: {parameter} {path!r} cannot be used ({reason}); point it at {wanted} (PEM)"
        ) from None


def _single(query: Mapping[str, str | Sequence[str]], name: str) -> str | None:
    value = query.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"database.url: query parameter {name!r} is given {len(value)} times; give it once")


def _mode_from_ssl(value: str) -> str:
    lowered = value.lower()
    if lowered in _SSL_TRUE:
        return "verify-full"  # asyncpg's ssl=True: the system trust store and host name checks
    if lowered in _SSL_FALSE:
        return "disable"
    return lowered


def parse_tls(query: Mapping[str, str | Sequence[str]]) -> PgTls:
    """Read and check the TLS query parameters of a PostgreSQL URL (pure; nothing is opened).

    Args:
        query: The URL's query, as SQLAlchemy's ``URL.query`` holds it.

    Raises:
        ConfigError: an unknown parameter (named), an unknown mode, ``ssl`` and ``sslmode``
            disagreeing, or a certificate parameter the mode would silently ignore.
    """
    unknown = sorted(set(query) - set(TLS_PARAMETERS))
    if unknown:
        raise ConfigError(
            f"database.url: unsupported query parameter(s) {', '.join(unknown)}; "
            f"supported: {', '.join(TLS_PARAMETERS)}"
        )
    sslmode = _single(query, "sslmode")
    ssl_value = _single(query, "ssl")
    modes: dict[str, str] = {
        name: given
        for name, given in (
            ("sslmode", sslmode.lower() if sslmode is not None else None),
            ("ssl", _mode_from_ssl(ssl_value) if ssl_value is not None else None),
        )
        if given is not None
    }
    for name, given in modes.items():
        if given not in SSL_MODES:
            raise ConfigError(f"database.url: {name}={given!r} is not one of {', '.join(SSL_MODES)}")
    if len(set(modes.values())) > 1:
        raise ConfigError(
            f"database.url: sslmode={modes['sslmode']} and ssl={ssl_value} disagree; give only sslmode"
        )
    mode = next(iter(modes.values()), None)
    tls = PgTls(
        mode=mode,
        rootcert=_single(query, "sslrootcert") or None,
        cert=_single(query, "sslcert") or None,
        key=_single(query, "sslkey") or None,
    )
    if tls.key is not None and tls.cert is None:
        raise ConfigError("database.url: sslkey is given without sslcert; give both")
    if not tls.required:
        ignored = [name for name, value in (("sslrootcert", tls.rootcert), ("sslcert", tls.cert)) if value]
        if ignored:
            raise ConfigError(
                f"database.url: {' and '.join(ignored)} would be ignored with sslmode={mode or 'unset'}; "
                "use sslmode=verify-full (or verify-ca / require)"
            )
    return tls


@dataclass(frozen=True)
class PgTarget:
    """A PostgreSQL server to connect to: the URL without its query, and its TLS settings.

    Attributes:
        url: ``postgresql+asyncpg://`` URL with no query (how the server is named).
        tls: The checked TLS settings.
    """

    url: URL
    tls: PgTls

    @property
    def where(self) -> str:
        """``PostgreSQL at host:port/db``: how errors name this server (never with the password)."""
        return f"PostgreSQL at {self.url.host or 'localhost'}:{self.url.port or 5432}/{self.url.database}"

    def dsn(self, database: str | None = None) -> str:
        """The ``postgresql://`` DSN asyncpg parses: password and libpq TLS parameters included.

        Raises:
            PermanentError: the system trust store is wanted and this machine has none.
        """
        url = self.url.set(drivername="postgresql", query=self.tls.dsn_query())
        if database is not None:
            url = url.set(database=database)
        return url.render_as_string(hide_password=False)

    def creator(self, *, connect_timeout_s: float, **kwargs: Any) -> Callable[[], Coroutine[Any, Any, Any]]:
        """An ``async_creator`` for SQLAlchemy's ``create_async_engine``: :meth:`connect` bound."""

        async def connect() -> asyncpg.Connection:
            return await self.connect(connect_timeout_s=connect_timeout_s, **kwargs)

        return connect

    async def connect(
        self, *, connect_timeout_s: float, database: str | None = None, **kwargs: Any
    ) -> asyncpg.Connection:
        """``asyncpg.connect`` to this server (or another ``database`` on it) with its TLS settings.

        Raises:
            PermanentError: TLS was required and refused, failed verification, or a certificate
                file cannot be used.
            Exception: anything else asyncpg raises, unchanged.
        """
        self.tls.check_files()
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self.dsn(database), timeout=connect_timeout_s, **kwargs
            )
        except PermanentError:
            raise
        except Exception as exc:
            failure = self.tls_failure(exc)
            if failure is not None:
                raise failure from None
            raise
        return conn

    def tls_failure(self, exc: BaseException) -> PermanentError | None:
        """The PermanentError for a TLS refusal or verification failure, else None.

        A connection cut in the middle of a handshake is not a TLS failure: it stays the
        caller's to treat as transient.
        """
        mode = self.tls.mode or "prefer"
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = str(exc.verify_message or exc.reason or exc).rstrip(".")
            if "mismatch" in reason:
                hint = "connect by a host name the server's certificate names (or use sslmode=verify-ca)"
            elif self.tls.rootcert in (None, SYSTEM_ROOTS):
                hint = "set sslrootcert to the CA that signed the server's certificate (the system trust store was used)"
            else:
                hint = f"check that sslrootcert {self.tls.rootcert} is the CA that signed the server's certificate"
            return PermanentError(f"{self.where}: TLS certificate rejected ({reason}); {hint}")
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, _BROKEN_TLS):
            return PermanentError(
                f"{self.where}: TLS handshake failed ({exc.reason or exc}); check the server's ssl "
                f"settings and sslmode={mode}"
            )
        if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
            return PermanentError(
                f"{self.where}: the server does not accept TLS (SSL) connections and database.url "
                f"requires them (sslmode={mode}); enable ssl on the server, nothing was sent in plaintext"
            )
        if isinstance(exc, asyncpg.ClientConfigurationError):
            return PermanentError(f"{self.where}: {str(exc).splitlines()[0]}")
        return None


def pg_target(url: str | URL) -> PgTarget:
    """Split a ``postgresql[+asyncpg]://`` URL into where to connect and how (TLS).

    Raises:
        ConfigError: not a PostgreSQL URL (or not a URL), or its query parameters are not understood.
    """
    parsed = parse_database_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError("database.url: needs a postgresql+asyncpg:// URL")
    tls = parse_tls(parsed.query)
    return PgTarget(url=parsed.set(drivername="postgresql+asyncpg", query={}), tls=tls)
