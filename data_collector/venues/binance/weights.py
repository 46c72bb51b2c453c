"""Binance's request weights, as the backfill charges them to the weight budget (PROTOCOL.md)."""

from __future__ import annotations

#: Request weights of the Binance spot endpoints we call.
BINANCE_WEIGHTS = {"klines": 2, "exchangeInfo": 20, "time": 1}
#: The same on USDⓈ-M futures (``/fapi/v1``, a budget of its own): ``exchangeInfo`` weighs 1 there,
#: not spot's 20 (Binance's USDⓈ-M docs; ccxt's ``fapiPublic`` costs agree); ``ticker/24hr`` of all
#: symbols (the only form naming more than one) weighs 40.
BINANCE_FUTURES_WEIGHTS = {"exchangeInfo": 1, "time": 1, "ticker/24hr": 40}
#: Symbols one ``ticker/24hr?symbols=[...]`` may name before the request asks for all tickers.
MAX_NAMED_TICKERS = 100


def futures_kline_weight(limit: int) -> int:
    """Binance USDⓈ-M weighs (mark/index/premium) klines by ``limit``: 1, 2, 5, or 10 above 1000."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def ticker_weight(named: int | None) -> int:
    """Binance spot's weight of ``/api/v3/ticker/24hr`` naming ``named`` symbols (None: all)."""
    if named is None or named > MAX_NAMED_TICKERS:
        return 80
    return 2 if named <= 20 else 40
