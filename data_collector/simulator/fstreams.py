"""The USDⓈ-M futures-only WebSocket streams: ``markPrice`` and ``forceOrder`` (liquidations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_collector.simulator.formats import decimal8
from data_collector.simulator.market import SymbolMarket
from data_collector.simulator.perp import FUNDING_MS, PerpMarket

if TYPE_CHECKING:
    from data_collector.simulator.streams import StreamHub, StreamState

#: Stream kinds only the futures hub produces (through :func:`produce_futures`).
FUTURES_KINDS = ("markPrice", "forceOrder")
_PARTIAL_MS = ("100", "250", "500")


def parse_futures(market: SymbolMarket, name: str, rest: str) -> tuple[SymbolMarket, str, str] | None:
    """(market, kind, argument) of a futures stream name past ``<symbol>@``; None if unknown.

    Depth cadences are Binance futures' (``depth`` is 250 ms; ``@500ms`` and ``@100ms``).
    """
    if rest == "markPrice":
        return market, "markPrice", "3000"
    if rest == "markPrice@1s":
        return market, "markPrice", "1000"
    if rest == "forceOrder":
        return market, "forceOrder", ""
    if rest == "depth":
        return market, "depth", "250"
    for ms in _PARTIAL_MS:
        if rest == f"depth@{ms}ms":
            return market, "depth", ms
    for n in ("5", "10", "20"):
        if rest == f"depth{n}":
            return market, "partial", n + ":250"
        for ms in _PARTIAL_MS:
            if rest == f"depth{n}@{ms}ms":
                return market, "partial", f"{n}:{ms}"
    return None


def mark_price_event(perp: PerpMarket, now: int) -> bytes | None:
    """A ``markPriceUpdate`` event of ``perp`` at ``now`` (None when it does not trade)."""
    live = perp.live_prices(now)
    if live is None:
        return None
    _last, index, mark = live
    pd = perp.price_decimals
    rate = perp.estimated_rate(now)
    return (
        '{"e":"markPriceUpdate","E":%d,"s":"%s","p":"%s","i":"%s","P":"%s","r":"%s","T":%d}'
        % (
            now,
            perp.exchange_symbol,
            decimal8(mark, pd),
            decimal8(index, pd),
            decimal8(index, pd),
            signed8(rate),
            now - now % FUNDING_MS + FUNDING_MS,
        )
    ).encode()


def signed8(units: int) -> str:
    """1e-8 ``units`` (any sign) as an 8-decimal string."""
    return ("-" if units < 0 else "") + decimal8(abs(units), 8)


def produce_futures(hub: StreamHub, st: StreamState, now: int) -> list[bytes]:
    """The frames of a ``markPrice`` or ``forceOrder`` stream due at ``now``."""
    perp = st.market
    assert isinstance(perp, PerpMarket)
    if st.kind == "markPrice":
        if st.cursor and now - st.last_ms < int(st.arg):
            return []
        st.cursor = 1
        st.last_ms = now
        msg = mark_price_event(perp, now)
        if msg is None:
            return []
        hub._count_sent(st.name, 1, now)
        return [msg]
    if st.cursor == 0:
        st.cursor = now
        return []
    out = []
    pd, qd = perp.price_decimals, perp.qty_decimals
    for second in range(st.cursor // 1000, now // 1000 + 1):
        liq = perp.liquidation(second)
        if liq is None or not st.cursor < liq[0] <= now:
            continue
        time_ms, sell, price, qty = liq
        q = decimal8(qty, qd)
        out.append(
            (
                '{"e":"forceOrder","E":%d,"o":{"s":"%s","S":"%s","o":"LIMIT","f":"IOC","q":"%s","p":"%s",'
                '"ap":"%s","X":"FILLED","l":"%s","z":"%s","T":%d}}'
                % (
                    now,
                    perp.exchange_symbol,
                    "SELL" if sell else "BUY",
                    q,
                    decimal8(price, pd),
                    decimal8(price, pd),
                    q,
                    q,
                    time_ms,
                )
            ).encode()
        )
    st.cursor = now
    if out:
        hub._count_sent(st.name, len(out), now)
    return out
