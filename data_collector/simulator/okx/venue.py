"""The OKX venue of a simulator: its instruments (SPOT and SWAP) over the shared market model.

Prices, volumes and trades come from the same :class:`~data_collector.simulator.market.SymbolMarket`
(spot) and :class:`~data_collector.simulator.perp.PerpMarket` (swap) a Binance simulator with the
same seed builds, so an OKX series is as deterministic as Binance's; only the formats differ.
One swap contract is one lot step of the base (``ctVal``), so contract counts stay integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data_collector.errors import UsageError
from data_collector.markets import MINUTE_MS, candle_open_ms, normalize_symbols
from data_collector.simulator.book import OrderBook, step_book
from data_collector.simulator.limits import SimClock
from data_collector.simulator.market import DayCache, Rows, SymbolMarket, Trade
from data_collector.simulator.market import _group_reduce as group_reduce
from data_collector.simulator.okx.formats import OKX_TIMEFRAMES, approx_ms, candle_rows, num, spot_id, swap_id
from data_collector.simulator.perp import OI_STEP_MS, PerpMarket, settle_of
from data_collector.simulator.rng import stream_key
from data_collector.simulator.tape import RateTape, pick

#: How far back a trade page walks from its cursor before giving up (a long maintenance gap).
_TRADE_WALK_MINUTES = 3 * 1440


@dataclass
class Instrument:
    """One OKX instrument: its id, market model, book and kind."""

    inst_id: str
    unified: str
    market: SymbolMarket
    swap: bool
    book: OrderBook

    @property
    def inst_type(self) -> str:
        return "SWAP" if self.swap else "SPOT"

    def size(self, lots: int) -> str:
        """A quantity in lot steps as OKX writes it: contracts for a swap, base for spot."""
        return str(lots) if self.swap else num(lots, self.market.qty_decimals)


def quarter_keys(open_ms: np.ndarray) -> np.ndarray:
    """The open of the calendar quarter holding each time (January, April, July, October)."""
    months = open_ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
    starts = (months - months % 3).astype("datetime64[M]")
    keys: np.ndarray = starts.astype("datetime64[ms]").astype(np.int64)
    return keys


class OkxVenue:
    """Instruments, books and the truth as OKX serves it.

    Args:
        seed: the world seed (the Binance side's, so prices agree).
        spot: ``BASE/QUOTE`` spot symbols.
        swaps: ``BASE/QUOTE`` or ``BASE/QUOTE:SETTLE`` perpetual swaps.
        clock: the simulated clock.
        listings, gaps: per unified symbol, as for the Binance markets (``None`` gaps: the seed's).
        day_cache: shared with the other venues.
    """

    def __init__(
        self,
        seed: int,
        spot: list[str],
        swaps: list[str],
        clock: SimClock,
        listings: dict[str, int],
        gaps: dict[str, list[tuple[int, int]]] | None,
        day_cache: DayCache,
    ) -> None:
        self.clock = clock
        self.instruments: dict[str, Instrument] = {}
        for name in normalize_symbols(spot):
            market = SymbolMarket(
                name, seed, listings.get(name), None if gaps is None else gaps.get(name, []), day_cache
            )
            self._add(spot_id(name), name, market, False, seed)
        for raw in swaps:
            base, unified = settle_of(raw)
            perp = PerpMarket(
                unified,
                seed,
                listing_ms=listings.get(unified),
                gaps=None if gaps is None else gaps.get(unified, gaps.get(base, [])),
                day_cache=day_cache,
            )
            self._add(swap_id(base), unified, perp, True, seed)
        self.by_unified = {i.unified: i for i in self.instruments.values()}
        #: The ``trades`` tape at ``ws_rate`` (the hub sets its rate; 0: the model's own trades):
        #: ids a function of the time, served alike by the WebSocket and by REST.
        self.tape = RateTape(0, 0.0)

    def _add(self, inst_id: str, unified: str, market: SymbolMarket, swap: bool, seed: int) -> None:
        book = OrderBook(
            stream_key(seed, "okx", inst_id, "book"), 1 + stream_key(seed, "okx", inst_id, "seq") % 10**9
        )
        self.instruments[inst_id] = Instrument(inst_id, unified, market, swap, book)

    # -- lookups -----------------------------------------------------------------------------

    def instrument(self, symbol: str) -> Instrument:
        """By OKX id (``BTC-USDT-SWAP``) or unified symbol (``BTC/USDT:USDT``); UsageError if absent."""
        hit = self.instruments.get(symbol.upper()) or self.by_unified.get(symbol.upper())
        if hit is None:
            raise UsageError(f"{symbol!r} is not listed by this simulator's OKX venue")
        return hit

    def advance_book(self, inst: Instrument, now_ms: int) -> None:
        """Step ``inst``'s book to ``now_ms`` around its current price."""
        step_book(inst.book, inst.market, now_ms)

    def levels(self, inst: Instrument, depth: int) -> tuple[list[list[str]], list[list[str]]]:
        """The best ``depth`` bids and asks as OKX levels ``[px, sz, "0", orders]``."""
        bids, asks = inst.book.top(depth)
        pd = inst.market.price_decimals
        return (
            [[num(p, pd), inst.size(q), "0", str(1 + q % 7)] for p, q in bids],
            [[num(p, pd), inst.size(q), "0", str(1 + q % 7)] for p, q in asks],
        )

    # -- instruments -------------------------------------------------------------------------

    def instrument_json(self, inst: Instrument, now_ms: int) -> dict[str, Any]:
        """The ``/api/v5/public/instruments`` item of ``inst``."""
        m = inst.market
        base, quote = m.base, m.quote
        settle = inst.unified.partition(":")[2]
        item = dict.fromkeys(
            (
                "uly",
                "instFamily",
                "settleCcy",
                "ctVal",
                "ctMult",
                "ctValCcy",
                "optType",
                "stk",
                "expTime",
                "ctType",
                "alias",
            ),
            "",
        )
        item.update(
            instType=inst.inst_type,
            instId=inst.inst_id,
            baseCcy=base,
            quoteCcy=quote,
            listTime=str(m.listing_ms),
            lever="10",
            tickSz=num(1, m.price_decimals),
            lotSz=num(1, m.qty_decimals),
            minSz=num(1, m.qty_decimals),
            maxLmtSz="9999999999",
            maxMktSz="1000000",
            state="live" if now_ms >= m.listing_ms else "preopen",
            ruleType="normal",
        )
        if inst.swap:
            item.update(
                uly=f"{base}-{quote}",
                instFamily=f"{base}-{quote}",
                baseCcy="",
                quoteCcy="",
                settleCcy=settle,
                ctVal=num(1, m.qty_decimals),
                ctMult="1",
                ctValCcy=base,
                ctType="linear",
                lever="100",
                lotSz="1",
                minSz="1",
            )
        return item

    # -- candles -----------------------------------------------------------------------------

    def rows(self, inst: Instrument, timeframe: str, start_ms: int, end_ms: int) -> Rows:
        """Candle rows opening in ``[start_ms, end_ms)``, the forming one included."""
        if timeframe not in OKX_TIMEFRAMES:
            raise UsageError(f"OKX serves no {timeframe!r} candles")
        now = self.clock.now_ms()
        if timeframe != "3M":
            return inst.market.candles(timeframe, start_ms, end_ms, now)
        first = int(quarter_keys(np.array([max(start_ms, 0)], dtype=np.int64))[0])
        months = inst.market.candles("1M", first, end_ms, now)
        rows = group_reduce(months, quarter_keys(months.open_ms))
        keep = rows.open_ms >= start_ms
        return Rows(*(col[keep] for col in rows))

    def forming_open(self, timeframe: str, now_ms: int) -> int:
        """The open of the candle holding ``now_ms`` (any time: the listing's, say)."""
        if timeframe == "3M":
            return int(quarter_keys(np.array([now_ms], dtype=np.int64))[0])
        return candle_open_ms(now_ms, timeframe)

    def ohlcv(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> list[list[str]]:
        """The truth: OKX candle arrays opening in ``[start_ms, end_ms)``, oldest first."""
        inst = self.instrument(symbol)
        rows = self.rows(inst, timeframe, start_ms, end_ms)
        now = self.clock.now_ms()
        return candle_rows(rows, inst.market, inst.swap, self.forming_open(timeframe, now))

    def candle_page(
        self,
        inst: Instrument,
        timeframe: str,
        after: int | None,
        before: int | None,
        limit: int,
        floor_ms: int = 0,
    ) -> list[list[str]]:
        """One page, newest first: the newest ``limit`` candles with ``before < ts < after``.

        Without ``after`` the page ends at now (``before`` alone gives the latest candles newer
        than it, as OKX documents). ``floor_ms``: nothing older is served (``/market/candles``
        keeps only the latest 1,440).
        """
        now = self.clock.now_ms()
        first_open = self.forming_open(timeframe, inst.market.listing_ms)
        lo_bound = max(floor_ms, first_open, 0 if before is None else before + 1)
        hi = now + 1 if after is None else min(after, now + 1)
        if hi <= lo_bound:
            return []
        span = approx_ms(timeframe) * limit
        lo = max(lo_bound, hi - span)
        while True:
            rows = self.rows(inst, timeframe, lo, hi)
            if len(rows) >= limit or lo <= lo_bound:
                break
            span *= 4
            lo = max(lo_bound, hi - span)
        rows = Rows(*(col[-limit:] for col in rows))
        out = candle_rows(rows, inst.market, inst.swap, self.forming_open(timeframe, now))
        out.reverse()
        return out

    # -- trades ------------------------------------------------------------------------------

    def minute_of_trade(self, inst: Instrument, trade_id: int) -> int:
        """The minute holding trade ``trade_id`` (the last minute up to now if it is later)."""
        m = inst.market
        lo, hi = m.listing_ms // MINUTE_MS, self.clock.now_ms() // MINUTE_MS
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if m.trades_before(mid) <= trade_id:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def trade_page(
        self,
        inst: Instrument,
        limit: int,
        after: int | None = None,
        before: int | None = None,
        by_time: bool = False,
    ) -> list[Trade]:
        """Trades newest first: the newest ``limit`` with ``before < key < after``.

        ``key`` is the trade id, or the time with ``by_time``; no ``after`` starts at now.
        """
        now = self.clock.now_ms()
        if self.tape_on():
            return self._tape_page(inst, now, limit, after, before, by_time)
        m = inst.market
        if after is None:
            minute = now // MINUTE_MS
        elif by_time:
            minute = (after - 1) // MINUTE_MS
        else:
            minute = self.minute_of_trade(inst, after - 1)
        first_minute = m.listing_ms // MINUTE_MS
        out: list[Trade] = []
        for _ in range(_TRADE_WALK_MINUTES):
            if minute < first_minute or len(out) >= limit:
                break
            for t in reversed(m.minute_trades(minute)):
                key = t.time_ms if by_time else t.id
                if t.time_ms > now or (after is not None and key >= after):
                    continue
                if before is not None and key <= before:
                    return out
                out.append(t)
                if len(out) >= limit:
                    return out
            minute -= 1
        return out

    def tape_on(self) -> bool:
        """Whether ``trades`` come from the ``ws_rate`` tape (it has run at some rate)."""
        tape = self.tape
        return tape.rate > 0 or tape.base > 0 or bool(tape.past)

    def tape_trades(self, inst: Instrument, lo: int, hi: int) -> list[Trade]:
        """The tape's trades ``lo..hi-1`` of ``inst`` (the id is the tape's count).

        Their content is a function of the id and time only (:func:`pick` of the id around the
        price of the trade's minute), so the WebSocket and REST, asked at any time, agree.
        """
        tape, m = self.tape, inst.market
        unit = max(1, int(m.qty_units))
        fallback = max(1, int(m.price0 * 10**m.price_decimals))
        out = []
        ref_minute, ref, spread = -1, fallback, 1
        for k in range(max(0, lo), hi):
            t = tape.time_of(k)
            if t // MINUTE_MS != ref_minute:
                ref_minute = t // MINUTE_MS
                ref = m.minute_tape(ref_minute).o or fallback
                spread = max(1, ref // 20000)
            r = pick(k)
            out.append(
                Trade(k, max(1, ref + (r % 9 - 4) * spread), unit * (1 + (r >> 4)) // 4 or 1, t, bool(r & 1))
            )
        return out

    def _tape_page(
        self, inst: Instrument, now: int, limit: int, after: int | None, before: int | None, by_time: bool
    ) -> list[Trade]:
        """:meth:`trade_page` on the tape: ids (or times) ``before < key < after``, newest first."""
        tape = self.tape
        hi = tape.count(now)
        if after is not None:
            hi = min(hi, tape.count(after - 1) if by_time else after)
        lo = max(0, hi - limit, -1 if before is None else before + 1)
        return self.tape_trades(inst, lo, hi)[::-1]

    def trade_json(self, inst: Instrument, t: Trade) -> dict[str, str]:
        """A ``/market/trades`` item (``side`` is the taker's)."""
        return {
            "instId": inst.inst_id,
            "side": "sell" if t.buyer_maker else "buy",
            "sz": inst.size(t.qty),
            "px": num(t.price, inst.market.price_decimals),
            "source": "0",
            "tradeId": str(t.id),
            "ts": str(t.time_ms),
        }

    def trades(self, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, str]]:
        """The truth: trades with ``start_ms <= ts < end_ms`` up to now, oldest first."""
        inst = self.instrument(symbol)
        now = self.clock.now_ms()
        if self.tape_on():
            tape = self.tape
            lo, hi = tape.count(start_ms - 1), tape.count(min(end_ms - 1, now))
            return [self.trade_json(inst, t) for t in self.tape_trades(inst, lo, hi)]
        out = []
        for minute in range(start_ms // MINUTE_MS, (min(end_ms, now + 1) - 1) // MINUTE_MS + 1):
            for t in inst.market.minute_trades(minute):
                if start_ms <= t.time_ms < end_ms and t.time_ms <= now:
                    out.append(self.trade_json(inst, t))
        return out

    # -- funding and open interest -------------------------------------------------------------

    def perp(self, inst: Instrument) -> PerpMarket:
        """``inst``'s perpetual model; UsageError for a spot instrument."""
        if not isinstance(inst.market, PerpMarket):
            raise UsageError(f"{inst.inst_id} is not a swap")
        return inst.market

    def funding(self, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, str]]:
        """The truth: funding settlements in ``[start_ms, end_ms]`` up to now, oldest first."""
        inst = self.instrument(symbol)
        perp = self.perp(inst)
        return self.funding_json(inst, perp.funding_times(start_ms, end_ms, self.clock.now_ms()))

    def funding_json(self, inst: Instrument, times: list[int]) -> list[dict[str, str]]:
        rates = self.perp(inst).funding_rates(times)
        return [
            {
                "formulaType": "withRate",
                "fundingRate": num(r, 8),
                "fundingTime": str(t),
                "instId": inst.inst_id,
                "instType": "SWAP",
                "method": "current_period",
                "realizedRate": num(r, 8),
            }
            for t, r in zip(times, rates, strict=True)
        ]

    def funding_page(
        self, inst: Instrument, after: int | None, before: int | None, limit: int
    ) -> list[dict[str, str]]:
        """Settlements newest first: the newest ``limit`` with ``before < fundingTime < after``."""
        perp = self.perp(inst)
        now = self.clock.now_ms()
        hi = now if after is None else after - 1
        lo = 0 if before is None else before + 1
        times = perp.funding_times(lo, hi, now)[-limit:]
        return list(reversed(self.funding_json(inst, times)))

    def open_interest(self, inst: Instrument) -> dict[str, str]:
        """The ``/api/v5/public/open-interest`` item of a swap, now."""
        perp = self.perp(inst)
        now = self.clock.now_ms()
        oi = perp.open_interest_now(now)
        price = perp.last_price(now) or 0
        m = perp
        return {
            "instType": "SWAP",
            "instId": inst.inst_id,
            "oi": str(oi),
            "oiCcy": num(oi, m.qty_decimals),
            "oiUsd": num(oi * price, m.qty_decimals + m.price_decimals),
            "ts": str(now),
        }

    def open_interest_page(
        self, inst: Instrument, period_ms: int, begin: int | None, end: int | None, limit: int
    ) -> list[list[str]]:
        """``rubik/stat/contracts/open-interest-history`` rows newest first, ``begin < ts < end``:
        ``[ts, oi (contracts), oiCcy (base), oiUsd]`` at multiples of ``period_ms`` (UTC)."""
        perp = self.perp(inst)
        now = self.clock.now_ms()
        hi = now if end is None else min(end - 1, now)
        lo = max(perp.listing_ms, 0 if begin is None else begin + 1)
        first = -(-lo // period_ms) * period_ms
        last = hi - hi % period_ms
        if last < first:
            return []
        times = list(range(max(first, last - (limit - 1) * period_ms), last + 1, period_ms))
        arr = np.array(times, dtype=np.int64)
        ois = perp.open_interest(arr - arr % OI_STEP_MS).tolist()
        marks = perp.mark_at(times)
        qd, pd = perp.qty_decimals, perp.price_decimals
        rows = [
            [str(t), str(oi), num(oi, qd), num(oi * mark, qd + pd)]
            for t, oi, mark in zip(times, ois, marks, strict=True)
        ]
        rows.reverse()
        return rows
