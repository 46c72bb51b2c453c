"""The progress displays show rows and bytes per second of archive work."""

from __future__ import annotations

import io

from rich.console import Console

from data_collector.backfill.report import PairReport
from data_collector.cli.progress import PlainProgress, RichProgress, archive_rates


def _pair(rows: int, nbytes: int, status: str = "running") -> PairReport:
    pair = PairReport("BTC/USDT", "1m", candles_expected=rows + 100, candles_fetched=rows + 10)
    pair.archive_rows, pair.archive_bytes, pair.status = rows, nbytes, status  # type: ignore[assignment]
    return pair


def test_rates_count_archive_rows_and_bytes_only() -> None:
    assert archive_rates([_pair(0, 0)], 2.0) == ""
    line = archive_rates([_pair(200_000, 30_000_000), _pair(100_000, 10_000_000)], 2.0)
    assert line == "archive 300,000 rows (150,000 rows/s), 40.0 MB (20.0 MB/s)"


def test_plain_progress_prints_archive_rates_and_a_pair_s_archive_share() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, interval_s=0.0)
    progress(_pair(44_640, 2_000_000))
    progress(_pair(44_640, 2_000_000, "done"))
    text = out.getvalue()
    assert "rows/s" in text and "MB/s" in text and "archive 44,640 rows" in text
    assert "BTC/USDT 1m: done, 44,650 candles (44,640 from 2.0 MB of archives)" in text


def test_rich_progress_shows_archive_rates_per_pair() -> None:
    out = io.StringIO()
    with RichProgress(Console(file=out, width=220, force_terminal=False)) as progress:
        progress(_pair(44_640, 2_000_000))
        progress(_pair(44_640, 2_000_000, "done"))
    assert "rows/s" in out.getvalue() and "MB/s" in out.getvalue()


def test_the_performance_monitor_summary_shows_archive_rates() -> None:
    from utils.performance_monitor import PerformanceMonitor

    monitor = PerformanceMonitor(window=16)
    assert "Archive files" not in monitor.format_summary()
    monitor.record_archive_file(2_000_000, 44_640)
    monitor.record_archive_file(1_000_000, 1_440)
    archive = monitor.get_summary()["archive"]
    assert (archive["files"], archive["bytes"], archive["rows"]) == (2, 3_000_000, 46_080)
    assert archive["rows_per_s"] > 0 and archive["bytes_per_s"] > 0
    assert "Archive files:" in monitor.format_summary() and "rows/s (2 files, 3.0 MB, 46,080 rows)" in (
        monitor.format_summary()
    )
