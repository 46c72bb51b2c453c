"""Logging for scripts: console plus a rotating file (``logging.file``), level from the config.

Secrets never reach a log line: configuration values are ``SecretStr`` (their repr is masked), and
a filter masks URL passwords (``scheme://user:password@host``) in any message that slips one in.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from pathlib import Path

from data_collector.config import Config

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MARK = "_dc_handler"


#: Set on a record (``extra={FILE_ONLY: True}``) that the script also prints itself: the log file
#: gets it, the console does not show it twice.
FILE_ONLY = "dc_file_only"


class _NotFileOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, FILE_ONLY, False)


def log_outcome(message: str, level: int = logging.INFO) -> None:
    """Record in the log file a line the script prints itself (an error, the run's summary)."""
    logging.getLogger("data_collector.cli").log(level, "%s", message, extra={FILE_ONLY: True})


class RedactSecrets(logging.Filter):
    """Replace the password of any URL in a log message with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _URL_PASSWORD.sub(r"\g<head>***@", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(config: Config, level: str | None = None, *, console_level: str | None = "WARNING") -> None:
    """Configure the root logger once for a script (calling it again replaces our handlers).

    Args:
        config: ``logging.level``, ``logging.file`` (``None``: no file), ``max_bytes``,
            ``backup_count``.
        level: overrides ``logging.level`` (the script's ``--log-level``).
        console_level: the lowest level also shown on stderr (``None``: no console); ``level``
            lowers it when given, so ``--log-level DEBUG`` shows everything.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()
    chosen = (level or config.logging.level).upper()
    root.setLevel(chosen)
    handlers: list[logging.Handler] = []
    if config.logging.file:
        path = Path(config.logging.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path,
                maxBytes=config.logging.max_bytes,
                backupCount=config.logging.backup_count,
                encoding="utf-8",
            )
        )
    if console_level is not None:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(level.upper() if level else console_level)
        stderr.addFilter(_NotFileOnly())
        handlers.append(stderr)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(RedactSecrets())
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    # ccxt logs every request body at DEBUG; keep it at INFO unless asked for.
    logging.getLogger("ccxt").setLevel(max(logging.INFO, root.level))
