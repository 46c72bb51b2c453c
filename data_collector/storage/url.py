"""The one parser of ``database.url``: SQLAlchemy's ``make_url``, with errors that name the key.

Every place that reads the database URL (the config check, ``open_store``, both stores, the
PostgreSQL connect arguments, the health check, the demo) parses it here, so a URL means the same
thing everywhere and a bad one fails the same way everywhere: one :class:`ConfigError` line that
names the key and shows the URL with its password masked. ``make_url`` on its own turns a raw
``@`` or ``:`` in a password into ``ValueError: invalid literal for int() ... '<password
tail>@host:5432'``, or silently into a host name that carries part of the password.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_collector.echo import URL_ENCODE_HINT, keyed, masked_url
from data_collector.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["BACKENDS", "parse_database_url"]

#: SQLAlchemy backend name -> the URL form the project documents for it.
BACKENDS = {"postgresql": "postgresql+asyncpg://", "sqlite": "sqlite+aiosqlite:///"}


def parse_database_url(url: str | URL, *, key: str | None = "database.url") -> URL:
    """Parse a ``postgresql+asyncpg://`` or ``sqlite+aiosqlite:///`` URL.

    Args:
        url: The URL text (or an already parsed ``URL``, returned as is after the checks).
        key: How messages name where the URL came from, e.g. ``config.yaml: database.url``;
            None leaves the naming to the caller.

    Returns:
        SQLAlchemy's ``URL``.

    Raises:
        ConfigError: one line naming ``key``: the URL does not parse, names another database,
            has a port outside 1-65535 or a host that holds an ``@``. The password is never shown.
    """
    # Imported here: sqlalchemy costs a streamer that never opens the database ~9 MB.
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    if isinstance(url, URL):
        parsed = url
        # masked_url also hides what a host holding an '@' carries of the password.
        shown = masked_url(url.render_as_string(hide_password=True))
    else:
        shown = masked_url(url)
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError, TypeError):
            raise ConfigError(keyed(key, f"cannot parse {shown}; {URL_ENCODE_HINT}")) from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ConfigError(keyed(key, f"must start with {' or '.join(BACKENDS.values())}, not {shown}"))
    if parsed.host is not None and "@" in parsed.host:
        raise ConfigError(keyed(key, f"the host part holds an '@' in {shown}; {URL_ENCODE_HINT}"))
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigError(keyed(key, f"the port must be a number from 1 to 65535 in {shown}"))
    return parsed
