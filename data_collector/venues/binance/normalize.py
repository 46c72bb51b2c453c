"""Binance stream payloads (spot and USDⓈ-M) -> the shared event shapes and entry ids of
:mod:`data_collector.streaming.normalize` (which documents them), one normaliser per stream.
"""

from __future__ import annotations

from typing import Any

from data_collector.markets import exchange_symbol, validate_timeframe
from data_collector.streaming.normalize import (
    MAX_AHEAD_MS,
    MalformedEvent,
    Normalized,
    Normalizer,
    _int,
    _LocalIds,
    _price,
    _qty,
    _rate,
    _ts,
    kline_entry_id,
    kline_event,
    parse_levels,
)

#: ``markPriceUpdate`` prices: (event key, payload key).
_MARK_PRICES = (("mark_price", "p"), ("index_price", "i"), ("settle_price", "P"))
#: ``forceOrder`` order fields: (event key, payload key).
_LIQUIDATION_QUANTITIES = (("amount", "q"), ("filled", "z"), ("last_filled", "l"))
_LIQUIDATION_WORDS = (("status", "X"), ("order_type", "o"), ("time_in_force", "f"))


def _check_symbol(data: dict[str, Any], exchange_symbol: str) -> None:
    if type(data) is not dict:
        raise MalformedEvent("payload must be an object")
    if data.get("s") != exchange_symbol:
        raise MalformedEvent(f"symbol {data.get('s')!r} on the stream of {exchange_symbol}")


def make_normalizer(exchange: str, symbol: str, channel: str) -> Normalizer:
    """A function turning one payload of ``channel`` for ``symbol`` into ``(entry id, event)``.

    Raises:
        MalformedEvent: from the returned function, for any payload that does not fit.
    """
    ex_symbol = exchange_symbol(symbol)
    head = {"exchange": exchange, "symbol": symbol, "channel": channel}

    if channel in ("trade", "aggTrade"):
        id_field = "t" if channel == "trade" else "a"
        agg = channel == "aggTrade"

        def trade(data: dict[str, Any], recv_ms: int) -> Normalized:
            _check_symbol(data, ex_symbol)
            trade_ms = _ts(data["T"], recv_ms)
            trade_id = _int(data[id_field])
            maker = data["m"]
            if type(maker) is not bool:
                raise MalformedEvent("m must be a boolean")
            event = {
                "exchange": exchange,
                "symbol": symbol,
                "channel": channel,
                "event_ms": _ts(data["E"], recv_ms),
                "recv_ms": recv_ms,
                "id": trade_id,
                "trade_ms": trade_ms,
                "price": _price(data["p"]),
                "amount": _qty(data["q"]),
                "side": "sell" if maker else "buy",
            }
            if agg:
                event["first_id"] = _int(data["f"])
                event["last_id"] = _int(data["l"])
            return f"{trade_ms}-{trade_id}", event

        return trade

    if channel == "bookTicker":
        # Binance sends no event time and may repeat an update id here, so the entry id is
        # made locally: (time, sequence within that millisecond), strictly increasing.
        ticker_ids = _LocalIds()

        def book_ticker(data: dict[str, Any], recv_ms: int) -> Normalized:
            _check_symbol(data, ex_symbol)
            update_id = _int(data["u"])
            raw_event_ms = data.get("E")
            event_ms = recv_ms if raw_event_ms is None else _ts(raw_event_ms, recv_ms)
            event = {
                "exchange": exchange,
                "symbol": symbol,
                "channel": channel,
                "event_ms": event_ms,
                "recv_ms": recv_ms,
                "update_id": update_id,
                "bid": _price(data["b"]),
                "bid_qty": _qty(data["B"]),
                "ask": _price(data["a"]),
                "ask_qty": _qty(data["A"]),
            }
            return ticker_ids.next(event_ms), event

        return book_ticker

    if channel == "depth":

        def depth(data: dict[str, Any], recv_ms: int) -> Normalized:
            _check_symbol(data, ex_symbol)
            first = _int(data["U"])
            last = _int(data["u"])
            if last < first:
                raise MalformedEvent("depth update with u < U")
            event_ms = _ts(data["E"], recv_ms)
            event = {
                "exchange": exchange,
                "symbol": symbol,
                "channel": channel,
                "event_ms": event_ms,
                "recv_ms": recv_ms,
                "first_update_id": first,
                "update_id": last,
                "bids": parse_levels(data["b"]),
                "asks": parse_levels(data["a"]),
            }
            if "pu" in data:  # USDⓈ-M: the final update id of the diff before
                event["prev_update_id"] = _int(data["pu"])
            return f"{event_ms}-{last}", event

        return depth

    if channel in ("markPrice", "markPrice@1s"):

        def mark_price(data: dict[str, Any], recv_ms: int) -> Normalized:
            _check_symbol(data, ex_symbol)
            event_ms = _ts(data["E"], recv_ms)
            event = {
                **head,
                "event_ms": event_ms,
                "recv_ms": recv_ms,
                "funding_rate": _rate(data["r"]),
                "next_funding_ms": _ts(data["T"], recv_ms + MAX_AHEAD_MS),
            }
            for name, field in _MARK_PRICES:
                event[name] = _price(data[field])
            return f"{event_ms}-0", event

        return mark_price

    if channel == "forceOrder":
        liquidation_ids = _LocalIds()

        def force_order(data: dict[str, Any], recv_ms: int) -> Normalized:
            if type(data) is not dict:
                raise MalformedEvent("payload must be an object")
            order = data["o"]
            _check_symbol(order, ex_symbol)
            side = order["S"]
            if side not in ("BUY", "SELL"):
                raise MalformedEvent(f"liquidation side {side!r}")
            trade_ms = _ts(order["T"], recv_ms)
            event = {
                **head,
                "event_ms": _ts(data["E"], recv_ms),
                "recv_ms": recv_ms,
                "trade_ms": trade_ms,
                "side": side.lower(),
                "price": _price(order["p"]),
                "avg_price": _price(order["ap"]),
            }
            for name, field in _LIQUIDATION_QUANTITIES:
                event[name] = _qty(order[field])
            for name, field in _LIQUIDATION_WORDS:
                event[name] = str(order[field])
            return liquidation_ids.next(trade_ms), event

        return force_order

    if channel.startswith("kline_"):
        timeframe = validate_timeframe(channel[6:])

        def kline(data: dict[str, Any], recv_ms: int) -> Normalized:
            _check_symbol(data, ex_symbol)
            k = data["k"]
            if not isinstance(k, dict) or k.get("i") != timeframe:
                raise MalformedEvent("kline payload of another interval")
            closed = k["x"]
            if type(closed) is not bool:
                raise MalformedEvent("x must be a boolean")
            open_ms = _ts(k["t"], recv_ms)
            event_ms = _ts(data["E"], recv_ms)
            event = kline_event(
                exchange,
                symbol,
                timeframe,
                open_ms=open_ms,
                values=(k["o"], k["h"], k["l"], k["c"], k["v"], k["q"]),
                trades=_int(k["n"]),
                closed=closed,
                event_ms=event_ms,
                recv_ms=recv_ms,
            )
            return kline_entry_id(open_ms, timeframe, event_ms, closed), event

        return kline

    raise MalformedEvent(f"no normalizer for channel {channel!r}")
