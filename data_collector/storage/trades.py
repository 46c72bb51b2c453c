"""Aggregate trades: the records, the id-keyed coverage record, and a write's preparation.

Tables (PostgreSQL shown; SQLite mirrors them):

* ``trades(id bigint, ts bigint, price, qty double precision, first_trade_id bigint,
  last_trade_id bigint, instrument_id integer, buyer_maker boolean, PRIMARY KEY (instrument_id, id))``
  (:data:`TRADE_TABLE`, one shape for both backends; PostgreSQL's is partitioned by month on ``ts``
  and so has ``ts`` in its key too, :data:`~data_collector.storage.postgres_trades.TRADE_DDL`):
  one row per aggregate trade, ``id`` the exchange's aggregate trade id, ``ts`` its time in UTC
  ms, with the first and last plain trade ids it aggregates.
* ``trade_coverage(instrument_id, first_id, end_id, start_ms, end_ms)``: see :class:`TradeCoverage`.
* view ``trades_view(exchange, symbol, id, ts timestamptz, price, qty, first_trade_id,
  last_trade_id, buyer_maker)`` for people who query in SQL.

Coverage is keyed by ids, because trades are paged by id (``fromId``), and carries the time span
it proves so a run asked for ``[start, end)`` can tell what is missing. A row
``(first_id, end_id, start_ms, end_ms)`` says three things:

1. every trade with an id in ``[first_id, end_id)`` is stored;
2. every trade with an id below ``first_id`` happened before ``start_ms``;
3. every trade with an id at or above ``end_id`` happened at or after ``end_ms``.

Aggregate ids grow with time, so together these say that every trade of ``[start_ms, end_ms)`` is
stored, and where to resume: a range missing after a row starts at its ``end_id``. Two rows whose id
ranges touch or overlap merge into one (lowest ids and start, highest end), and the three claims
still hold, so the record stays exact: no id is covered twice, and none between covered ids is
left out. A row with ``first_id == end_id`` records a span without trades.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from data_collector.errors import UsageError

#: ``(id, ts_ms, price, qty, first_trade_id, last_trade_id, buyer_maker)``
Trade = tuple[int, int, float, float, int, int, bool]
#: ``(instrument_id, id, ts_ms, price, qty, first_trade_id, last_trade_id, buyer_maker)``: one row.
TradeRecord = tuple[int, int, int, float, float, int, int, bool]
#: The order of a :data:`TradeRecord`; every write names these columns (COPY, INSERT).
TRADE_COLUMNS = (
    "instrument_id",
    "id",
    "ts",
    "price",
    "qty",
    "first_trade_id",
    "last_trade_id",
    "buyer_maker",
)

#: The trades table of both backends, in the order the table stores its columns, each with a kind
#: that the backend maps to its type (``int`` 4 bytes, ``bigint`` 8, ``float`` an IEEE double, so
#: the exchange's value is stored bit for bit, ``bool``). The 8-byte columns come first and the
#: 4-byte instrument next to the flag: a PostgreSQL row then packs its 53 bytes without alignment
#: padding, 80 bytes with the tuple header instead of 88 in the record order (instrument first),
#: a million trades take 84.5 MB of heap instead of 93.1, with less WAL; the CPU per trade barely
#: moves (``python -m benchmarks.trades_floor``, PERFORMANCE.md *Trades*). Tables made before keep
#: their order: writes and reads name their columns.
TRADE_TABLE: tuple[tuple[str, str], ...] = (
    ("id", "bigint"),
    ("ts", "bigint"),
    ("price", "float"),
    ("qty", "float"),
    ("first_trade_id", "bigint"),
    ("last_trade_id", "bigint"),
    ("instrument_id", "int"),
    ("buyer_maker", "bool"),
)
TRADE_KEY = ("instrument_id", "id")
TRADE_COVERAGE_TABLE: tuple[tuple[str, str], ...] = (
    ("instrument_id", "int"),
    ("first_id", "bigint"),
    ("end_id", "bigint"),
    ("start_ms", "bigint"),
    ("end_ms", "bigint"),
)


def trade_tables_ddl(
    prefix: str, types: Mapping[str, str], trades_options: str = "", key: Sequence[str] = TRADE_KEY
) -> tuple[str, str]:
    """``CREATE TABLE`` of ``trades`` and ``trade_coverage`` in one backend's dialect.

    ``prefix`` goes before each table name (PostgreSQL's ``{s}.``, filled in by the store's
    identifier quoting), ``types`` maps the kinds of :data:`TRADE_TABLE` to the backend's types,
    ``trades_options`` follows the trades table's definition (SQLite's ``WITHOUT ROWID``,
    PostgreSQL's ``PARTITION BY``), ``key`` is its primary key (a partitioned table's must hold
    the partition column).
    """
    trades = ", ".join(f"{name} {types[kind]} NOT NULL" for name, kind in TRADE_TABLE)
    coverage = ", ".join(f"{name} {types[kind]} NOT NULL" for name, kind in TRADE_COVERAGE_TABLE)
    return (
        f"CREATE TABLE IF NOT EXISTS {prefix}trades ({trades}, PRIMARY KEY ({', '.join(key)})){trades_options}",
        f"CREATE TABLE IF NOT EXISTS {prefix}trade_coverage ({coverage}, "
        "CHECK (end_id >= first_id), CHECK (end_ms >= start_ms))",
    )


TRADE_FRAME_COLUMNS = ["id", "price", "qty", "first_trade_id", "last_trade_id", "buyer_maker"]


@dataclass(frozen=True, slots=True)
class TradeCoverage:
    """Ids ``[first_id, end_id)`` stored, and the time span ``[start_ms, end_ms)`` they prove whole."""

    first_id: int
    end_id: int
    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_id < self.first_id or self.end_ms < self.start_ms:
            raise UsageError(
                f"trade coverage ids [{self.first_id}, {self.end_id}) and times "
                f"[{self.start_ms}, {self.end_ms}) must not run backwards"
            )


@dataclass(slots=True)
class TradeBatch:
    """Trades of one instrument plus the coverage they prove; written atomically.

    Every trade must lie inside one of the batch's coverage id ranges.
    """

    instrument_id: int
    trades: Sequence[Trade]
    coverage: list[TradeCoverage] = field(default_factory=list)


def merge_trade_coverage(rows: Iterable[TradeCoverage]) -> list[TradeCoverage]:
    """Join rows whose id ranges touch or overlap; sorted by id."""
    out: list[TradeCoverage] = []
    for r in sorted(rows, key=lambda r: (r.first_id, r.end_id, r.start_ms)):
        if out and r.first_id <= out[-1].end_id:
            last = out[-1]
            out[-1] = TradeCoverage(
                last.first_id,
                max(last.end_id, r.end_id),
                min(last.start_ms, r.start_ms),
                max(last.end_ms, r.end_ms),
            )
        else:
            out.append(r)
    return out


@dataclass(slots=True)
class PreparedTrades:
    """One ``write_trades`` call, ready for a backend: rows by instrument, coverage merged."""

    #: instrument_id -> records sorted by id, deduplicated (the last of an id wins).
    records: dict[int, list[TradeRecord]] = field(default_factory=dict)
    #: instrument_id -> the new coverage rows, merged among themselves.
    coverage: dict[int, list[TradeCoverage]] = field(default_factory=dict)
    #: Trades passed in, repeats included: ``written + skipped`` adds up to this.
    total: int = 0

    @property
    def rows(self) -> int:
        return sum(len(r) for r in self.records.values())

    def flat(self) -> list[TradeRecord]:
        return [r for iid in sorted(self.records) for r in self.records[iid]]


def prepare_trades(batches: Sequence[TradeBatch]) -> PreparedTrades:
    """Validate, deduplicate and group the batches of one write.

    This runs on every trade, so the common case (each batch sorted by id, batches of one
    instrument not overlapping: validated pages) is joined in C (``map``, ``sorted`` on sorted
    runs) rather than through a dict per trade: it is a measurable part of the writer's CPU
    (benchmarks/bench_trades.py).

    Raises:
        UsageError: a trade outside its batch's coverage id ranges, or trades without coverage.
    """
    out = PreparedTrades()
    groups: dict[int, list[_Run]] = {}
    spans: dict[int, list[TradeCoverage]] = {}
    for batch in batches:
        iid = batch.instrument_id
        out.total += len(batch.trades)
        if batch.coverage:
            spans.setdefault(iid, []).extend(batch.coverage)
        if not batch.trades:
            continue
        if not batch.coverage:
            raise UsageError(f"trades of instrument {iid} come without the coverage they prove")
        # The ids once per batch, for both the coverage check and the join (taking them twice,
        # plus a flattened copy before the prefix, cost 0.30 CPU-s per million trades, this 0.23).
        ids = list(map(_trade_id, batch.trades))
        run = _Run(batch.trades, ids, all(map(operator.lt, ids, ids[1:])))
        _check_inside(batch, run, merge_trade_coverage(batch.coverage))
        groups.setdefault(iid, []).append(run)
    for iid, runs in groups.items():
        out.records[iid] = _joined(iid, runs)
    out.coverage = {iid: merge_trade_coverage(v) for iid, v in sorted(spans.items())}
    return out


@dataclass(slots=True)
class _Run:
    """One batch's trades, their ids, and whether the ids strictly grow."""

    trades: Sequence[Trade]
    ids: list[int]
    ascending: bool


