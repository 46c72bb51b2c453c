"""aggTrades backfill from the simulator's archive tree vs the REST weight floor (issue 13).

The function is :func:`benchmarks.bench_archive.run_trades`; this module names it as its own
benchmark (``python -m benchmarks archive_trades``), apart from the klines one.
"""

from __future__ import annotations

from benchmarks.bench_archive import run_trades

NAME = "archive_trades"
DESCRIPTION = "aggTrades of the busiest symbol from daily archive zips vs the REST weight floor"

run = run_trades
