"""Which parts of a pair's missing ranges come from archive files, and which from REST.

Pure functions over millisecond ranges ``[start_ms, end_ms)`` (the ranges of
:func:`data_collector.backfill.plan.plan_backfill`, already clipped to the listing and to what is
covered). Whole months that are published become monthly files, whole days daily files; the rest
(part days at the edges, the days not yet published) stays with REST.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from data_collector.backfill.plan import Range
from data_collector.markets import DAY_MS, TIMEFRAME_MS


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """One archive file: its period, its date in the path, and the candle opens it holds."""

    period: Literal["daily", "monthly"]
    date: str
    start_ms: int
    end_ms: int


def archive_timeframe(timeframe: str) -> bool:
    """Whether files of ``timeframe`` cut at day and month boundaries (1s .. 1d)."""
    ms = TIMEFRAME_MS.get(timeframe)
    return ms is not None and DAY_MS % ms == 0


def _month_end(ts_ms: int) -> int:
    d = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return calendar.timegm((d.year + d.month // 12, d.month % 12 + 1, 1, 0, 0, 0)) * 1000


def _date(ts_ms: int, fmt: str) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime(fmt)


def split_for_archives(
    missing: list[Range], now_ms: int, *, daily_lag_ms: int, monthly_lag_ms: int
) -> tuple[list[ArchiveFile], list[Range]]:
    """Cut ``missing`` into archive files and the ranges left for REST.

    Args:
        missing: aligned ranges without coverage.
        now_ms: the exchange's clock.
        daily_lag_ms, monthly_lag_ms: how long after its end a file is expected to be published.
    """
    files: list[ArchiveFile] = []
    rest: list[Range] = []
    for start, end in missing:
        cursor = start
        while cursor < end:
            day_end = cursor - cursor % DAY_MS + DAY_MS
            month_end = _month_end(cursor)
            month_start = _date(cursor, "%d") == "01" and cursor % DAY_MS == 0
            if month_start and month_end <= end and now_ms >= month_end + monthly_lag_ms:
                files.append(ArchiveFile("monthly", _date(cursor, "%Y-%m"), cursor, month_end))
                cursor = month_end
            elif cursor % DAY_MS == 0 and day_end <= end and now_ms >= day_end + daily_lag_ms:
                files.append(ArchiveFile("daily", _date(cursor, "%Y-%m-%d"), cursor, day_end))
                cursor = day_end
            else:
                stop = min(day_end, end)
                if rest and rest[-1][1] == cursor:
                    rest[-1] = (rest[-1][0], stop)
                else:
                    rest.append((cursor, stop))
                cursor = stop
    return files, rest
