"""Exit codes and stop signals, the same for every command.

Exit codes: 0 done; 1 a runtime failure (a server unreachable, some pairs failed); 2 a usage or
configuration error the user must fix; 130 stopped by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from data_collector.errors import CollectorError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def error_exit_code(exc: CollectorError) -> int:
    """2 for what the user must fix, 1 for servers that are down or pairs that failed."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    return EXIT_FAILED


def install_stop_signals(
    loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]
) -> list[signal.Signals]:
    """Call ``on_stop`` on SIGINT and SIGTERM; return the signals installed (for :func:`remove_signals`).

    Where the loop cannot take handlers (not the main thread, Windows) none are installed and
    Ctrl-C arrives as ``KeyboardInterrupt`` instead.
    """
    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_stop)
            installed.append(sig)
    return installed


def remove_signals(loop: asyncio.AbstractEventLoop, installed: list[signal.Signals]) -> None:
    """Remove the handlers :func:`install_stop_signals` installed."""
    for sig in installed:
        loop.remove_signal_handler(sig)
