"""The scripts' argument parser: a usage error is one short line on stderr and exit code 2.

argparse's own ``error()`` prints the whole usage block and then the message, which repeats the
bad argument in full: a 5,000-character ``--start`` became a 5 kB line. Here the message goes
through :func:`~data_collector.echo.one_line` and ``--help`` still shows the usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from data_collector.cli.exits import EXIT_USAGE
from data_collector.echo import one_line, shown_input

__all__ = ["EXIT_USAGE", "LOG_LEVELS", "OneLineParser", "log_level"]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are ``error: <one line> (see --help)`` and exit 2."""

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as exc:
            raise _shortened(exc, action, arg_string) from None

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            raise _shortened(exc, action, value) from None

    def error(self, message: str) -> NoReturn:
        """Print the problem as one bounded line on stderr and exit with :data:`EXIT_USAGE`."""
        print(f"error: {one_line(message)} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _shortened(exc: argparse.ArgumentError, action: argparse.Action, value: object) -> argparse.ArgumentError:
    """``exc`` with the value argparse echoed in full (``invalid int value: '...'``) shown short."""
    return argparse.ArgumentError(action, exc.message.replace(repr(value), shown_input(value)))


def log_level(text: str) -> str:
    """argparse ``type=`` for ``--log-level``: one of :data:`LOG_LEVELS`, any case.

    Raises:
        argparse.ArgumentTypeError: anything else, echoed short.
    """
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown level {shown_input(text)}; use one of {', '.join(LOG_LEVELS)}"
        )
    return level
