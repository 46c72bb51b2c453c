"""Benchmarks: each runs the project's path beside its baseline, in the same process.

Run ``python -m benchmarks [NAME ...] [--quick] [--json out.json]``. Each module
``benchmarks/bench_<name>.py`` defines ``NAME``, ``DESCRIPTION`` and
``async def run(ctx: BenchContext) -> list[Table]``.
"""
