"""OKX v5 public WebSocket protocol: endpoints, instrument ids, channels, subscribe messages and
the normalisers turning OKX payloads into the streamer's events (the shapes of
:mod:`data_collector.streaming.normalize`).

========================  ====================  ===========  =====================================
our channel               OKX channel           endpoint     entry id
========================  ====================  ===========  =====================================
``trade``                 ``trades``            public       ``<ts>-<tradeId>``
``bookTicker``            ``bbo-tbt``           public       ``<ts>-<sequence within that ms>``
``ticker``                ``tickers``           public       ``<ts>-<sequence within that ms>``
``depth``                 ``books``             public       ``<ts>-<seqId>`` (snapshot and updates)
``kline_<tf>``            ``candle<bar>``       business     as Binance's klines (:func:`kline_entry_id`)
========================  ====================  ===========  =====================================

OKX writes numbers and timestamps as strings. Candles carry no event time: the receive time
stands in, and ``confirm == "1"`` marks a closed one. ``books`` items keep their price and size
strings (``raw``) for the checksum, which is computed over the strings as sent.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from data_collector.markets import is_perpetual, normalize_market, validate_timeframe
from data_collector.streaming.normalize import (
    Event,
    MalformedEvent,
    Normalized,
    _LocalIds,
    _price,
    _qty,
    _ts,
    kline_entry_id,
    kline_event,
)

DEFAULT_WS_URL = "wss://ws.okx.com:8443/ws/v5"
CHANNELS = ("trade", "bookTicker", "ticker", "depth")
#: Our channel -> OKX's (klines: :func:`okx_channel`).
_OKX_CHANNEL = {"trade": "trades", "bookTicker": "bbo-tbt", "ticker": "tickers", "depth": "books"}
#: Timeframe -> OKX ``bar``; from 6h up the UTC-aligned bars (OKX's plain ``6H``, ``1D``... open
#: at 16:00 UTC).
BARS: dict[str, str] = {
    "1m": "1m",
    "3m": "3m",
    "5m": "5m",
    "15m": "15m",
    "30m": "30m",
    "1h": "1H",
    "2h": "2H",
    "4h": "4H",
    "6h": "6Hutc",
    "12h": "12Hutc",
    "1d": "1Dutc",
    "1w": "1Wutc",
    "1M": "1Mutc",
    "3M": "3Mutc",
}
#: Levels of each side the ``books`` checksum covers.
CHECKSUM_LEVELS = 25
#: Arguments in one ``subscribe`` request (OKX caps a request at 64 KiB).
SUBSCRIBE_CHUNK = 100


def checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX's ``books`` checksum: CRC32 (signed 32-bit) of ``bid1px:bid1sz:ask1px:ask1sz:...``.

    The best 25 levels of each side (bids highest first, asks lowest first) interleave, bid
    first; where one side runs out the other's levels follow alone. Prices and sizes are the
    strings as sent. The simulator signs its books with this function too: ccxt's own crc32
    checks it independently in ``tests/simulator/test_simulator_okx_ws.py``.
    """
    parts: list[str] = []
    for i in range(CHECKSUM_LEVELS):
        if i < len(bids):
            parts.extend(bids[i])
        if i < len(asks):
            parts.extend(asks[i])
    value = zlib.crc32(":".join(parts).encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def inst_id(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTC-USDT``; the perpetual ``BTC/USDT:USDT`` -> ``BTC-USDT-SWAP``."""
    market = normalize_market(symbol)
    spot = market.partition(":")[0].replace("/", "-")
    return spot + "-SWAP" if is_perpetual(market) else spot


def okx_channel(channel: str) -> str:
    """Our channel name -> OKX's (``kline_1h`` -> ``candle1H``)."""
    if channel.startswith("kline_"):
        timeframe = validate_timeframe(channel[6:])
        if timeframe not in BARS:
            from data_collector.errors import UsageError

            raise UsageError(f"OKX streams no {timeframe} candles: use one of {', '.join(BARS)}")
        return "candle" + BARS[timeframe]
    return _OKX_CHANNEL[channel]


def endpoint(channel: str) -> str:
    """``business`` for candles, else ``public`` (the path under ``/ws/v5``)."""
    return "business" if channel.startswith("kline_") else "public"


def ws_endpoint_url(base: str, path: str) -> str:
    """``<base>/public`` from a base given with or without ``/public`` or ``/business``."""
    root = base.rstrip("/")
    for suffix in ("/public", "/business"):
        if root.endswith(suffix):
            root = root[: -len(suffix)]
    return f"{root}/{path}"


def subscribe_requests(op: str, args: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """``{"op": op, "args": [{"channel", "instId"}, ...]}`` requests, :data:`SUBSCRIBE_CHUNK` each."""
    out = []
    for start in range(0, len(args), SUBSCRIBE_CHUNK):
        chunk = args[start : start + SUBSCRIBE_CHUNK]
        out.append({"op": op, "args": [{"channel": c, "instId": i} for c, i in chunk]})
    return out


def _okx_ts(value: object, recv_ms: int) -> int:
    if type(value) is not str or not value.isdigit():
        raise MalformedEvent(f"not an OKX timestamp: {value!r}")
    return _ts(int(value), recv_ms)


def _okx_int(value: object) -> int:
    """A non-negative integer, as OKX sends ids (string) and seqIds (number)."""
    if type(value) is int and value >= 0:
        return value
    if type(value) is str and value.isdigit():
        return int(value)
    raise MalformedEvent(f"not a non-negative integer: {value!r}")


def _best(levels: object) -> tuple[float, float]:
    if not isinstance(levels, list) or not levels or not isinstance(levels[0], list):
        raise MalformedEvent("a bbo-tbt side without a level")
    return _price(levels[0][0]), _qty(levels[0][1])


def raw_levels(raw: object) -> list[tuple[str, str]]:
    """``[[px, sz, ...], ...]`` -> ``[(px, sz)]`` strings as sent (validated as numbers)."""
    if not isinstance(raw, list):
        raise MalformedEvent("levels must be a list")
    out = []
    for level in raw:
        if (
            not isinstance(level, list)
            or len(level) < 2
            or type(level[0]) is not str
            or type(level[1]) is not str
        ):
            raise MalformedEvent("a level must be [price, size, ...] strings")
        _price(level[0])
        _qty(level[1])
        out.append((level[0], level[1]))
    return out


def make_normalizer(exchange: str, symbol: str, channel: str) -> Callable[[Any, int], Normalized]:
    """A function turning one item of an OKX push's ``data`` into ``(entry id, event)``.

    Raises:
        MalformedEvent: from the returned function, for an item that does not fit.
    """
    swap = is_perpetual(symbol)

    def head(event_ms: int, recv_ms: int) -> Event:
        return {
            "exchange": exchange,
            "symbol": symbol,
            "channel": channel,
            "event_ms": event_ms,
            "recv_ms": recv_ms,
        }

    if channel == "trade":

        def trade(data: Any, recv_ms: int) -> Normalized:
            trade_ms = _okx_ts(data["ts"], recv_ms)
            trade_id = _okx_int(data["tradeId"])
            side = data["side"]
            if side not in ("buy", "sell"):
                raise MalformedEvent(f"trade side {side!r}")
            event = head(trade_ms, recv_ms)
            event.update(
                id=trade_id, trade_ms=trade_ms, price=_price(data["px"]), amount=_qty(data["sz"]), side=side
            )
            return f"{trade_ms}-{trade_id}", event

        return trade

    if channel in ("bookTicker", "ticker"):
        ids = _LocalIds()

        def bbo(data: Any, recv_ms: int) -> Normalized:
            event_ms = _okx_ts(data["ts"], recv_ms)
            event = head(event_ms, recv_ms)
            if channel == "bookTicker":
                (bid, bid_qty), (ask, ask_qty) = _best(data["bids"]), _best(data["asks"])
                event.update(update_id=_okx_int(data["seqId"]))
            else:
                bid, bid_qty, ask, ask_qty = (
                    _price(data["bidPx"]),
                    _qty(data["bidSz"]),
                    _price(data["askPx"]),
                    _qty(data["askSz"]),
                )
                event.update(
                    last=_price(data["last"]),
                    open_24h=_price(data["open24h"]),
                    high_24h=_price(data["high24h"]),
                    low_24h=_price(data["low24h"]),
                    volume_24h=_qty(data["volCcy24h" if swap else "vol24h"]),
                )
            event.update(bid=bid, bid_qty=bid_qty, ask=ask, ask_qty=ask_qty)
            return ids.next(event_ms), event

        return bbo

    if channel == "depth":

        def books(data: Any, recv_ms: int) -> Normalized:
            event_ms = _okx_ts(data["ts"], recv_ms)
            seq = _okx_int(data["seqId"])
            prev = data["prevSeqId"]
            if type(prev) is not int or prev < -1:
                raise MalformedEvent(f"prevSeqId {prev!r}")
            checksum = data["checksum"]
            if type(checksum) is not int:
                raise MalformedEvent(f"checksum {checksum!r}")
            bids, asks = raw_levels(data["bids"]), raw_levels(data["asks"])
            event = head(event_ms, recv_ms)
            event.update(
                update_id=seq,
                prev_update_id=prev,
                snapshot=prev == -1,
                checksum=checksum,
                bids=[[float(p), float(q)] for p, q in bids],
                asks=[[float(p), float(q)] for p, q in asks],
            )
            # The strings as sent, for the checksum: popped before the event is packed.
            event["raw"] = (bids, asks)
            return f"{event_ms}-{seq}", event

        return books

    if channel.startswith("kline_"):
        timeframe = validate_timeframe(channel[6:])

        def candle(data: Any, recv_ms: int) -> Normalized:
            if not isinstance(data, list) or len(data) < 9:
                raise MalformedEvent("an OKX candle has 9 fields")
            open_ms = _okx_ts(data[0], recv_ms)
            closed = data[8] == "1"
            event = kline_event(
                exchange,
                symbol,
                timeframe,
                open_ms=open_ms,
                # Swaps count ``vol`` in contracts: ``volCcy`` is the base volume.
                values=(data[1], data[2], data[3], data[4], data[6] if swap else data[5], data[7]),
                trades=0,
                closed=closed,
                event_ms=recv_ms,
                recv_ms=recv_ms,
            )
            return kline_entry_id(open_ms, timeframe, recv_ms, closed), event

        return candle

    raise MalformedEvent(f"no OKX normalizer for channel {channel!r}")
