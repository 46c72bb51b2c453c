"""One error hierarchy for the whole project.

Every error the library raises on purpose derives from :class:`CollectorError`. It splits three
ways, as asyncpg's does:

* :class:`TransientError`: the world failed for now (network, 5xx, 429, timeouts); retrying later
  may succeed.
* :class:`PermanentError`: the exchange or server said no for good (unknown symbol, unsupported
  timeframe, a database that refuses us); stop that piece of work and say why.
* :class:`UsageError`: the caller misused the API or gave bad input (bad config, start after end,
  using an object after ``close()``); fix the call.

Scripts catch :class:`CollectorError` at the top and print its message as one line.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base class of every error this project raises on purpose."""


class TransientError(CollectorError):
    """A failure that may go away if the same call is retried later."""


class PermanentError(CollectorError):
    """A failure that retrying will not fix: the other side refused the request."""


class StoreNotInitializedError(PermanentError):
    """The store's schema or tables do not exist yet; ``initialize()`` creates them."""


class UsageError(CollectorError):
    """The caller misused the API or passed invalid input."""


class ConfigError(UsageError):
    """The configuration is invalid. The message names the key and says what to fix."""


class InvalidSymbolError(UsageError):
    """A symbol is not of the form ``BASE/QUOTE`` or is not listed by the exchange."""


class InvalidTimeframeError(UsageError):
    """A timeframe is not one the exchange supports."""


class MissingExtraError(UsageError):
    """An optional package is not installed; the message names the extra that brings it."""


class ClosedError(UsageError):
    """An object was used after ``close()``."""


class ServerUnavailableError(TransientError):
    """A server (PostgreSQL, Redis, the exchange) could not be reached."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what} is unreachable: {detail}")
        self.what = what
        self.detail = detail


def is_transient(exc: BaseException) -> bool:
    """True for failures that may go away on retry: this project's transient errors, timeouts
    and broken connections. ``data_collector.retrying.is_transient`` adds ccxt's error classes;
    this one serves code that must not import ccxt (the streamer)."""
    if isinstance(exc, PermanentError | UsageError):
        return False
    return isinstance(exc, TransientError | TimeoutError | ConnectionError)
