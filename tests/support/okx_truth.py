"""The truth for the OKX simulator tests, read from the market model itself (integer ticks and
lots), not from the OKX formatting code under test, in the shapes ccxt okx parses to."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from data_collector.markets import MINUTE_MS
from data_collector.simulator import SimulatedExchange


def _quarter(open_ms: int) -> int:
    """The open of the calendar quarter holding ``open_ms`` (via numpy's calendar months)."""
    month = int(np.datetime64(open_ms, "ms").astype("datetime64[M]").astype(np.int64))
    return int(np.datetime64(month - month % 3, "M").astype("datetime64[ms]").astype(np.int64))


def model_candles(
    sim: SimulatedExchange, symbol: str, timeframe: str, start: int, end: int
) -> list[list[float]]:
    """``[ts, open, high, low, close, base volume]`` of the candles opening in ``[start, end)``."""
    market = sim.okx.venue.instrument(symbol).market
    now = sim.clock.now_ms()
    pd, qd = 10**market.price_decimals, 10**market.qty_decimals
    if timeframe != "3M":
        rows = market.candles(timeframe, start, end, now)
        cols = zip(*(c.tolist() for c in (rows.open_ms, rows.o, rows.h, rows.l, rows.c, rows.v)), strict=True)
        return [[t, o / pd, h / pd, low / pd, c / pd, v / qd] for t, o, h, low, c, v in cols]
    months = market.candles("1M", _quarter(start), end, now)
    quarters: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(months.open_ms.tolist()):
        quarters[_quarter(t)].append(i)
    out = []
    for q, idx in sorted(quarters.items()):
        if start <= q < end:
            o, c = int(months.o[idx[0]]), int(months.c[idx[-1]])
            h, low = max(int(months.h[i]) for i in idx), min(int(months.l[i]) for i in idx)
            out.append([q, o / pd, h / pd, low / pd, c / pd, sum(int(months.v[i]) for i in idx) / qd])
    return out


def model_trades(sim: SimulatedExchange, symbol: str, start: int, end: int) -> list[dict[str, Any]]:
    """Trades with ``start <= ts < end`` up to now, oldest first: id, price, amount, ts, taker side.

    A swap's amount is in contracts (one contract is one lot step)."""
    inst = sim.okx.venue.instrument(symbol)
    market = inst.market
    now = sim.clock.now_ms()
    pd, qd = 10**market.price_decimals, 1 if inst.swap else 10**market.qty_decimals
    out = []
    for minute in range(start // MINUTE_MS, (min(end, now + 1) - 1) // MINUTE_MS + 1):
        for t in market.minute_trades(minute):
            if start <= t.time_ms < min(end, now + 1):
                side = "sell" if t.buyer_maker else "buy"
                out.append(
                    {
                        "id": str(t.id),
                        "price": t.price / pd,
                        "amount": t.qty / qd,
                        "ts": t.time_ms,
                        "side": side,
                    }
                )
    return out
