"""Exact accounting of trade streams against the simulator's contiguous trade ids."""

from __future__ import annotations

from typing import Any

import msgpack
import redis.asyncio as aioredis


async def trade_ids_and_times(client: aioredis.Redis, key: str) -> list[tuple[int, int]]:
    """``(trade id, trade ms)`` of every entry of a trade stream, in stream order."""
    out = []
    last = "-"
    while True:
        rows = await client.xrange(key, min=last, max="+", count=5000)
        if last != "-":
            rows = rows[1:]
        if not rows:
            return out
        for _entry_id, fields in rows:
            event = msgpack.unpackb(fields[b"d"])
            out.append((int(event["id"]), int(event["trade_ms"])))
        last = rows[-1][0].decode()


async def gap_markers(client: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    """Every marker of a gaps stream, fields decoded."""
    rows = await client.xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


def account(
    trades: list[tuple[int, int]], windows: list[tuple[int, int]], slack_ms: int = 2000
) -> tuple[int, int, int, int]:
    """``(found, duplicated, lost inside a gap window, lost outside any)`` for one trade stream."""
    ids = [t for t, _ in trades]
    unique = dict(trades)
    duplicated = len(ids) - len(unique)
    if not unique:
        return 0, duplicated, 0, 0
    ordered = sorted(unique.items())
    in_gap = outside = 0
    for (a, ta), (b, tb) in zip(ordered, ordered[1:], strict=False):
        missing = b - a - 1
        if missing <= 0:
            continue
        # The missing trades were made between ta and tb: a gap window must overlap that span.
        if any(lo - slack_ms <= tb and ta <= hi + slack_ms for lo, hi in windows):
            in_gap += missing
        else:
            outside += missing
    return len(unique), duplicated, in_gap, outside


def account_by_id(trade_ids: list[int], markers: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    """``(found, duplicated, missing, wrongly marked)`` for one trade stream, by id alone.

    ``markers`` are that stream's gap markers; those with ``first_seq``/``last_seq`` name missing
    trade ids (a ``repaired`` marker names the ids of one of them, fetched back: not counted). ``missing`` counts ids between the first and last stored that no such marker names
    exactly once; ``wrongly marked`` counts ids a marker names that are stored, or that two
    markers name: both must be 0 for the gaps to be exact.
    """
    unique = set(trade_ids)
    named: dict[int, int] = {}
    for m in markers:
        if m.get("first_seq") is None or m["reason"] == "repaired":  # "repaired" closes a gap
            continue
        for i in range(int(m["first_seq"]), int(m["last_seq"]) + 1):
            named[i] = named.get(i, 0) + 1
    wrong = sum(1 for i, n in named.items() if i in unique or n > 1)
    missing = 0
    if unique:
        missing = sum(1 for i in range(min(unique), max(unique) + 1) if i not in unique and named.get(i) != 1)
    return len(unique), len(trade_ids) - len(unique), missing, wrong


def holes_and_markers(
    times: list[int], breaks: list[bool], windows: list[tuple[int, int]]
) -> tuple[int, int, int]:
    """``(holes, unmarked holes, stray markers)`` of one stream that is not a trade stream.

    ``times`` are the stored entries' event times in stream order and ``breaks[i]`` says whether
    events were lost between entry ``i - 1`` and entry ``i`` (a broken update-id chain on depth, a
    silence on a stream that never pauses). A hole is marked when a window ``(from_ms, to_ms)``
    spans it; a marker is stray when its window is not exactly ``(times[i - 1], times[i])`` of
    some pair of neighbours, i.e. it does not sit where the stream has its seam.
    """
    seams = set(zip(times, times[1:], strict=False))
    holes = unmarked = 0
    for i in range(1, len(times)):
        if breaks[i]:
            holes += 1
            if not any(lo <= times[i - 1] and times[i] <= hi for lo, hi in windows):
                unmarked += 1
    stray = sum(1 for w in windows if w not in seams)
    return holes, unmarked, stray
