"""Turn the batches of one ``write()`` call into deduplicated rows and merged coverage, for any backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from data_collector.errors import UsageError
from data_collector.markets import timeframe_code
from data_collector.storage.base import Candle, CandleBatch
from data_collector.storage.candle_columns import CandleColumns
from data_collector.storage.ranges import Span, merge_spans

#: ``(instrument_id, timeframe_code, ts, open, high, low, close, volume)``: one ``ohlcv`` row.
Record = tuple[int, int, int, float, float, float, float, float]
#: ``(instrument_id, timeframe_code, kind)``
CoverageKey = tuple[int, int, str]


@dataclass(slots=True)
class RowGroup:
    """Deduplicated rows of one (instrument, timeframe), sorted by ``ts``."""

    instrument_id: int
    code: int
    final: bool
    records: list[Record]
    #: Inclusive ``[first_ts, last_ts]`` spans of the batches behind these rows, merged: where
    #: to look for rows already stored (tighter than the group's hull when batches lie apart).
    spans: list[Span] = field(default_factory=list)


@dataclass(slots=True)
class ColumnGroup:
    """The rows of one :class:`CandleColumns` batch (final, sorted, unique, overlapping no other
    batch of its key in the write), kept as columns; ``span`` is its inclusive ``[first, last]``."""

    instrument_id: int
    code: int
    columns: CandleColumns
    span: Span


@dataclass(slots=True)
class PreparedWrite:
    groups: list[RowGroup] = field(default_factory=list)
    #: Batches kept as columns (only when :func:`prepare` is asked to): no tuple per row.
    column_groups: list[ColumnGroup] = field(default_factory=list)
    coverage: dict[CoverageKey, list[Span]] = field(default_factory=dict)
    #: Candles passed in, duplicates included: ``written + skipped`` adds up to this.
    total: int = 0

    @property
    def rows(self) -> int:
        return sum(len(g.records) for g in self.groups) + sum(len(g.columns) for g in self.column_groups)


def prepare(batches: Sequence[CandleBatch], *, columns: bool = False) -> PreparedWrite:
    """Validate, deduplicate (the last candle of a key wins) and group the batches of one write.

    This runs on every row, so the loops are comprehensions over whole batches: it is a
    measurable part of the writer's CPU time (see benchmarks/bench_ingest.py).

    ``columns``: a final batch of :class:`CandleColumns` whose open times increase and overlap no
    other batch of its key stays as columns (:attr:`PreparedWrite.column_groups`), for a store
    that writes columns (PostgreSQL's binary COPY); nothing to deduplicate there. If any such
    batch overlaps another of its key, the whole write takes the row path, whose "last wins" rule
    then decides.

    Raises:
        UsageError: an unknown timeframe, an empty or inverted coverage range, an unknown kind,
            or a candle outside the batch's ``'data'`` ranges.
    """
    out = PreparedWrite()
    # (instrument, code) -> ts -> candle; later batches overwrite earlier ones.
    pending: dict[tuple[int, int], dict[int, Candle]] = {}
    # Keys whose last word came from a final=False batch: they are overwritten, not skipped.
    forming: dict[tuple[int, int], set[int]] = {}
    spans: dict[tuple[int, int], list[Span]] = {}
    for batch in batches:
        code = timeframe_code(batch.timeframe)
        key = (batch.instrument_id, code)
        data_spans: list[Span] = []
        for r in batch.coverage:
            if r.kind not in ("data", "empty"):
                raise UsageError(f"coverage kind must be 'data' or 'empty', not {r.kind!r}")
            if r.end_ms <= r.start_ms:
                raise UsageError(f"empty coverage range [{r.start_ms}, {r.end_ms})")
            out.coverage.setdefault((batch.instrument_id, code, r.kind), []).append((r.start_ms, r.end_ms))
            if r.kind == "data":
                data_spans.append((r.start_ms, r.end_ms))
        out.total += len(batch.candles)
        if not len(batch.candles):
            continue
        cols = batch.candles
        if columns and isinstance(cols, CandleColumns) and batch.final and cols.increasing():
            first, last = int(cols.ts[0]), int(cols.ts[-1])
            if data_spans:
                _check_inside(batch, first, last, merge_spans(data_spans))
            out.column_groups.append(ColumnGroup(batch.instrument_id, code, cols, (first, last)))
            continue
        new = {c[0]: c for c in batch.candles}
        first, last = min(new), max(new)
        if data_spans:
            _check_inside(batch, first, last, merge_spans(data_spans))
        spans.setdefault(key, []).append((first, last))
        rows = pending.setdefault(key, {})
        rows.update(new)
        if not batch.final:
            forming.setdefault(key, set()).update(new)
        elif key in forming:
            forming[key].difference_update(new)
    for (instrument_id, code), rows in pending.items():
        order = sorted(rows)
        overwrite = forming.get((instrument_id, code), set())
        if overwrite:
            keep = [(instrument_id, code, *rows[ts]) for ts in order if ts not in overwrite]
            redo = [(instrument_id, code, *rows[ts]) for ts in order if ts in overwrite]
        else:
            keep = (
                [(instrument_id, code, *c) for c in rows.values()]
                if order == list(rows)
                else [(instrument_id, code, *rows[ts]) for ts in order]
            )
            redo = []
        # Inclusive spans: join those that touch or lie one ms apart.
        probe = [(a, b - 1) for a, b in merge_spans((a, b + 1) for a, b in spans[(instrument_id, code)])]
        if keep:
            out.groups.append(RowGroup(instrument_id, code, True, keep, probe))
        if redo:
            out.groups.append(RowGroup(instrument_id, code, False, redo, probe))
    if out.column_groups and _overlapping(out.column_groups, spans):
        return prepare(batches)
    out.groups.sort(key=lambda g: (g.instrument_id, g.code, not g.final))
    out.coverage = {k: merge_spans(v) for k, v in sorted(out.coverage.items())}
    return out


def _overlapping(column_groups: list[ColumnGroup], row_spans: dict[tuple[int, int], list[Span]]) -> bool:
    """Whether a column group shares an open time range with another batch of its key."""
    by_key: dict[tuple[int, int], list[Span]] = {}
    for g in column_groups:
        by_key.setdefault((g.instrument_id, g.code), []).append(g.span)
    for key, own in by_key.items():
        every = sorted(own + row_spans.get(key, []))
        if any(b[0] <= a[1] for a, b in zip(every, every[1:], strict=False)):
            return True
    return False


def _check_inside(batch: CandleBatch, first: int, last: int, data: list[Span]) -> None:
    if first < data[0][0] or last >= data[-1][1]:
        raise UsageError(
            f"candles [{first}, {last}] of instrument {batch.instrument_id} {batch.timeframe} lie "
            f"outside the batch's 'data' coverage [{data[0][0]}, {data[-1][1]})"
        )
