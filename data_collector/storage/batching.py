"""Turn the batches of one ``write()`` call into deduplicated rows and merged coverage, for any backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from data_collector.errors import UsageError
from data_collector.markets import timeframe_code
from data_collector.storage.base import Candle, CandleBatch
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

    @property
    def lo(self) -> int:
        return self.records[0][2]

    @property
    def hi(self) -> int:
        return self.records[-1][2]


@dataclass(slots=True)
class PreparedWrite:
    groups: list[RowGroup] = field(default_factory=list)
    coverage: dict[CoverageKey, list[Span]] = field(default_factory=dict)
    #: Candles passed in, duplicates included: ``written + skipped`` adds up to this.
    total: int = 0

    @property
    def rows(self) -> int:
        return sum(len(g.records) for g in self.groups)


def prepare(batches: Sequence[CandleBatch]) -> PreparedWrite:
    """Validate, deduplicate (the last candle of a key wins) and group the batches of one write.

    Raises:
        UsageError: an unknown timeframe, an empty or inverted coverage range, an unknown kind,
            or a candle outside the batch's ``'data'`` ranges.
    """
    out = PreparedWrite()
    # (instrument, code) -> ts -> (candle, final); later batches overwrite earlier ones.
    pending: dict[tuple[int, int], dict[int, tuple[Candle, bool]]] = {}
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
        if not batch.candles:
            continue
        if data_spans:
            _check_inside(batch, merge_spans(data_spans))
        rows = pending.setdefault(key, {})
        final = batch.final
        for candle in batch.candles:
            rows[candle[0]] = (candle, final)
    for (instrument_id, code), rows in pending.items():
        by_final: dict[bool, list[Record]] = {True: [], False: []}
        for ts in sorted(rows):
            candle, final = rows[ts]
            by_final[final].append((instrument_id, code, *candle))
        for final, records in by_final.items():
            if records:
                out.groups.append(RowGroup(instrument_id, code, final, records))
    out.groups.sort(key=lambda g: (g.instrument_id, g.code, not g.final))
    out.coverage = {k: merge_spans(v) for k, v in sorted(out.coverage.items())}
    return out


def _check_inside(batch: CandleBatch, data: list[Span]) -> None:
    first = min(c[0] for c in batch.candles)
    last = max(c[0] for c in batch.candles)
    if first < data[0][0] or last >= data[-1][1]:
        raise UsageError(
            f"candles [{first}, {last}] of instrument {batch.instrument_id} {batch.timeframe} lie "
            f"outside the batch's 'data' coverage [{data[0][0]}, {data[-1][1]})"
        )
