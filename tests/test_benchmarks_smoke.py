"""CI runs every benchmark in its quick form but those of ``SLOW_QUICK``: it must execute end to
end. No timing is asserted. ``-m slow`` runs the quick forms of ``SLOW_QUICK``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Quick forms that run with ``-m slow`` only (about 100 s between them on 2 cores): the project
#: path each drives end to end is proven in CI by the tests named here; what they add is the
#: benchmark's own code and its numbers.
SLOW_QUICK = {
    # the streamer's repair of OKX trades lost to dropped connections, over history-trades
    "stream_repair": "tests/chaos/test_stream_gapfree_okx.py, tests/streaming/test_stream_repair.py",
    # TradeGapCloser's trade backfill over a hole, into PostgreSQL
    "trade_holes": "tests/streaming/test_stream_trades_store.py (gap wider than repair_max_ids)",
    # aggTrades from daily archive zips (the klines archive path stays in CI's quick run)
    "archive_trades": "tests/backfill/test_archive_trades_kill.py, tests/backfill/test_archive_perp_trades_e2e.py",
    # run_distributed with worker processes on 127.0.0.2/.3/.4 against the per-IP simulator
    "distributed": "tests/distributed/test_backfill_jobs.py, tests/distributed/test_shared_ip.py",
    # the project's procrastinate set-up (a SIGKILLed worker's job runs again); saq is a candidate
    # the project does not use
    "job_engines": "tests/distributed/test_engine.py",
}


def _benchmarks() -> list[str]:
    from benchmarks.harness import discover

    return sorted(discover())


def _quick_run(names: list[str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *names, "--quick", "--repeats", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "machine: cores=" in proc.stdout
    assert out.exists()
    for name in names:
        assert f"({name} took " in proc.stdout, f"{name} did not run"


def test_benchmarks_quick_run_completes(tmp_path: Path) -> None:
    """Every benchmark not in ``SLOW_QUICK`` (a new one runs here unless listed there)."""
    assert set(SLOW_QUICK) <= set(_benchmarks()), "SLOW_QUICK names a benchmark that is gone"
    _quick_run([name for name in _benchmarks() if name not in SLOW_QUICK], tmp_path)


@pytest.mark.slow
def test_slow_benchmarks_quick_run_completes(tmp_path: Path) -> None:
    _quick_run(sorted(SLOW_QUICK), tmp_path)


def test_unknown_benchmark_name_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "nosuch"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "unknown benchmark" in proc.stdout


def test_a_row_compares_with_the_row_it_names() -> None:
    """A latency percentile is compared with the baseline's same percentile, not with whatever
    row is the table's baseline (the stream benchmark's p50 rows used to divide its p99)."""
    from benchmarks.harness import Row, Table

    table = Table("t")
    table.add(Row("plain: throughput", [10.0], "msg/s", baseline=True))
    table.add(Row("plain: p50", [4.0], "ms", higher_is_better=False))
    table.add(Row("plain: p99", [40.0], "ms", higher_is_better=False))
    p50 = table.add(Row("ours: p50", [2.0], "ms", higher_is_better=False, versus="plain: p50"))
    p99 = table.add(Row("ours: p99", [4.0], "ms", higher_is_better=False, versus="plain: p99"))
    fast = table.add(Row("ours: throughput", [30.0], "msg/s"))
    assert (table.ratio(p50), table.ratio(p99), table.ratio(fast)) == (2.0, 10.0, 3.0)
    assert table.ratio(table.rows[1]) is None  # another unit than the baseline's, and no versus
