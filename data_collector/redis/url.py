"""The one check every ``redis.url`` passes before a Redis client is built from it.

redis-py parses the URL (:func:`redis.connection.parse_url`) and checks the values it understands
(its ``URL_QUERY_ARGUMENT_PARSERS`` and the connection classes' own argument checks); this module
runs that parsing early and turns its errors into one :class:`ConfigError` line naming
``redis.url``, never showing the password. It adds only what redis-py does not do, each measured
against redis-py 6.4's ``redis/connection.py``:

* ``parse_url`` passes every unknown query name on as a keyword argument (``kwargs[name] =
  value``): the sync client fails with ``TypeError: ... unexpected keyword argument`` at the first
  command, and names such as ``retry`` or ``parser_class`` take Python objects a URL cannot carry.
  So only the names listed below are accepted, and only where both the sync and the asyncio
  connection class of the URL's scheme take them (read from their signatures).
* ``parse_url`` keeps the first of a repeated parameter and drops empty ones silently.
* its ``to_bool`` reads any text but ``0/f/false/n/no`` as true (``socket_keepalive=maybe``, and
  even ``socket_keepalive=off``).
* a missing ``ssl_ca_certs`` / ``ssl_certfile`` / ``ssl_keyfile`` fails only at connect time, as
  "Error 2 connecting ... No such file or directory": an unreachable server, retried forever.
* a bad port or a non-numeric database path is a raw ``ValueError`` or silently database 0.

Timeouts, pool size and retries are not taken from the URL: the project sets them from
``redis.*`` / ``performance.*`` so that every call stays bounded.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import redis.asyncio.connection as async_connection
import redis.connection as sync_connection
from redis.exceptions import RedisError

from data_collector.echo import URL_ENCODE_HINT, keyed, masked_url, one_line, shown_input
from data_collector.errors import ConfigError

__all__ = ["SCHEMES", "check_redis_url", "parse_redis_url"]

SCHEMES = ("redis", "rediss", "unix")

#: Query parameters redis-py hands on as text (it types only those in URL_QUERY_ARGUMENT_PARSERS).
_TEXT_PARAMETERS = (
    "client_name",
    "username",
    "password",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_ciphers",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_password",
)
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
#: to_bool's false spellings are all it reads as false: "off" would silently mean true.
_FALSE = sync_connection.FALSE_STRINGS
_TRUE = ("1", "T", "TRUE", "Y", "YES", "ON")
_TYPE_NAMES = {int: "a whole number >= 0", float: "a number", sync_connection.to_bool: "true or false"}

#: Parameters redis-py knows that the project sets elsewhere, and where.
_SET_ELSEWHERE = {
    "socket_timeout": "set redis.socket_timeout_s instead",
    "socket_connect_timeout": "set redis.connect_timeout_s instead",
    "timeout": "set redis.socket_timeout_s instead",
    "max_connections": "set performance.redis_pool_size instead",
    "retry_on_timeout": "retries are off on purpose (a write must not be applied twice)",
    "retry_on_error": "retries are off on purpose (a write must not be applied twice)",
    "decode_responses": "the project decodes replies itself",
    "encoding": "the project decodes replies itself",
    "encoding_errors": "the project decodes replies itself",
    "protocol": "the project speaks RESP2",
}

_CLASSES = {
    "redis": (sync_connection.Connection, async_connection.Connection),
    "rediss": (sync_connection.SSLConnection, async_connection.SSLConnection),
    "unix": (sync_connection.UnixDomainSocketConnection, async_connection.UnixDomainSocketConnection),
}


def _arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls`` takes, its base classes' included."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names.update(inspect.signature(vars(klass)["__init__"]).parameters)
    return names


def _known(scheme: str) -> list[str]:
    """The query parameters both clients honour for ``scheme``, less those set elsewhere."""
    sync_cls, async_cls = _CLASSES[scheme]
    taken = _arguments(sync_cls) & _arguments(async_cls)
    offered = [*sync_connection.URL_QUERY_ARGUMENT_PARSERS, *_TEXT_PARAMETERS]
    return sorted(name for name in offered if name in taken and name not in _SET_ELSEWHERE)


_KNOWN = {scheme: _known(scheme) for scheme in SCHEMES}


def _file_problem(value: str) -> str | None:
    path = Path(value).expanduser()
    if not path.exists():
        return f"file {value} does not exist"
    if not path.is_file():
        return f"{value} is not a file"
    if not os.access(path, os.R_OK):
        return f"file {value} is not readable"
    return None


def _value_problem(name: str, value: str) -> str | None:
    """What is wrong with a typed value, read with redis-py's own parser for ``name``."""
    parsers = cast("dict[str, Callable[[str], Any]]", sync_connection.URL_QUERY_ARGUMENT_PARSERS)
    parser = parsers.get(name)
    if parser is None:
        return None
    if parser is sync_connection.to_bool:
        ok = value.upper() in _TRUE + _FALSE
    else:
        try:
            ok = parser(value) >= 0
        except (TypeError, ValueError):
            ok = False
    return None if ok else f"must be {_TYPE_NAMES.get(parser, 'valid')}"


