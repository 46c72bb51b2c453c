"""Binance's wire formats: kline arrays, aggTrades, exchangeInfo entries, number strings."""

from __future__ import annotations

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


_INT_DIGITS = 14
_WHOLE_DIGITS = 16
_POW_INT = 10 ** np.arange(_INT_DIGITS - 1, -1, -1, dtype=np.int64)
_POW_WHOLE = 10 ** np.arange(_WHOLE_DIGITS - 1, -1, -1, dtype=np.int64)
_POW_FRAC = 10 ** np.arange(7, -1, -1, dtype=np.int64)


def _kline_layout() -> tuple[bytes, np.ndarray]:
    """Column order that interleaves digit blocks with the template's literal bytes.

    Source columns: 3 integers x 14 digits, 8 decimals x 16 whole digits, 8 x 8 fraction
    digits, then the literal bytes. A kline row is a gather of those columns.
    """
    n_int = 3 * _INT_DIGITS
    n_whole = 8 * _WHOLE_DIGITS
    n_frac = 8 * 8
    literals = bytearray()
    order: list[int] = []

    def lit(text: str) -> None:
        for ch in text.encode():
            order.append(n_int + n_whole + n_frac + len(literals))
            literals.append(ch)

    def integer(i: int) -> None:
        order.extend(range(i * _INT_DIGITS, (i + 1) * _INT_DIGITS))

    def decimal(d: int) -> None:
        order.extend(range(n_int + d * _WHOLE_DIGITS, n_int + (d + 1) * _WHOLE_DIGITS))
        lit(".")
        order.extend(range(n_int + n_whole + d * 8, n_int + n_whole + (d + 1) * 8))

    lit("[")
    integer(0)
    for d in range(5):
        lit(',"')
        decimal(d)
        lit('"')
    lit(",")
    integer(1)
    lit(',"')
    decimal(5)
    lit('",')
    integer(2)
    for d in (6, 7):
        lit(',"')
        decimal(d)
        lit('"')
    lit(',"0"],')
    return bytes(literals), np.array(order, dtype=np.intp)


_LITERALS, _ORDER = _kline_layout()
_LIT_ROW = np.frombuffer(_LITERALS, dtype=np.uint8)


def klines_json(rows: Rows, market: SymbolMarket, timeframe: str) -> bytes:
    """The JSON body of ``/api/v3/klines`` for ``rows``.

    Formatted without a Python loop: every number becomes a fixed-width block of ASCII digits,
    the blocks and the template's literal bytes are gathered into one byte matrix, and leading
    zeros are dropped with one boolean mask. About ten times faster than %-formatting each row.
    """
    n = len(rows)
    if n == 0:
        return b"[]"
    ps = 10 ** (8 - market.price_decimals)
    qs = 10 ** (8 - market.qty_decimals)
    ints = np.stack((rows.open_ms, close_times(rows.open_ms, timeframe), rows.n), axis=1)
    decs = np.stack(
        (rows.o * ps, rows.h * ps, rows.l * ps, rows.c * ps, rows.v * qs, rows.q, rows.tb * qs, rows.tbq),
        axis=1,
    )
    whole, frac = np.divmod(decs, _E8)
    int_digits = ints[:, :, None] // _POW_INT
    int_keep = (int_digits != 0) | (_POW_INT == 1)
    whole_digits = whole[:, :, None] // _POW_WHOLE
    whole_keep = (whole_digits != 0) | (_POW_WHOLE == 1)
    frac_digits = frac[:, :, None] // _POW_FRAC
    src = np.concatenate(
        (
            (int_digits % 10).reshape(n, -1).astype(np.uint8) + 48,
            (whole_digits % 10).reshape(n, -1).astype(np.uint8) + 48,
            (frac_digits % 10).reshape(n, -1).astype(np.uint8) + 48,
            np.broadcast_to(_LIT_ROW, (n, len(_LIT_ROW))),
        ),
        axis=1,
    )
    keep = np.concatenate(
        (
            int_keep.reshape(n, -1),
            whole_keep.reshape(n, -1),
            np.ones((n, 64 + len(_LIT_ROW)), dtype=bool),
        ),
        axis=1,
    )
    body: bytes = src[:, _ORDER][keep[:, _ORDER]].tobytes()
    return b"[" + body[:-1] + b"]"


def klines_json_slow(rows: Rows, market: SymbolMarket, timeframe: str) -> bytes:
    """Reference formatter (one %-format per row): the baseline :func:`klines_json` must equal."""
    if len(rows) == 0:
        return b"[]"
    t = KLINE_TEMPLATE
    body = ",".join([t % tuple(r) for r in kline_matrix(rows, market, timeframe)])
    return ("[" + body + "]").encode()


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


def symbol_info(market: SymbolMarket) -> dict[str, Any]:
    """An exchangeInfo ``symbols`` entry."""
    pd, qd = market.price_decimals, market.qty_decimals
    return {
        "symbol": market.exchange_symbol,
        "status": "TRADING",
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
