"""CI runs every benchmark in its quick form: it must execute end to end. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_quick_run_completes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "machine: cores=" in proc.stdout
    assert out.exists()


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
