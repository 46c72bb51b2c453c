"""What the collector reports to a performance monitor.

:class:`utils.performance_monitor.PerformanceMonitor` satisfies this protocol; the collector uses
``get_default_monitor()`` unless it is given another monitor.
"""

from __future__ import annotations

from typing import Protocol


class CollectorMonitor(Protocol):
    def record_api_call(self, duration_ms: float, success: bool = True, *, status: int | None = None) -> None:
        """One exchange REST call; ``status`` 429/418 counts as rate limited."""

    def record_request_weight(
        self, sent: int, used: int, limit: int, budget: int, resets_in_s: float
    ) -> None:
        """A request of weight ``sent`` is done; the exchange's minute counts ``used`` of ``limit``
        (we allow ourselves ``budget``) and ends in ``resets_in_s`` seconds."""

    def record_retry(self, n: int = 1) -> None:
        """``n`` retries of a failed call."""

    def record_db_operation(
        self, op: str, duration_ms: float, rows: int = 0, *, written: bool | None = None
    ) -> None:
        """One database operation and the rows it wrote."""

    def record_gaps(self, n: int = 1) -> None:
        """``n`` gaps found."""

    def record_archive_file(self, nbytes: int, rows: int) -> None:
        """One archive file verified and its ``rows`` queued; ``nbytes`` the zip's size."""

    def set_queue_depth(self, depth: int) -> None:
        """Batches waiting for the writers."""


def default_monitor() -> CollectorMonitor:
    """The process-wide monitor (``utils.performance_monitor.get_default_monitor()``)."""
    from utils.performance_monitor import get_default_monitor

    return get_default_monitor()
