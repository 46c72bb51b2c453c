"""Binance's wire formats: kline arrays, aggTrades, exchangeInfo entries, number strings."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from data_collector.markets import TIMEFRAME_MS
from data_collector.simulator.market import Rows, SymbolMarket, Trade

_E8 = 100_000_000
KLINE_TEMPLATE = (
    '[%d,"%d.%08d","%d.%08d","%d.%08d","%d.%08d","%d.%08d",%d,"%d.%08d",%d,"%d.%08d","%d.%08d","0"]'
)


def decimal8(units: int, decimals: int) -> str:
    """Integer ``units`` of ``10**-decimals`` as Binance's 8-decimal string."""
    whole, frac = divmod(units * 10 ** (8 - decimals), _E8)
    return "%d.%08d" % (whole, frac)


def signed_decimal(units: int, decimals: int) -> str:
    """:func:`decimal8` of a value that may be negative (a premium)."""
    return ("-" if units < 0 else "") + decimal8(abs(units), decimals)


def book_ticker(market: SymbolMarket, best: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, Any]:
    """The fields of ``/ticker/bookTicker`` both venues send, from the book's best levels."""
    (bp, bq), (ap, aq) = best
    pd, qd = market.price_decimals, market.qty_decimals
    return {
        "symbol": market.exchange_symbol,
        "bidPrice": decimal8(bp, pd),
        "bidQty": decimal8(bq, qd),
        "askPrice": decimal8(ap, pd),
        "askQty": decimal8(aq, qd),
    }


def close_times(open_ms: np.ndarray, timeframe: str) -> np.ndarray:
    """closeTime (last ms) of each candle."""
    if timeframe == "1M":
        months = open_ms.astype("datetime64[ms]").astype("datetime64[M]") + 1
        return months.astype("datetime64[ms]").astype(np.int64) - 1
    return open_ms + (TIMEFRAME_MS[timeframe] - 1)


def kline_matrix(rows: Rows, market: SymbolMarket, timeframe: str) -> list[list[int]]:
    """The integers of each kline row in :data:`KLINE_TEMPLATE` order."""
    ps = 10 ** (8 - market.price_decimals)
    qs = 10 ** (8 - market.qty_decimals)
    cols = [rows.open_ms]
    for arr, scale in (
        (rows.o, ps),
        (rows.h, ps),
        (rows.l, ps),
        (rows.c, ps),
        (rows.v, qs),
    ):
        whole, frac = np.divmod(arr * scale, _E8)
        cols += [whole, frac]
    cols.append(close_times(rows.open_ms, timeframe))
    whole, frac = np.divmod(rows.q, _E8)
    cols += [whole, frac, rows.n]
    for arr, scale in ((rows.tb, qs), (rows.tbq, 1)):
        whole, frac = np.divmod(arr * scale, _E8)
        cols += [whole, frac]
    matrix: list[list[int]] = np.stack(cols, axis=1).tolist()
    return matrix


def klines_json(rows: Rows, market: SymbolMarket, timeframe: str) -> bytes:
    """The JSON body of ``/api/v3/klines`` for ``rows``.

    The integers come out of numpy in one ``tolist``; each row is then one %-format of a fixed
    template (about 1 ms per 1,000 rows, measured faster than a vectorised byte-matrix build).
    """
    if len(rows) == 0:
        return b"[]"
    t = KLINE_TEMPLATE
    body = ",".join([t % tuple(r) for r in kline_matrix(rows, market, timeframe)])
    return ("[" + body + "]").encode()


def klines_json_naive(rows: Rows, market: SymbolMarket, timeframe: str) -> bytes:
    """The obvious formatter (floats formatted per value, then ``json.dumps``): a benchmark baseline."""
    pd, qd = 10**market.price_decimals, 10**market.qty_decimals
    closes = close_times(rows.open_ms, timeframe)
    out = []
    for i in range(len(rows)):
        out.append(
            [
                int(rows.open_ms[i]),
                f"{rows.o[i] / pd:.8f}",
                f"{rows.h[i] / pd:.8f}",
                f"{rows.l[i] / pd:.8f}",
                f"{rows.c[i] / pd:.8f}",
                f"{rows.v[i] / qd:.8f}",
                int(closes[i]),
                f"{rows.q[i] / 1e8:.8f}",
                int(rows.n[i]),
                f"{rows.tb[i] / qd:.8f}",
                f"{rows.tbq[i] / 1e8:.8f}",
                "0",
            ]
        )
    return json.dumps(out, separators=(",", ":")).encode()


def agg_trade_json(t: Trade, market: SymbolMarket) -> str:
    """One aggTrade object as Binance's REST returns it."""
    return '{"a":%d,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}' % (
        t.id,
        decimal8(t.price, market.price_decimals),
        decimal8(t.qty, market.qty_decimals),
        t.id,
        t.id,
        t.time_ms,
        "true" if t.buyer_maker else "false",
    )


def symbol_info(market: SymbolMarket, now_ms: int | None = None) -> dict[str, Any]:
    """An exchangeInfo ``symbols`` entry; ``BREAK`` once delisted (Binance keeps listing it so)."""
    pd, qd = market.price_decimals, market.qty_decimals
    delisted = market.delisted_ms is not None and (now_ms is None or now_ms >= market.delisted_ms)
    return {
        "symbol": market.exchange_symbol,
        "status": "BREAK" if delisted else "TRADING",
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": decimal8(1, pd),
                "maxPrice": "1000000.00000000",
                "tickSize": decimal8(1, pd),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": decimal8(1, qd),
                "maxQty": "9000000.00000000",
                "stepSize": decimal8(1, qd),
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": "5.00000000",
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def ticker_fields(market: SymbolMarket, s: dict[str, Any], now: int) -> dict[str, Any]:
    """The 24 h ticker fields spot and USDⓈ-M share, from ``SimulatedExchange.ticker_stats``'s ``s``."""
    pd, qd = market.price_decimals, market.qty_decimals
    change = s["change"]
    return {
        "symbol": market.exchange_symbol,
        "priceChange": decimal8(change, pd) if change >= 0 else "-" + decimal8(-change, pd),
        "priceChangePercent": s["pct"],
        "weightedAvgPrice": s["wavg"],
        "lastPrice": s["c"],
        "lastQty": decimal8(1, qd),
        "openPrice": s["o"],
        "highPrice": s["h"],
        "lowPrice": s["l"],
        "volume": s["v"],
        "quoteVolume": s["q"],
        "openTime": s["open_ms"],
        "closeTime": now,
        "firstId": s["first"],
        "lastId": s["last"],
        "count": s["n"],
    }
