"""OKX v5 formats: numbers as plain decimal strings, instrument ids, bars, candles, the book checksum.

OKX writes numbers as strings without trailing zeros (``"41006.8"``, ``"0.5"``, ``"3"``), every
timestamp as a string of milliseconds, and candles as 9 strings, newest first.
"""

from __future__ import annotations

from typing import Any

from data_collector.markets import DAY_MS, TIMEFRAME_MS
from data_collector.simulator.market import Rows, SymbolMarket

# The venue's protocol constants: one definition, the streamer's OKX adapter's.
from data_collector.venues.okx.protocol import BARS as BARS
from data_collector.venues.okx.protocol import CHECKSUM_LEVELS as CHECKSUM_LEVELS
from data_collector.venues.okx.protocol import checksum as checksum

#: OKX ``bar`` -> our timeframe.
TIMEFRAME_OF_BAR = {bar: tf for tf, bar in BARS.items()}
#: The timeframes a venue serves, shortest first (what ccxt okx lists).
OKX_TIMEFRAMES = tuple(BARS)


def num(units: int, decimals: int) -> str:
    """Integer ``units`` of ``10**-decimals`` as OKX writes it: no exponent, no trailing zeros."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(int(units)), 10**decimals)
    if decimals == 0 or frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}." + f"{frac:0{decimals}d}".rstrip("0")


def spot_id(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTC-USDT``."""
    return symbol.replace("/", "-")


def swap_id(symbol: str) -> str:
    """``BTC/USDT`` (the spot part of a perpetual) -> ``BTC-USDT-SWAP``."""
    return spot_id(symbol) + "-SWAP"


def approx_ms(timeframe: str) -> int:
    """A timeframe's length in ms (a month counts 31 days, a quarter 92), for window sizing."""
    if timeframe == "1M":
        return 31 * DAY_MS
    if timeframe == "3M":
        return 92 * DAY_MS
    return TIMEFRAME_MS[timeframe]


def candle_rows(rows: Rows, market: SymbolMarket, swap: bool, closed_before_ms: int) -> list[list[str]]:
    """OKX candle arrays, oldest first: ``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``.

    Spot: ``vol`` in base, ``volCcy`` and ``volCcyQuote`` in quote. Swap (one contract is one lot
    step): ``vol`` in contracts, ``volCcy`` in base, ``volCcyQuote`` in quote. ``confirm`` is
    ``"1"`` for a candle that opens before ``closed_before_ms`` (the open of the forming one).
    """
    pd, qd = market.price_decimals, market.qty_decimals
    out = []
    for t, o, h, low, c, v, q in zip(
        *(col.tolist() for col in (rows.open_ms, rows.o, rows.h, rows.l, rows.c, rows.v, rows.q)), strict=True
    ):
        quote = num(q, 8)
        base = num(v, qd)
        vols = [str(v), base, quote] if swap else [base, quote, quote]
        out.append(
            [
                str(t),
                num(o, pd),
                num(h, pd),
                num(low, pd),
                num(c, pd),
                *vols,
                "1" if t < closed_before_ms else "0",
            ]
        )
    return out


def envelope(data: list[Any], code: str = "0", msg: str = "") -> dict[str, Any]:
    """OKX's REST answer: ``{"code": "0", "msg": "", "data": [...]}``."""
    return {"code": code, "msg": msg, "data": data}
