"""Progress displays for the collection script: rich bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import IO, Any

import psutil

from data_collector.backfill.report import CollectionReport, PairReport


class PlainProgress:
    """One line per finished pair and a total line every ``interval_s`` (for logs and pipes)."""

    def __init__(self, stream: IO[str], interval_s: float = 5.0) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self._pairs: dict[str, PairReport] = {}
        self._last = time.monotonic()
        self._started = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, pair: PairReport) -> None:
        self._pairs[pair.key] = pair
        if pair.status in ("done", "failed"):
            extra = f": {pair.error}" if pair.error else ""
            print(
                f"{pair.key}: {pair.status}, {_fetched(pair)}{extra}",
                file=self.stream,
                flush=True,
            )
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            fetched = sum(p.candles_fetched for p in self._pairs.values())
            expected = sum(p.candles_expected for p in self._pairs.values())
            elapsed = max(now - self._started, 1e-9)
            rate = fetched / elapsed
            line = f"progress: {fetched:,}/{expected:,} candles, {rate:,.0f}/s"
            archive = archive_rates(self._pairs.values(), elapsed)
            print(line + (f", {archive}" if archive else ""), file=self.stream, flush=True)


class RichProgress:
    """A rich bar per (symbol, timeframe) with candles, candles/s and ETA."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.0f} candles/s" if speed else "- candles/s")

        class ArchiveColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                pair = task.fields.get("pair")
                rates = archive_rates([pair], task.elapsed or 0.0) if pair is not None else ""
                return Text(rates)

        self.progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            ArchiveColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, pair: PairReport) -> None:
        task = self._tasks.get(pair.key)
        total = max(pair.candles_expected, pair.candles_fetched)
        status: str = "" if pair.status == "running" else pair.status
        if pair.error:
            status = f"failed: {pair.error[:60]}"
        if task is None:
            task = self.progress.add_task(pair.key, total=total or None, status=status, pair=pair)
            self._tasks[pair.key] = task
        completed = pair.candles_fetched
        if pair.status == "done":
            total = completed = max(total, completed, 1)
        self.progress.update(task, total=total or None, completed=completed, status=status, pair=pair)


def monitor_line(report: CollectionReport | None, client: Any, started: float) -> str:
    """One line of live performance: request and candle rates, weight, retries, 429s, memory, CPU."""
    elapsed = max(time.monotonic() - started, 1e-9)
    stats = client.stats if client is not None else None
    limiter = client.limiter if client is not None else None
    fetched = sum(p.candles_fetched for p in report.pairs.values()) if report is not None else 0
    proc = psutil.Process()
    parts = [f"[monitor {elapsed:,.0f}s]"]
    if stats is not None and limiter is not None:
        parts += [
            f"requests {stats.requests:,} ({stats.requests / elapsed * 60:,.0f}/min)",
            f"weight this minute {limiter.used_weight:,}/{limiter.budget or '-'}",
            f"retries {stats.retries}",
            f"429s {stats.http_429}",
            f"418s {stats.http_418}",
        ]
    archive = archive_rates(report.pairs.values(), elapsed) if report is not None else ""
    parts += [
        f"candles {fetched:,} ({fetched / elapsed:,.0f}/s)",
        *([archive] if archive else []),
        f"rss {proc.memory_info().rss / 2**20:,.0f} MB",
        f"cpu {proc.cpu_percent():.0f}%",
    ]
    return ", ".join(parts)


def archive_rates(pairs: Iterable[PairReport], elapsed_s: float) -> str:
    """``archive 1,234,567 rows (150,000 rows/s), 84.1 MB (10.5 MB/s)``; empty without archive work."""
    rows = nbytes = 0
    for p in pairs:
        rows += p.archive_rows
        nbytes += p.archive_bytes
    if not nbytes:
        return ""
    elapsed_s = max(elapsed_s, 1e-9)
    return (
        f"archive {rows:,} rows ({rows / elapsed_s:,.0f} rows/s), "
        f"{nbytes / 1e6:,.1f} MB ({nbytes / 1e6 / elapsed_s:,.1f} MB/s)"
    )


def _fetched(pair: PairReport) -> str:
    """``1,234 candles`` for an OHLCV pair, ``5,678 trades`` for a trades pair."""
    if pair.trades_fetched or pair.timeframe == "trades":
        return f"{pair.trades_fetched:,} trades"
    if pair.archive_rows:
        return f"{pair.candles_fetched:,} candles ({pair.archive_rows:,} from {pair.archive_bytes / 1e6:,.1f} MB of archives)"
    return f"{pair.candles_fetched:,} candles"
