"""The benchmark harness: repeat, summarise (median, min-max), compare to a baseline, print."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pkgutil
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import psutil

PG_DSN = os.environ.get("DC_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_URL = os.environ.get("DC_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

P = TypeVar("P")


@dataclass
class Row:
    """One measured line of a table: the values of every repeat, in ``unit``."""

    label: str
    values: list[float]
    unit: str
    baseline: bool = False
    higher_is_better: bool = True
    note: str = ""
    #: The label of the row this one is compared with (default: the table's baseline row).
    versus: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)
    #: Lines printed under the table: targets met or not, the setup.
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def baseline(self) -> Row | None:
        return next((r for r in self.rows if r.baseline), None)

    def ratio(self, row: Row) -> float | None:
        base = self.baseline() if row.versus is None else next(r for r in self.rows if r.label == row.versus)
        if base is None or row is base or not base.values or not row.values:
            return None
        if base.unit != row.unit:
            return None
        if row.higher_is_better:
            return row.median / base.median if base.median else None
        return base.median / row.median if row.median else None


@dataclass
class BenchContext:
    quick: bool
    repeats: int
    #: A benchmark's named size (``--size``), for runs larger than the default; ``None``: default.
    size: str | None = None
    pg_dsn: str = PG_DSN
    pg_url: str = PG_URL
    redis_url: str = REDIS_URL


async def repeat(n: int, fn: Callable[[], Awaitable[float]]) -> list[float]:
    """Run ``fn`` ``n`` times and collect what each run returns."""
    return [await fn() for _ in range(n)]


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(table: Table) -> str:
    header = ("case", "median", "min-max", "unit", "vs baseline")
    lines = [
        [
            r.label + (" (baseline)" if r.baseline else ""),
            _fmt(r.median),
            f"{_fmt(min(r.values))}-{_fmt(max(r.values))}" if r.values else "-",
            r.unit,
            (f"{ratio:.1f}x" if (ratio := table.ratio(r)) is not None else ""),
        ]
        for r in table.rows
    ]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    out = [
        f"\n## {table.title}",
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out += [f"- {note}" for note in table.notes]
    return "\n".join(out)


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "postgresql": _version(["psql", "--version"]),
        "redis": _version(["redis-server", "--version"]),
    }


def discover() -> dict[str, Any]:
    import benchmarks

    found = {}
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if info.name.startswith("bench_"):
            module = importlib.import_module(f"benchmarks.{info.name}")
            found[module.NAME] = module
    return found


async def main_async(
    names: list[str], quick: bool, json_path: str | None, repeats: int | None, size: str | None = None
) -> int:
    modules = discover()
    unknown = [n for n in names if n not in modules]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(modules)}")
        return 2
    selected = names or list(modules)
    ctx = BenchContext(quick=quick, repeats=repeats or 3, size=size)
    info = machine_info()
    print(
        f"# Benchmarks ({'quick' if quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    results: dict[str, Any] = {"machine": info, "quick": quick, "benchmarks": {}}
    failed = 0
    for name in selected:
        module = modules[name]
        print(f"\n# {name}: {module.DESCRIPTION}", flush=True)
        started = time.perf_counter()
        try:
            tables = await module.run(ctx)
        except Exception as exc:  # a benchmark that breaks is reported, and the others still run
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}")
            results["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        for table in tables:
            print(render(table), flush=True)
        print(f"({name} took {time.perf_counter() - started:.1f} s)")
        results["benchmarks"][name] = [
            {
                "title": t.title,
                "notes": t.notes,
                "rows": [dict(asdict(r), median=r.median, ratio=t.ratio(r)) for r in t.rows],
            }
            for t in tables
        ]
    if json_path:
        await asyncio.to_thread(_write_json, json_path, results)
    return 1 if failed else 0


def _write_json(path: str, results: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


def run_cli(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    parser.add_argument("--json", dest="json_path", help="also write the results to this file")
    parser.add_argument("--repeats", type=int, default=None, help="runs per case (default 3)")
    parser.add_argument(
        "--size", default=None, help="a named larger size, e.g. archive's 'issue' (20 x 730 days)"
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return asyncio.run(main_async(args.names, args.quick, args.json_path, args.repeats, args.size))


Timed = Callable[[], Awaitable[float]]
#: ``(label, case, is_baseline, note)``: one row of a table whose cases take turns.
Case = tuple[str, Timed, bool, str]


@dataclass
class WriterCases:
    """Rows/s of a store's writer into a fresh range, with half the rows stored, and a re-run.

    ``write(pages)`` returns the seconds taken; ``halves`` are the first half of every page;
    ``tables[0]`` holds the rows, the others (coverage) are emptied with it.
    """

    admin: Any
    schema: str
    tables: tuple[str, ...]
    write: Callable[[Any], Awaitable[float]]
    pages: Any
    halves: Any
    total: int

    async def reset(self) -> None:
        tables = ", ".join(f'"{self.schema}".{table}' for table in self.tables)
        await self.admin.execute(f"TRUNCATE {tables}")

    async def check(self, expected: int) -> None:
        stored = await self.admin.fetchval(f'SELECT count(*) FROM "{self.schema}".{self.tables[0]}')  # noqa: S608
        if stored != expected:
            raise RuntimeError(f"stored {stored:,} rows, expected {expected:,}")

    async def _timed(self, before: Any) -> float:
        await self.reset()
        if before is not None:
            await self.write(before)
        elapsed = await self.write(self.pages)
        await self.check(self.total)
        return float(self.total / elapsed)

    async def fresh(self) -> float:
        return await self._timed(None)

    async def half_present(self) -> float:
        return await self._timed(self.halves)

    async def rerun(self) -> float:
        return await self._timed(self.pages)


async def take_turns(table: Table, cases: list[Case], repeats: int, unit: str) -> None:
    """Run the cases in turn within every repeat, so that load from elsewhere on the machine falls
    on all of them alike rather than on whichever ran at the wrong moment; add their rows."""
    values: list[list[float]] = [[] for _ in cases]
    for _ in range(repeats):
        for i, (_, fn, _, _) in enumerate(cases):
            values[i].append(await fn())
    for (label, _, baseline, note), vals in zip(cases, values, strict=True):
        table.add(Row(label, vals, unit, baseline=baseline, note=note))


def make_pages(total: int, instruments: int, page: int, build: Callable[[int, int, int], P]) -> list[P]:
    """``total`` rows spread over ``instruments`` (ids from 1), as pages of up to ``page`` rows.

    ``build(instrument_id, first, n)`` makes one page of ``n`` rows starting at row ``first`` of
    its instrument; pages come instrument by instrument, in row order (what a backfill hands over).
    """
    per = max(page, total // instruments)
    pages: list[P] = []
    for iid in range(1, instruments + 1):
        for first in range(0, per, page):
            pages.append(build(iid, first, min(page, per - first)))
            if len(pages) * page >= total:
                return pages
    return pages


def first_halves(pages: Sequence[P], halve: Callable[[P], P]) -> list[P]:
    """``halve`` of every page (its first half): what a half-present run finds already stored."""
    return [halve(p) for p in pages]


async def run_writers(
    write: Callable[[list[P]], Awaitable[object]], pages: Sequence[P], per_write: int, writers: int
) -> float:
    """Hand ``pages`` to ``write``, ``per_write`` at a time, from ``writers`` tasks draining a bounded
    queue (what the collector does); the seconds taken."""
    queue: asyncio.Queue[list[P] | None] = asyncio.Queue(maxsize=4)

    async def writer() -> None:
        while (item := await queue.get()) is not None:
            await write(item)

    started = time.perf_counter()
    tasks = [asyncio.create_task(writer()) for _ in range(writers)]
    for i in range(0, len(pages), per_write):
        await queue.put(list(pages[i : i + per_write]))
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


def elapsed_over_floors(
    runs: Sequence[dict[str, Any]], floors: Sequence[float], bounds: Sequence[float]
) -> str:
    """The note comparing every run's ``elapsed`` with its weight / budget floor and, where there is
    one, its minute-boundary floor."""
    return "elapsed / floor: " + ", ".join(
        f"{r['elapsed'] / f:.2f} (weight/budget)" + (f", {r['elapsed'] / b:.2f} (boundaries)" if b else "")
        for r, f, b in zip(runs, floors, bounds, strict=True)
    )


def add_floor_rows(table: Table, bounds: Sequence[float], runs: Sequence[dict[str, Any]], label: str) -> None:
    """The minute-boundary floor's row (when there is one) and the measured run's, in seconds."""
    if any(bounds):
        table.add(Row("floor: minute boundaries (burst budget)", list(bounds), "s", higher_is_better=False))
    table.add(Row(label, [r["elapsed"] for r in runs], "s", higher_is_better=False))


def pandas_to_sql(frame: Any, dsn: str, schema: str, table: str) -> float:
    """The user's old way, the baseline: ``frame.to_sql(method='multi', chunksize=1000)`` through
    psycopg2 into ``schema.table``; the seconds it took."""
    from sqlalchemy import create_engine

    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        started = time.perf_counter()
        frame.to_sql(
            table, engine, schema=schema, if_exists="append", index=False, method="multi", chunksize=1000
        )
        return time.perf_counter() - started
    finally:
        engine.dispose()
