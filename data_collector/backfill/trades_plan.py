"""Trade backfill planning: which id ranges to fetch for ``[start, end)``, and what a page proves.

Pure functions over the id-keyed coverage record (:mod:`data_collector.storage.trades`).

* The time span asked for, less the spans the coverage proves, leaves missing spans ``[a, b)``.
* A missing span's ids run from the first trade at or after ``a`` to the first at or after ``b``.
  Where a covered range ends at ``a`` (or starts at ``b``), that id is its ``end_id`` (its
  ``first_id``): known without a request. Otherwise the fetcher looks it up (one window query).
* The ids are cut into pages of ``limit`` and fetched by ``fromId``, all pages of a span at once.
* An answer holds the first trades at or after ``fromId``, at most ``limit`` of them. It proves
  its page whole when it reaches the page's last id, or when it is short (the exchange has no
  more); a full answer that stops earlier proves up to its last trade, and the rest is planned
  again (:func:`trade_page_coverage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from data_collector.storage.ranges import subtract_spans
from data_collector.storage.trades import Trade, TradeCoverage, merge_trade_coverage

IdRange = tuple[int, int]


@dataclass(frozen=True, slots=True)
class TradeSpan:
    """A missing time span ``[start_ms, end_ms)``, with its id bounds where the coverage gives them."""

    start_ms: int
    end_ms: int
    first_id: int | None = None
    end_id: int | None = None


def plan_trade_spans(start_ms: int, end_ms: int, covered: Sequence[TradeCoverage]) -> list[TradeSpan]:
    """The parts of ``[start_ms, end_ms)`` the coverage does not prove, with known id bounds."""
    if end_ms <= start_ms:
        return []
    merged = merge_trade_coverage(covered)
    ends = {c.end_ms: c.end_id for c in merged}
    starts = {c.start_ms: c.first_id for c in merged}
    missing = subtract_spans(start_ms, end_ms, ((c.start_ms, c.end_ms) for c in merged))
    return [TradeSpan(a, b, ends.get(a), starts.get(b)) for a, b in missing]


def id_pages(first_id: int, end_id: int, limit: int) -> list[IdRange]:
    """``[first_id, end_id)`` cut into pages of at most ``limit`` ids."""
    return [(p, min(p + limit, end_id)) for p in range(first_id, end_id, limit)]


@dataclass(frozen=True, slots=True)
class PageResult:
    """What one answer gives: the trades to store, the coverage they prove, and what is left."""

    trades: list[Trade]
    coverage: TradeCoverage
    rest: IdRange | None


def trade_page_coverage(
    span: TradeSpan, ids: IdRange, page: IdRange, answer: Sequence[Trade], limit: int
) -> PageResult:
    """What the validated ``answer`` to ``fromId=page[0]`` proves of ``page``.

    Args:
        span: the missing time span the page belongs to.
        ids: the span's ids ``[first, end)``: every trade of the span, and only those.
        page: the ids asked for, ``[from_id, to_id)``.
        answer: the trades returned, ascending, all at or after ``page[0]``.
        limit: the most trades one answer may hold.
    """
    lo, hi = page
    kept = [t for t in answer if t[0] < hi]
    whole = len(answer) < limit or (bool(answer) and answer[-1][0] >= hi - 1)
    end_id = hi if whole else answer[-1][0] + 1
    # Ids below the span's first happened before its start; below a later page's first, before
    # (or at) that trade's time, so the proven span starts just after it.
    if end_id == ids[1]:
        end_ms = span.end_ms
    elif kept:
        end_ms = kept[-1][1]
    else:
        end_ms = span.end_ms
    if lo == ids[0]:
        start_ms = span.start_ms
    elif kept:
        start_ms = kept[0][1] + 1
    else:
        start_ms = end_ms
    start_ms = min(start_ms, end_ms)
    rest = (end_id, hi) if end_id < hi else None
    return PageResult(kept, TradeCoverage(lo, end_id, start_ms, end_ms), rest)
