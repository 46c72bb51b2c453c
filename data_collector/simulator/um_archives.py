"""The USDⓈ-M futures part of the archive tree: ``/data/futures/um/{daily,monthly}/<kind>/...``.

As on data.binance.vision, futures CSVs start with a header row, and their timestamps stay in
milliseconds (the switch to microseconds in 2025 is spot's only). Kinds: ``klines`` (the
contract's own trades), ``markPriceKlines``, ``indexPriceKlines``, ``premiumIndexKlines`` (OHLC
and count, zero volumes, as ``/fapi/v1/markPriceKlines`` etc. serve them) and ``aggTrades``
(seven columns, ``is_buyer_maker`` spelled ``true``/``false``). The values are REST's: the same
model, the same number strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from data_collector.simulator.formats import close_times, decimal8, kline_matrix, signed_decimal

if TYPE_CHECKING:
    from data_collector.simulator.market import SymbolMarket
    from data_collector.simulator.usdm import FuturesVenue

#: Kline kinds of the futures tree and the price series each holds.
UM_KLINE_KINDS = {
    "klines": "last",
    "markPriceKlines": "mark",
    "indexPriceKlines": "index",
    "premiumIndexKlines": "premium",
}
KLINES_HEADER = (
    b"open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    b"taker_buy_volume,taker_buy_quote_volume,ignore\n"
)
AGG_TRADES_HEADER = b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
_ROW = "%d,%d.%08d,%d.%08d,%d.%08d,%d.%08d,%d.%08d,%d,%d.%08d,%d,%d.%08d,%d.%08d,0"


def um_kline_csv(
    venue: FuturesVenue,
    market: SymbolMarket,
    kind: str,
    timeframe: str,
    start_ms: int,
    end_ms: int,
    now_ms: int,
) -> bytes:
    """The futures archive CSV of ``kind``'s closed candles opening in ``[start_ms, end_ms)``."""
    price = UM_KLINE_KINDS[kind]
    src = venue.series(venue.market(market.exchange_symbol), price)
    rows = src.candles(timeframe, start_ms, end_ms, now_ms)
    if len(rows) == 0:
        return b""
    if price == "last":
        lines = [_ROW % tuple(r) for r in kline_matrix(rows, market, timeframe)]
    else:
        decimals = src.price_decimals
        closes = close_times(rows.open_ms, timeframe).tolist()
        cols = (rows.open_ms, rows.o, rows.h, rows.l, rows.c, rows.n)
        lines = [
            "%d,%s,%s,%s,%s,0,%d,0,%d,0,0,0"
            % (
                t,
                signed_decimal(o, decimals),
                signed_decimal(h, decimals),
                signed_decimal(lo, decimals),
                signed_decimal(c, decimals),
                closes[i],
                n,
            )
            for i, (t, o, h, lo, c, n) in enumerate(zip(*(np.asarray(x).tolist() for x in cols), strict=True))
        ]
    return KLINES_HEADER + ("\n".join(lines) + "\n").encode()


def um_agg_trades_csv(market: SymbolMarket, start_ms: int, end_ms: int) -> bytes:
    """The futures archive CSV of the aggregate trades with ``start_ms <= T < end_ms``."""
    pd, qd = market.price_decimals, market.qty_decimals
    lines = [
        f"{t.id},{decimal8(t.price, pd)},{decimal8(t.qty, qd)},{t.id},{t.id},{t.time_ms},"
        f"{'true' if t.buyer_maker else 'false'}"
        for minute in range(start_ms // 60_000, end_ms // 60_000)
        for t in market.minute_trades(minute)
    ]
    return AGG_TRADES_HEADER + ("\n".join(lines) + "\n").encode() if lines else b""
