"""Pure interval arithmetic on half-open ``[start_ms, end_ms)`` ranges: the coverage record's logic.

Kept apart from the backends so that it can be tested on its own (tests/test_storage_ranges.py)
and so that PostgreSQL and SQLite read coverage the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_collector.storage.base import CoverageKind, CoverageRange, Gap

Span = tuple[int, int]

#: Where ranges of several kinds overlap, the stronger evidence wins: candles in the database,
#: then candles in the Parquet tier, then none at the exchange.
_PRIORITY: dict[CoverageKind, int] = {"data": 2, "archived": 1, "empty": 0}


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Join overlapping and adjacent spans; drop empty ones. Returns them sorted."""
    out: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def subtract_spans(start_ms: int, end_ms: int, covered: Iterable[Span]) -> list[Span]:
    """The parts of ``[start_ms, end_ms)`` that no span of ``covered`` contains, sorted."""
    out: list[Span] = []
    cursor = start_ms
    for start, end in merge_spans(covered):
        if end <= cursor:
            continue
        if start >= end_ms:
            break
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
        if cursor >= end_ms:
            break
    if cursor < end_ms:
        out.append((cursor, end_ms))
    return out


def cut_coverage(rows: Iterable[CoverageRange], cuts: Iterable[CoverageRange]) -> list[CoverageRange]:
    """``rows`` less the cuts: each cut takes its span out of the rows of its own kind."""
    cut_spans: dict[str, list[Span]] = {}
    for cut in cuts:
        cut_spans.setdefault(cut.kind, []).append((cut.start_ms, cut.end_ms))
    return [
        CoverageRange(s, e, r.kind)
        for r in rows
        for s, e in subtract_spans(r.start_ms, r.end_ms, cut_spans.get(r.kind, []))
    ]


def merge_coverage(ranges: Iterable[CoverageRange]) -> list[CoverageRange]:
    """Merge coverage ranges into sorted, non-overlapping ranges.

    Adjacent or overlapping ranges of one kind are joined. Where kinds overlap, the overlap counts
    as the stronger one: ``'data'``, then ``'archived'``, then ``'empty'``.
    """
    ranges = [r for r in ranges if r.end_ms > r.start_ms]
    if not ranges:
        return []
    by_kind: dict[str, list[Span]] = {}
    for r in ranges:
        by_kind.setdefault(r.kind, []).append((r.start_ms, r.end_ms))
    pieces: list[CoverageRange] = []
    stronger: list[Span] = []
    for kind in sorted(_PRIORITY, key=lambda k: -_PRIORITY[k]):
        for start, end in merge_spans(by_kind.get(kind, [])):
            pieces += [CoverageRange(s, e, kind) for s, e in subtract_spans(start, end, stronger)]
        stronger = merge_spans([*stronger, *by_kind.get(kind, [])])
    pieces.sort(key=lambda r: (r.start_ms, -_PRIORITY[r.kind]))
    out: list[CoverageRange] = []
    for piece in pieces:
        if out and out[-1].kind == piece.kind and piece.start_ms <= out[-1].end_ms:
            out[-1] = CoverageRange(out[-1].start_ms, max(out[-1].end_ms, piece.end_ms), piece.kind)
        else:
            out.append(piece)
    return out


def clip(ranges: Iterable[CoverageRange], start_ms: int, end_ms: int) -> list[CoverageRange]:
    """The parts of ``ranges`` inside ``[start_ms, end_ms)``."""
    out = []
    for r in ranges:
        s, e = max(r.start_ms, start_ms), min(r.end_ms, end_ms)
        if e > s:
            out.append(CoverageRange(s, e, r.kind))
    return out


def gaps_from_coverage(merged: Iterable[CoverageRange], start_ms: int, end_ms: int) -> list[Gap]:
    """``'exchange'`` gaps (covered as empty), ``'archived'`` ones (in the Parquet tier) and
    ``'missing'`` ones (not covered), sorted.

    ``merged`` must come from :func:`merge_coverage`. ``'hole'`` gaps need the candles and are
    added by the backends.
    """
    inside = clip(merged, start_ms, end_ms)
    gaps = [
        Gap(s, e, "missing")
        for s, e in subtract_spans(start_ms, end_ms, ((r.start_ms, r.end_ms) for r in inside))
    ]
    gaps += [Gap(r.start_ms, r.end_ms, "exchange") for r in inside if r.kind == "empty"]
    gaps += [Gap(r.start_ms, r.end_ms, "archived") for r in inside if r.kind == "archived"]
    gaps.sort(key=lambda g: g.start_ms)
    return gaps


def hole_spans(opens: list[int], present: Iterable[int], end_ms: int) -> list[Span]:
    """Spans of the expected candle ``opens`` (sorted) that are absent from ``present``.

    A missing candle at ``opens[i]`` spans up to ``opens[i + 1]`` (or ``end_ms`` for the last);
    consecutive missing candles are joined into one span.
    """
    have = set(present)
    out: list[Span] = []
    for i, ts in enumerate(opens):
        if ts in have:
            continue
        end = opens[i + 1] if i + 1 < len(opens) else end_ms
        if out and out[-1][1] == ts:
            out[-1] = (out[-1][0], end)
        else:
            out.append((ts, end))
    return out
