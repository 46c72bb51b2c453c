"""``MarketDataReader``: what the streamer wrote, read back for trading code and notebooks.

::

    reader = MarketDataReader("redis://127.0.0.1:6379/0", prefix="dc")
    await reader.latest("SOL/USDT", "trade")            # the last trade (a dict)
    await reader.book("SOL/USDT")                       # top-N book, None while out of sync
    await reader.last("SOL/USDT", "trade", 100)         # the last 100, oldest first
    await reader.range("SOL/USDT", "kline_1m", start_ms, end_ms)
    await reader.dataframe("SOL/USDT", "trade", count=1000)
    async for event in reader.tail("SOL/USDT", "trade"):  # new entries as they arrive
        ...
    await reader.gaps()                                 # gap markers (reconnect, overflow...)

Range queries use the stream entry ids, whose time part is the event's own time (trade time,
kline open time, depth event time; see ``data_collector.streaming.normalize``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgpack
import redis.asyncio

from data_collector.config import Config, load_config
from data_collector.errors import ClosedError
from data_collector.redis.client import RedisEndpoint
from data_collector.redis.keys import book_key, gaps_key, latest_key, stream_key
from data_collector.streaming.normalize import validate_channel
from data_collector.streaming.trade_repair import REPAIR_SUFFIX, REPAIRED_CHANNELS

if TYPE_CHECKING:
    import pandas as pd

Event = dict[str, Any]


def _unpack(raw: bytes | None) -> Event | None:
    if raw is None:
        return None
    out: Event = msgpack.unpackb(raw)
    return out


def _row_key(row: tuple[bytes, Any]) -> tuple[int, int]:
    ms, _, seq = row[0].partition(b"-")
    return int(ms), int(seq or 0)


def _merged(rows: list[Any], repaired: list[Any]) -> list[Any]:
    """Live and repaired rows, each entry id once, in entry-id order."""
    if not repaired:
        return rows
    by_id = {row[0]: row for row in repaired}
    by_id.update((row[0], row) for row in rows)
    return sorted(by_id.values(), key=_row_key)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _note_holes(
    holes: dict[tuple[int, int], list[Any]], rows: list[Any], key: str, now_ms: float, start_seq: int
) -> None:
    """Open (or close) the holes of stream ``key`` that gap markers ``rows`` name by trade id.

    A hole is ``[opened at, highest repaired id read (at least start_seq: what lies below the
    tail's start is not waited for), repaired N or None]``.
    """
    for _entry_id, fields in rows:
        marker = {k.decode(): v.decode() for k, v in fields.items()}
        if marker.get("stream") != key or "first_seq" not in marker:
            continue
        bounds = int(marker["first_seq"]), int(marker["last_seq"])
        if marker.get("reason") == "repaired":
            hole = holes.get(bounds)
            if hole is not None:
                hole[2] = int(marker.get("repaired", 0))
        else:
            holes.setdefault(bounds, [now_ms, start_seq, None])


def _has_repair(channel: str) -> bool:
    """Whether ``channel`` has a companion ``@repair`` stream: trades (gaps fetched back over REST)
    and klines (closed candles refilled after a Redis restart)."""
    return channel in REPAIRED_CHANNELS or channel.startswith("kline_")


def _entries(rows: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Event]:
    out = []
    for entry_id, fields in rows:
        event = msgpack.unpackb(fields[b"d"])
        event["entry_id"] = entry_id.decode()
        out.append(event)
    return out


class MarketDataReader:
    """Reads the Redis layout written by ``OptimizedWebSocketStreamer``.

    Args:
        redis_client: a ``redis.asyncio.Redis`` (kept, not closed by the reader), a sync
            ``redis.Redis`` (its settings are reused) or a URL.
        prefix: the ``redis.prefix`` the streamer wrote under.
        exchange: the venue label in the keys (the streamer's ``exchange.name``): ``binance``,
            or ``sim-binance`` for what the demo and the simulator wrote.
        socket_timeout_s: timeout of each call when the reader opens its own client.

    :meth:`from_config` takes all three from a config.
    """

    def __init__(
        self,
        redis_client: Any = "redis://127.0.0.1:6379/0",
        prefix: str = "dc",
        exchange: str = "binance",
        socket_timeout_s: float = 5.0,
    ) -> None:
        if isinstance(redis_client, redis.asyncio.Redis):
            self._redis = redis_client
            self._owns = False
        else:
            endpoint = RedisEndpoint.from_any(redis_client, socket_timeout_s=socket_timeout_s)
            self._redis = endpoint.async_client()
            self._owns = True
        self.prefix = prefix
        self.exchange = exchange
        self._closed = False

    @classmethod
    def from_config(cls, config: Config | dict[str, Any] | str | None = None) -> MarketDataReader:
        """A reader of ``redis.url`` under ``redis.prefix`` and the venue ``exchange.name``."""
        cfg = load_config(config)
        return cls(
            cfg.redis.url.get_secret_value(),
            prefix=cfg.redis.prefix,
            exchange=cfg.exchange.name,
            socket_timeout_s=cfg.redis.socket_timeout_s,
        )

    def _client(self) -> redis.asyncio.Redis:
        if self._closed:
            raise ClosedError("this MarketDataReader was closed")
        return self._redis

    def stream_key(self, symbol: str, channel: str) -> str:
        return stream_key(self.prefix, self.exchange, validate_channel(channel), symbol)

    async def latest(self, symbol: str, channel: str) -> Event | None:
        """The last event written for ``symbol`` on ``channel`` (``None`` if there is none)."""
        key = latest_key(self.prefix, self.exchange, validate_channel(channel), symbol)
        return _unpack(await self._client().get(key))

    async def book(self, symbol: str) -> Event | None:
        """The published top-N book (``bids``/``asks`` as ``[price, qty]``), ``None`` while out of sync."""
        return _unpack(await self._client().get(book_key(self.prefix, self.exchange, symbol)))

    async def last(self, symbol: str, channel: str, count: int = 100) -> list[Event]:
        """The newest ``count`` entries, oldest first; each carries its ``entry_id``.

        On a repaired channel (``aggTrade``, ``trade``, ``kline_*``) the companion stream is merged
        in, as in :meth:`range`: the newest ``count`` of both, every entry once, in id order.
        """
        client = self._client()
        key = self.stream_key(symbol, channel)
        rows = list(reversed(await client.xrevrange(key, count=count)))
        if _has_repair(channel):
            repaired = await client.xrevrange(self._repair_key(symbol, channel), count=count)
            repaired = await self._within_retention(key, list(reversed(repaired)))
            rows = _merged(rows, repaired)[-count:] if count > 0 else []
        return _entries(rows)

    async def _within_retention(self, key: str, repaired: list[Any]) -> list[Any]:
        """The repaired rows not older than the live stream's oldest entry once that stream has
        been trimmed (``MAXLEN``): what aged out of it aged out of the repair too, and a repaired
        trade left beyond it would open a silent hole between itself and the live stream."""
        if not repaired:
            return repaired
        try:
            info = await self._client().xinfo_stream(key)
        except redis.ResponseError:  # no live stream (yet): nothing trimmed
            return repaired
        first = info.get("first-entry")
        if not first or int(info.get("entries-added", 0)) <= int(info.get("length", 0)):
            return repaired
        floor = _row_key(first)
        return [row for row in repaired if _row_key(row) >= floor]

    def _repair_key(self, symbol: str, channel: str) -> str:
        return stream_key(self.prefix, self.exchange, channel + REPAIR_SUFFIX, symbol)

    async def range(
        self, symbol: str, channel: str, start_ms: int, end_ms: int, count: int | None = None
    ) -> list[Event]:
        """Entries whose id time lies in ``[start_ms, end_ms]``, oldest first.

        On ``aggTrade`` and ``trade`` (Binance; OKX's ``trade``) and ``kline_*`` what the streamer
        fetched back over REST (the companion stream ``<channel>@repair``, see
        ``data_collector.streaming.trade_repair``) is merged in: every entry once, in id order.
        """
        client = self._client()
        lo, hi = str(int(start_ms)), str(int(end_ms))
        key = self.stream_key(symbol, channel)
        rows = await client.xrange(key, min=lo, max=hi, count=count)
        if _has_repair(channel):
            repaired = await client.xrange(self._repair_key(symbol, channel), min=lo, max=hi, count=count)
            rows = _merged(rows, await self._within_retention(key, repaired))
            if count is not None:
                rows = rows[:count]
        return _entries(rows)

    async def dataframe(
        self,
        symbol: str,
        channel: str,
        *,
        count: int | None = 1000,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> pd.DataFrame:
        """The last ``count`` entries, or a time range, as a pandas DataFrame (pandas is imported here)."""
        import pandas as pd

        if start_ms is not None or end_ms is not None:
            events = await self.range(
                symbol,
                channel,
                start_ms if start_ms is not None else 0,
                end_ms if end_ms is not None else 2**63 - 1,
            )
        else:
            events = await self.last(symbol, channel, count or 1000)
        frame = pd.DataFrame(events)
        for column in ("event_ms", "recv_ms", "trade_ms", "open_ms", "close_ms"):
            if column in frame:
                frame[column.replace("_ms", "_time")] = pd.to_datetime(frame[column], unit="ms", utc=True)
        return frame

    async def tail(
        self,
        symbol: str,
        channel: str,
        *,
        last_id: str = "$",
        block_ms: int = 1000,
        count: int = 1000,
        repair_wait_ms: int = 30_000,
    ) -> AsyncIterator[Event]:
        """Yield new entries as they are written (``XREAD BLOCK``), forever.

        Args:
            last_id: start after this entry id; ``"$"`` means only entries written from now on,
                ``"0"`` replays the stream from its start.
            block_ms: how long one XREAD waits (the loop then simply reads again).
            repair_wait_ms: on a repaired channel (``aggTrade``, ``trade``), how long the trades
                after an open gap are held back waiting for its repair. Within it every trade is
                yielded once, in id order, the repaired ones in their place; past it the held
                trades go on and that gap stays marked (:meth:`gaps`; :meth:`range` still
                returns a repair that lands later). On ``kline_*`` the tail is the live stream's:
                candles refilled after a Redis restart are older than what it has yielded
                (:meth:`range` and :meth:`last` return them).
        """
        key = self.stream_key(symbol, channel)
        client = self._client()
        gkey = gaps_key(self.prefix, self.exchange)
        # The gaps stream's cursor first: a marker written meanwhile is then read, not skipped.
        if last_id == "$":
            newest = await client.xrevrange(gkey, count=1)
            gaps_from = newest[0][0].decode() if newest else "0-0"
            newest = await client.xrevrange(key, count=1)
            last_id = newest[0][0].decode() if newest else "0-0"
        else:  # a marker's id is at least the time of the trade after its hole
            gaps_from = f"{max(_id_key(last_id)[0] - 1, 0)}-0"
        if channel not in REPAIRED_CHANNELS:
            while True:
                reply = await client.xread({key: last_id}, count=count, block=block_ms)
                for _key, rows in reply or []:
                    for event in _entries(rows):
                        last_id = event["entry_id"]
                        yield event
        else:
            cursors = {key: last_id, self._repair_key(symbol, channel): last_id, gkey: gaps_from}
            async for event in self._tail_repaired(key, cursors, block_ms, count, repair_wait_ms):
                yield event

    async def _tail_repaired(
        self, key: str, cursors: dict[str, str], block_ms: int, count: int, wait_ms: int
    ) -> AsyncIterator[Event]:
        """:meth:`tail` of a trade stream and its companion repair stream, merged in id order.

        The gaps stream is read in the same XREAD (``cursors``: live, repair and gaps stream):
        the streamer writes a gap's marker before the first trade after it, so a trade is never
        seen before the hole in front of it. Trades wait in a heap until no open hole (a marker
        with ``first_seq`` not yet followed by its ``repaired`` marker and its last repaired
        trade) lies below their id.
        """
        client = self._client()
        rkey, gkey = list(cursors)[1:]
        #: (first_seq, last_seq) -> [opened at (loop ms), highest repaired id read, repaired N or None]
        holes: dict[tuple[int, int], list[Any]] = {}
        held: list[tuple[tuple[int, int], int, int, Event]] = []
        tiebreak = itertools.count()
        done_id = _id_key(cursors[key])
        start_seq = done_id[1]  # entry ids are <trade ms>-<trade id>
        loop = asyncio.get_running_loop()
        while True:
            streams: dict[Any, Any] = cursors
            reply = await client.xread(
                streams, count=count, block=block_ms if not held else min(block_ms, 100)
            )
            now_ms = loop.time() * 1000.0
            got = {(k.decode() if isinstance(k, bytes) else k): rows for k, rows in reply or [] if rows}
            for name, rows in got.items():
                cursors[name] = rows[-1][0].decode()
            _note_holes(holes, got.get(gkey, []), key, now_ms, start_seq)  # the markers first
            for name in (key, rkey):
                for event in _entries(got.get(name, [])):
                    seq, id_key = event.get("id"), _id_key(event["entry_id"])
                    if type(seq) is not int:
                        continue
                    # A hole's ids come back repaired: in the companion stream, or in the live
                    # one itself (repair mode ``hold``; never live there otherwise).
                    if name == rkey or event.get("repaired"):
                        for bounds, hole in holes.items():
                            if bounds[0] <= seq <= bounds[1]:
                                hole[1] = max(hole[1], seq)
                    if id_key > done_id:
                        heapq.heappush(held, (id_key, seq, next(tiebreak), event))
            for bounds, hole in list(holes.items()):
                # Repaired ids run from first_seq up (REST serves them contiguous, in order): the
                # N-th is the last to wait for, and the repair stream is read in id order.
                closed = hole[2] is not None and (hole[2] == 0 or hole[1] >= bounds[0] + hole[2] - 1)
                if closed or now_ms - hole[0] > wait_ms:
                    del holes[bounds]
            floor = min((b[0] for b in holes), default=None)
            while held and (floor is None or held[0][1] < floor):
                id_key, _, _, event = heapq.heappop(held)
                if id_key <= done_id:  # in both streams, or a repair that came after its wait
                    continue
                done_id = id_key
                yield event

    async def gaps(self, start_ms: int = 0, end_ms: int | None = None) -> list[dict[str, Any]]:
        """Gap markers ``{stream, channel, symbol, from_ms, to_ms, reason}``, oldest first.

        ``overflow`` markers (entries the streamer's buffer dropped while Redis was down) also
        carry ``first_id``, ``last_id`` (the dropped entry ids, inclusive) and ``count``. Markers
        of trade streams (contiguous ids) carry ``first_seq``, ``last_seq`` (the missing trade
        ids, inclusive) and ``count`` when the ids on both sides are known. A ``repaired`` marker
        (same ``first_seq``/``last_seq`` as the gap it closes) says how many were fetched back
        (``repaired``); ``redis_restart`` markers say Redis lost what it held before ``to_ms``.
        """
        rows = await self._client().xrange(
            gaps_key(self.prefix, self.exchange),
            min=str(start_ms),
            max="+" if end_ms is None else str(end_ms),
        )
        out = []
        for entry_id, fields in rows:
            item: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
            item["from_ms"] = int(item["from_ms"])
            item["to_ms"] = int(item["to_ms"])
            for field in ("count", "first_seq", "last_seq", "repaired"):
                if field in item:
                    item[field] = int(item[field])
            item["entry_id"] = entry_id.decode()
            out.append(item)
        return out

    async def close(self) -> None:
        """Close the client the reader opened itself; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self._redis.aclose()

    async def __aenter__(self) -> MarketDataReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
