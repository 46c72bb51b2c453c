"""Repair mode ``hold`` (``streaming.repair_mode: hold``; issue 15's option (a)): while a short
trade gap is fetched back over REST, that stream's live entries wait here, so the repaired trades
go into the live stream itself, in id order, and the held entries follow them.

Redis refuses an explicit entry id below a stream's top, so the repair can only land in the live
stream if nothing newer has been written there. When a gap opens, the entry that revealed it is
still the newest in the writer's buffer: :meth:`LiveHold.start` takes it back, and from then on
:meth:`LiveHold.submit` (the connections' submit in this mode) keeps that stream's entries aside.
The repair job writes its pages to the live stream (under :func:`repaired_head`, so the writer
takes no latency sample from their old event times) and, once its ``repaired`` marker is queued,
:meth:`Hold.release` hands the held entries to the writer.

Bounded: a hold keeps at most ``max_entries`` live entries and lasts at most ``max_s``. Past
either, or when the repair cannot finish (refused, dropped by a Redis-restart refill, the
streamer stopping), it falls back: the held entries go to the writer at once and the rest of
that gap's repair goes to the companion ``@repair`` stream, as in the default mode
(``repair_hold_fallbacks`` counts these, and a warning says why). A gap wider than
``max_entries`` ids, or one opening while its stream is already held, is repaired into the
companion stream from the start. Cost: every live entry of a held stream waits for REST, behind
the repairs queued before its own; ``benchmarks/bench_stream_repair.py`` measures both modes
(OKX, 10k msg/s, a drop every 30 s: live p99 4.7x the companion mode's), which is why
``companion`` is the default.
"""

from __future__ import annotations

import asyncio
import logging

from data_collector.streaming.connection import Route
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.writer import Entry, RedisWriter

log = logging.getLogger(__name__)

#: ``streaming.repair_mode`` values.
REPAIR_MODES = ("companion", "hold")


def repaired_head(xadd_head: bytes) -> bytes:
    """The live stream's XADD head for repaired entries: the same command with its name in lower
    case (Redis reads command names case-insensitively), a different head to the writer, which
    takes no latency sample from it."""
    return xadd_head.replace(b"\r\nXADD\r\n", b"\r\nxadd\r\n", 1)


class Hold:
    """One stream's live entries held while one gap is repaired into it."""

    __slots__ = ("_owner", "active", "entries", "heads", "route", "timer")

    def __init__(self, owner: LiveHold, route: Route, heads: tuple[bytes, bytes], first: Entry) -> None:
        self._owner = owner
        self.route = route
        #: (XADD head, SET head) the repaired entries are written with: the live stream's (the
        #: companion's "latest" key, so the live one never goes back to an older trade).
        self.heads = heads
        self.entries: list[Entry] = [first]
        #: False once released or fallen back: the rest of the repair goes to the companion stream.
        self.active = True
        self.timer: asyncio.TimerHandle | None = None

    def release(self) -> None:
        """The gap's repair is queued in the writer: the held entries follow it."""
        self._owner.end(self, None)

    def fall_back(self, why: str) -> None:
        """Give up holding: the held entries go on now, the rest of the repair to the companion."""
        self._owner.end(self, why)


class LiveHold:
    """The held streams, in front of the writer.

    Args:
        writer: the streamer's Redis writer.
        metrics: ``repair_holds`` and ``repair_hold_fallbacks`` are counted here.
        max_entries: live entries one hold keeps at most (and the widest gap held for).
        max_s: longest a hold lasts.
    """

    def __init__(self, writer: RedisWriter, metrics: StreamMetrics, max_entries: int, max_s: float) -> None:
        self._writer = writer
        self._metrics = metrics
        self.max_entries = max_entries
        self.max_s = max_s
        #: Live XADD head -> its hold.
        self._held: dict[bytes, Hold] = {}

    def submit(self, entry: Entry) -> None:
        """The connections' submit: to the writer, or aside while the entry's stream is held."""
        hold = self._held.get(entry[0])
        if hold is None:
            self._writer.submit(entry)
            return
        hold.entries.append(entry)
        if len(hold.entries) > self.max_entries:
            hold.fall_back(f"{self.max_entries} live entries held (streaming.repair_hold_max)")

    def start(self, route: Route, first_seq: int, last_seq: int, set_head: bytes) -> Hold | None:
        """Hold ``route``'s live entries for the repair of ids ``first_seq``..``last_seq``, if the
        entry after the gap is still the newest queued (nothing above the gap is in Redis) and
        the gap is short; None: repair into the companion stream."""
        if route.xadd_head in self._held or last_seq - first_seq + 1 > self.max_entries:
            return None
        newest = self._writer.take_newest(route.xadd_head, last_seq + 1)
        if newest is None:
            return None
        hold = Hold(self, route, (repaired_head(route.xadd_head), set_head), newest)
        self._held[route.xadd_head] = hold
        hold.timer = asyncio.get_running_loop().call_later(
            self.max_s, hold.fall_back, f"repair not done in {self.max_s:g} s (streaming.repair_hold_max_s)"
        )
        self._metrics.repair_holds += 1
        return hold

    def end(self, hold: Hold, why: str | None) -> None:
        """Stop holding (idempotent): the held entries go to the writer, in order."""
        if not hold.active:
            return
        hold.active = False
        if hold.timer is not None:
            hold.timer.cancel()
        del self._held[hold.route.xadd_head]
        if why is not None:
            self._metrics.repair_hold_fallbacks += 1
            log.warning(
                "%s: %s; %d held live entries go on, the rest of the gap's repair to the companion stream",
                hold.route.stream_key,
                why,
                len(hold.entries),
            )
        submit = self._writer.submit
        for entry in hold.entries:
            submit(entry)
        hold.entries.clear()

    @property
    def held(self) -> int:
        """Live entries held now."""
        return sum(len(h.entries) for h in self._held.values())

    def close(self) -> None:
        """Let every held entry go on (before the writer's last flush); idempotent."""
        for hold in list(self._held.values()):
            hold.fall_back("streamer stopping")
