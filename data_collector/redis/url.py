"""The one check every ``redis.url`` passes before a Redis client is built from it.

redis-py turns a URL it does not like into errors that point nowhere: an unknown query parameter
becomes ``TypeError: ... unexpected keyword argument`` in one client and is silently dropped by
another, and a ``rediss://`` URL whose ``ssl_ca_certs`` file is missing fails at connect time as
"Error 2 connecting ... No such file or directory", which looks like an unreachable server and is
retried forever. :func:`check_redis_url` refuses all of that up front with one :class:`ConfigError`
line that names the parameter (or the file), and never the password.

Accepted query parameters are those of redis-py 6.4's ``redis.connection.parse_url`` that both the
sync and the asyncio clients honour. Timeouts, pool size and retries are not taken from the URL:
the project sets them from ``redis.*`` / ``performance.*`` so that every call stays bounded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from data_collector.echo import URL_ENCODE_HINT, keyed, masked_url, shown_input
from data_collector.errors import ConfigError

__all__ = ["SCHEMES", "check_redis_url", "parse_redis_url"]

SCHEMES = ("redis", "rediss", "unix")

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def _boolean(value: str) -> str | None:
    if value.lower() in _TRUE | _FALSE:
        return None
    return "must be true or false"


def _count(value: str) -> str | None:
    if value.isdigit():
        return None
    return "must be a whole number >= 0"


def _cert_reqs(value: str) -> str | None:
    if value.lower() in ("none", "optional", "required"):
        return None
    return "must be none, optional or required"


def _readable_file(value: str) -> str | None:
    path = Path(value).expanduser()
    if not path.exists():
        return f"file {value} does not exist"
    if not path.is_file():
        return f"{value} is not a file"
    if not os.access(path, os.R_OK):
        return f"file {value} is not readable"
    return None


def _any(value: str) -> str | None:
    return None


Check = Callable[[str], "str | None"]

#: Parameters any scheme may carry, and how their values are checked.
_COMMON: dict[str, Check] = {
    "db": _count,
    "client_name": _any,
    "username": _any,
    "password": _any,
    "health_check_interval": _count,
    "socket_keepalive": _boolean,
}

#: ``rediss://`` only. ``ssl_ca_path``, ``ssl_password`` and ``ssl_min_version`` are left out:
#: redis.asyncio's SSLConnection does not take them, and the sync client's ``ssl_min_version``
#: needs an ``ssl.TLSVersion`` that a URL cannot carry.
_TLS: dict[str, Check] = {
    "ssl_ca_certs": _readable_file,
    "ssl_certfile": _readable_file,
    "ssl_keyfile": _readable_file,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _boolean,
    "ssl_ciphers": _any,
    "ssl_ca_data": _any,
}

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


def parse_redis_url(url: str, *, key: str | None = "redis.url") -> SplitResult:
    """Split a Redis URL the way redis-py does (``urllib.parse``), checking its shape only.

    The scheme, the port and the database number are checked; query parameters are left to
    :func:`check_redis_url`, which needs the files they name to exist.

    Args:
        url: the URL, e.g. ``redis://:secret@cache.example:6380/0``.
        key: how messages name where the URL came from; None leaves the naming to the caller.

    Returns:
        The split URL, its scheme lower-cased.

    Raises:
        ConfigError: one line naming ``key`` and showing the URL with its password masked.
    """
    scheme, sep, _ = url.partition("://")
    shown = masked_url(url)
    if not sep or scheme.lower() not in SCHEMES:
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
    query parameter is one the project's clients honour (given once, with a valid value), that TLS
    parameters only appear in ``rediss://`` URLs, and that the ``ssl_ca_certs``, ``ssl_certfile``
    and ``ssl_keyfile`` files exist and are readable.

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
        check = _COMMON.get(name)
        if check is None and name in _TLS:
            if scheme != "rediss":
                raise ConfigError(keyed(key, f"{name} needs a rediss:// URL, not {scheme}://"))
            check = _TLS[name]
        if check is None:
            if name in _SET_ELSEWHERE:
                raise ConfigError(
                    f"{key}: query parameter {shown_input(name)} is not taken from the URL; {_SET_ELSEWHERE[name]}"
                )
            known = ", ".join([*_COMMON, *(_TLS if scheme == "rediss" else ())])
            raise ConfigError(keyed(key, f"unknown query parameter {shown_input(name)} (known: {known})"))
        if not value:
            raise ConfigError(keyed(key, f"query parameter {shown_input(name)} has no value"))
        problem = check(value)
        if problem is not None:
            # File problems name the path themselves; checked values are never secrets.
            shown = "" if check is _readable_file else f"={shown_input(value)}"
            raise ConfigError(keyed(key, f"{name}{shown} {problem}"))
    return url