def parse_redis_url(url: str, *, key: str | None = "redis.url") -> SplitResult:
    """Split a Redis URL the way redis-py does (``urllib.parse``), checking its shape only.

    The scheme, the port and the database number are checked; query parameters are left to
    :func:`check_redis_url`, which needs the files they name to exist.

    Args:
        url: the URL, e.g. ``redis://:secret@cache.example:6380/0``.
        key: how messages name where the URL came from; None leaves the naming to the caller.

    Returns:
        The split URL.

    Raises:
        ConfigError: one line naming ``key`` and showing the URL with its password masked.
    """
    shown = masked_url(url)
    # redis-py matches the scheme case-sensitively (parse_url: url.startswith("redis://")).
    if not url.startswith(tuple(f"{scheme}://" for scheme in SCHEMES)):
        raise ConfigError(keyed(key, f"must start with redis://, rediss:// or unix://, not {shown}"))
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018  (parsing it is the check)
    except ValueError:
        raise ConfigError(keyed(key, f"cannot parse {shown}; {URL_ENCODE_HINT}")) from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(keyed(key, "unix:// needs a socket path, e.g. unix:///run/redis.sock"))
        return parts
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is not None and port < 1:
        # A raw '/', '?' or '#' in a password ends the host part early and looks like a bad port.
        raise ConfigError(
            keyed(key, f"the port must be a number from 1 to 65535 in {shown}; {URL_ENCODE_HINT}")
        )
    db_path = unquote(parts.path).replace("/", "")
    if db_path and not db_path.isdigit():
        raise ConfigError(keyed(key, f"the path must be a database number such as /0, not {shown}"))
    return parts


def check_redis_url(url: str, *, key: str | None = "redis.url") -> str:
    """Refuse a Redis URL that redis-py would misread, and return it unchanged.

    Checks the scheme (``redis``, ``rediss``, ``unix``), the port and database number, that every
    query parameter is one both of redis-py's clients honour for the scheme (given once, with a
    value redis-py accepts), and that the ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile``
    files exist and are readable.

    Args:
        url: the URL, e.g. ``rediss://:secret@cache.example:6380/0?ssl_ca_certs=/etc/ca.pem``.
        key: the config key named in messages; None leaves the naming to the caller.

    Returns:
        ``url`` itself, so a call site can wrap it: ``from_url(check_redis_url(url), ...)``.

    Raises:
        ConfigError: one line naming the problem; the password is never part of it.
    """
    parts = parse_redis_url(url, key=key)
    scheme = parts.scheme
    seen: set[str] = set()
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        value = unquote(raw)  # redis-py unquotes query values a second time
        if name in seen:
            raise ConfigError(keyed(key, f"query parameter {shown_input(name)} is given twice"))
        seen.add(name)
        if name not in _KNOWN[scheme]:
            if name in _SET_ELSEWHERE:
                raise ConfigError(
                    keyed(
                        key,
                        f"query parameter {shown_input(name)} is not taken from the URL; {_SET_ELSEWHERE[name]}",
                    )
                )
            if name in _KNOWN["rediss"] and name not in _KNOWN["redis"]:
                raise ConfigError(keyed(key, f"{name} needs a rediss:// URL, not {scheme}://"))
            known = ", ".join(_KNOWN[scheme])
            raise ConfigError(keyed(key, f"unknown query parameter {shown_input(name)} (known: {known})"))
        if not value:
            raise ConfigError(keyed(key, f"query parameter {shown_input(name)} has no value"))
        problem = _file_problem(value) if name in _FILES else _value_problem(name, value)
        if problem is not None:
            # File problems name the path themselves; checked values are never secrets.
            shown = "" if name in _FILES else f"={shown_input(value)}"
            raise ConfigError(keyed(key, f"{name}{shown} {problem}"))
    # The rest is redis-py's: build (never connect) the connection it would make from this URL,
    # so that the checks its constructors run (ssl_cert_reqs, ...) are met here, once.
    try:
        kwargs: dict[str, Any] = sync_connection.parse_url(url)  # type: ignore[no-untyped-call]
        kwargs.pop("connection_class", sync_connection.Connection)(**kwargs)
    except (RedisError, TypeError, ValueError) as exc:
        raise ConfigError(keyed(key, one_line(str(exc)))) from None
    return url
