"""What a collection run did: the report returned by ``collect()`` and printed by the script."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_collector.markets import MINUTE_MS

PairStatus = Literal["pending", "running", "done", "failed", "stopped"]


@dataclass(slots=True)
class PairReport:
    """One (symbol, timeframe) of OHLCV, or one (symbol, data type) such as ``trades``."""

    symbol: str
    timeframe: str
    status: PairStatus = "pending"
    pages_planned: int = 0
    pages_done: int = 0
    candles_expected: int = 0
    candles_fetched: int = 0
    gaps_found: int = 0
    exchange_gaps: int = 0
    trades_fetched: int = 0
    #: Of ``candles_fetched``, the rows read from archive files, and those files' bytes.
    archive_rows: int = 0
    archive_bytes: int = 0
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.symbol} {self.timeframe}"


@dataclass(slots=True)
class CollectionReport:
    """Totals of one run. ``failures`` maps ``"SYMBOL TF"`` to the reason that pair stopped."""

    rows_written: int = 0
    rows_skipped: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    http_418: int = 0
    malformed_pages: int = 0
    gaps_found: int = 0
    gaps_repaired: int = 0
    exchange_gaps: int = 0
    weight_used: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    pairs: dict[str, PairReport] = field(default_factory=dict)
    #: Rows written per data type (``ohlcv``, ``trades``, ...).
    rows_by_type: dict[str, int] = field(default_factory=dict)
    #: Archive files stored, their bytes, and each file handed to REST: ``"SYM TF DATE: reason"``.
    archive_files: int = 0
    archive_bytes: int = 0
    archive_fallbacks: list[str] = field(default_factory=list)
    #: Archive candles compared with REST (``exchange.archive.cross_check``).
    archive_cross_checked: int = 0

    @property
    def failures(self) -> dict[str, str]:
        return {k: p.error or "failed" for k, p in self.pairs.items() if p.status == "failed"}

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def candles_fetched(self) -> int:
        return sum(p.candles_fetched for p in self.pairs.values())

    @property
    def trades_fetched(self) -> int:
        return sum(p.trades_fetched for p in self.pairs.values())

    def add_rows(self, data_type: str, written: int) -> None:
        """Count ``written`` rows of ``data_type``."""
        self.rows_by_type[data_type] = self.rows_by_type.get(data_type, 0) + written

    @property
    def candles_per_s(self) -> float:
        return self.candles_fetched / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def pair(self, symbol: str, timeframe: str) -> PairReport:
        key = f"{symbol} {timeframe}"
        if key not in self.pairs:
            self.pairs[key] = PairReport(symbol, timeframe)
        return self.pairs[key]

    def merge(self, other: CollectionReport) -> None:
        """Add another run's totals to this one (used by ``repair_gaps`` over several pairs)."""
        for name in (
            "rows_written",
            "rows_skipped",
            "requests",
            "retries",
            "http_429",
            "http_418",
            "malformed_pages",
            "gaps_found",
            "gaps_repaired",
            "exchange_gaps",
            "weight_used",
            "archive_files",
            "archive_bytes",
            "archive_cross_checked",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.elapsed_s += other.elapsed_s
        for data_type, rows in other.rows_by_type.items():
            self.add_rows(data_type, rows)
        self.interrupted = self.interrupted or other.interrupted
        self.pairs.update(other.pairs)
        self.archive_fallbacks.extend(other.archive_fallbacks)

    def summary(self) -> str:
        """A few human lines: totals, rates, then one line per failed pair."""
        done = sum(1 for p in self.pairs.values() if p.status == "done")
        state = (
            "interrupted" if self.interrupted else ("done" if not self.failures else "finished with failures")
        )
        lines = [
            f"Collection {state} in {self.elapsed_s:.1f} s: {done}/{len(self.pairs)} pairs complete",
            f"  rows written {self.rows_written:,}, skipped (already stored) {self.rows_skipped:,}, "
            f"candles fetched {self.candles_fetched:,} ({self.candles_per_s:,.0f}/s)",
            f"  requests {self.requests:,} (weight {self.weight_used:,}, "
            f"{self.requests / max(self.elapsed_s, 1e-9) * MINUTE_MS / 1000:,.0f}/min), retries {self.retries}, "
            f"malformed pages {self.malformed_pages}, 429s {self.http_429}, 418s {self.http_418}",
            "  rows written by data type: "
            + (", ".join(f"{k} {v:,}" for k, v in sorted(self.rows_by_type.items())) or "none")
            + (f"; trades fetched {self.trades_fetched:,}" if self.trades_fetched else ""),
            f"  gaps found {self.gaps_found}, repaired {self.gaps_repaired}; "
            f"exchange-side gaps recorded {self.exchange_gaps}",
        ]
        if self.archive_files or self.archive_fallbacks:
            lines.append(
                f"  archive files {self.archive_files:,} ({self.archive_bytes / 1e6:,.1f} MB, "
                f"{self.archive_bytes / 1e6 / max(self.elapsed_s, 1e-9):,.1f} MB/s), "
                f"fallbacks {len(self.archive_fallbacks)}"
                + (
                    f", candles cross-checked with REST {self.archive_cross_checked:,}"
                    if self.archive_cross_checked
                    else ""
                )
            )
            lines.extend(f"  archive fallback {note}" for note in self.archive_fallbacks)
        for key, reason in sorted(self.failures.items()):
            lines.append(f"  FAILED {key}: {reason}")
        if self.interrupted:
            lines.append("  stopped early: what was fetched is stored; run again to resume")
        return "\n".join(lines)
