"""How ``database.url`` becomes asyncpg connect arguments: the one place TLS is decided.

Every PostgreSQL connection the project makes (the store's pool, the database-creation
connection, the health checks) goes through :func:`pg_target`, so a URL means the same thing
everywhere.

SQLAlchemy hands a URL's query parameters to ``asyncpg.connect()`` as keywords, and asyncpg knows
none of libpq's (``sslmode=verify-full`` became a ``TypeError``). Here they are read once, checked,
and turned into asyncpg's ``ssl`` argument; the URL that reaches the driver carries no query.

=================  ============================================================================
``sslmode``        ``disable``: plaintext. ``allow``: plaintext, TLS only if the server insists.
                   ``prefer``: TLS if the server offers it, else plaintext; neither verifies
                   anything. ``require``: TLS or fail (the certificate is checked only when
                   ``sslrootcert`` is given, as libpq does). ``verify-ca``: TLS, and the
                   certificate must chain to the root. ``verify-full``: that, and the host name
                   must match the certificate.
``ssl``            asyncpg's spelling: any ``sslmode`` value, or ``true`` (= ``verify-full``) /
                   ``false`` (= ``disable``).
``sslrootcert``    PEM file of the CA(s) to trust; ``system`` or absent: the system's trust store.
``sslcert``        client certificate (PEM), with ``sslkey`` its private key; ``require`` or
                   stricter.
=================  ============================================================================

With ``require`` or stricter a server that does not speak TLS, or fails verification, is a
:class:`~data_collector.errors.PermanentError`: never a plaintext fallback, never a retry.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from data_collector.database_url import parse_database_url
from data_collector.errors import ConfigError, PermanentError

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
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
    """The TLS settings of a PostgreSQL URL, checked but not yet turned into an ``SSLContext``.

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

    def ssl_argument(self) -> ssl.SSLContext | str | bool | None:
        """asyncpg's ``ssl`` argument for these settings (None: leave asyncpg's default).

        ``allow`` / ``prefer`` stay strings so that asyncpg keeps their plaintext fallback; the
        modes that require TLS become an ``SSLContext``, which asyncpg never downgrades.

        Raises:
            PermanentError: a certificate or key file is missing, unreadable or not PEM (one
                line naming the file and the URL parameter to fix).
        """
        if self.mode is None:
            return None
        if self.mode == "disable":
            return False
        if self.mode not in REQUIRED_MODES:
            return self.mode
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.mode == "verify-full"
        if self.mode == "require" and self.rootcert is None:
            context.verify_mode = ssl.CERT_NONE
        else:
            context.verify_mode = ssl.CERT_REQUIRED
            if self.rootcert is None or self.rootcert == SYSTEM_ROOTS:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                _load(
                    lambda: context.load_verify_locations(cafile=self.rootcert),
                    "sslrootcert",
                    self.rootcert,
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
        return context


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
        url: ``postgresql+asyncpg://`` URL with no query (what SQLAlchemy gets).
        tls: The checked TLS settings.
    """

    url: URL
    tls: PgTls

    @property
    def where(self) -> str:
        """``PostgreSQL at host:port/db``: how errors name this server (never with the password)."""
        return f"PostgreSQL at {self.url.host or 'localhost'}:{self.url.port or 5432}/{self.url.database}"

    def dsn(self, database: str | None = None) -> str:
        """A plain ``postgresql://`` DSN (password included, no query) for ``asyncpg.connect``."""
        url = self.url.set(drivername="postgresql")
        if database is not None:
            url = url.set(database=database)
        return url.render_as_string(hide_password=False)

    def connect_args(self) -> dict[str, Any]:
        """The TLS keywords for ``asyncpg.connect`` / SQLAlchemy's ``connect_args``.

        Raises:
            PermanentError: a certificate file cannot be used.
        """
        argument = self.tls.ssl_argument()
        return {} if argument is None else {"ssl": argument}

    async def connect(
        self, *, connect_timeout_s: float, database: str | None = None, **kwargs: Any
    ) -> asyncpg.Connection:
        """``asyncpg.connect`` to this server (or another ``database`` on it) with its TLS settings.

        Raises:
            PermanentError: TLS was required and refused, failed verification, or a certificate
                file cannot be used.
            Exception: anything else asyncpg raises, unchanged.
        """
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self.dsn(database), timeout=connect_timeout_s, **self.connect_args(), **kwargs
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
