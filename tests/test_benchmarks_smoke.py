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
