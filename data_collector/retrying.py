"""Which failures are worth retrying, and the one retry policy (tenacity) every call uses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ccxt.async_support as ccxt
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from data_collector.backoff import backoff_delay
from data_collector.errors import PermanentError, UsageError
from data_collector.errors import is_transient as base_is_transient

log = logging.getLogger(__name__)

#: ccxt errors that say "this request can never succeed": stop the pair and say why.
PERMANENT_CCXT_ERRORS: tuple[type[BaseException], ...] = (
    ccxt.BadSymbol,
    ccxt.BadRequest,
    ccxt.NotSupported,
    ccxt.AuthenticationError,
    ccxt.PermissionDenied,
    ccxt.AccountSuspended,
    ccxt.ArgumentsRequired,
)

#: ccxt errors of the network and the server's health: retry.
TRANSIENT_CCXT_ERRORS: tuple[type[BaseException], ...] = (
    ccxt.NetworkError,  # DDoSProtection (429/418), RequestTimeout, ExchangeNotAvailable (5xx), ...
    ccxt.BadResponse,  # a body that is not what the API promises (malformed JSON, NullResponse)
)


def is_transient(exc: BaseException) -> bool:
    """True for failures that may go away on retry (network, 5xx, 429, timeouts, bad bodies)."""
    if base_is_transient(exc):  # also says no to the project's permanent and misuse errors
        return True
    if isinstance(exc, (PermanentError, UsageError, *PERMANENT_CCXT_ERRORS)):
        return False
    return isinstance(exc, TRANSIENT_CCXT_ERRORS)


def http_status_of(exc: BaseException) -> int | None:
    """418 or 429 for ccxt's DDoSProtection, read from its message (ccxt puts the status there)."""
    if isinstance(exc, ccxt.DDoSProtection):
        text = str(exc)
        for status in (418, 429):
            if f" {status} " in text:
                return status
        return 429
    return None


def retry_policy(
    *,
    attempts: int = 8,
    initial_s: float = 0.2,
    max_s: float = 10.0,
    on_retry: Callable[[RetryCallState], Any] | None = None,
) -> AsyncRetrying:
    """Capped exponential backoff with jitter on transient errors; anything else is raised at once.

    Use as ``async for attempt in retry_policy(): with attempt: ...``. After the last attempt the
    last error is re-raised unchanged.
    """

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        log.debug("retry %d after %s: %s", state.attempt_number, type(exc).__name__, exc)
        if on_retry is not None:
            on_retry(state)

    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=lambda state: backoff_delay(state.attempt_number - 1, initial_s, max_s),
        stop=stop_after_attempt(attempts),
        before_sleep=before_sleep,
        reraise=True,
    )