def _joined(iid: int, runs: list[_Run]) -> list[TradeRecord]:
    """The records of ``runs`` sorted by id, each id once (a later run's trade wins)."""
    # Tuple concatenation in C: about twice as fast as ``(iid, *t)`` per trade.
    prefix = cast(Callable[[Trade], TradeRecord], (iid,).__add__)
    ordered = sorted(runs, key=lambda r: r.ids[0])
    if all(r.ascending for r in ordered) and all(
        a.ids[-1] < b.ids[0] for a, b in zip(ordered, ordered[1:], strict=False)
    ):
        out: list[TradeRecord] = []
        for r in ordered:
            out.extend(map(prefix, r.trades))
        return out
    # Overlapping or unsorted: later batches (in the caller's order) win, as for candles.
    latest: dict[int, Trade] = {}
    for r in runs:
        latest.update(zip(r.ids, r.trades, strict=True))
    return [prefix(latest[i]) for i in sorted(latest)]


_trade_id = operator.itemgetter(0)


def _check_inside(batch: TradeBatch, run: _Run, covered: list[TradeCoverage]) -> None:
    ids = run.ids
    lo, hi = (ids[0], ids[-1]) if run.ascending else (min(ids), max(ids))
    if len(covered) == 1:
        if lo < covered[0].first_id or hi >= covered[0].end_id:
            raise UsageError(
                f"trades [{lo}, {hi}] of instrument {batch.instrument_id} lie outside the batch's "
                f"coverage [{covered[0].first_id}, {covered[0].end_id})"
            )
        return
    for i in ids:
        if not any(c.first_id <= i < c.end_id for c in covered):
            raise UsageError(
                f"trade {i} of instrument {batch.instrument_id} lies outside the batch's coverage"
            )
