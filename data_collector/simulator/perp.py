"""A simulated USDⓈ-M perpetual: last, index, mark and premium prices, funding and open interest.

Model (every number is a pure function of ``(seed, symbol, position)``, as in :mod:`.market`):

* The **index** at a minute boundary is the spot walk of the base: ``rint(p0 * exp(W(m)))``,
  the very open and close the spot ``BASE/QUOTE`` market of the same seed serves.
* The perpetual's **last** price walk is ``W(m) + b(m)`` with a small **basis** ``b`` (value
  noise of three octaves, within ±0.2 %, leaning to contango). Its trades, volumes and aggTrades
  come from :class:`SymbolMarket` keyed on ``BASE/QUOTE:SETTLE``, so they reproduce its 1m
  candles exactly, as spot's do.
* The **mark** is ``index * (1 + b_slow)``, where ``b_slow`` is the basis without its fastest
  octave: Binance's ``index + moving average of the basis`` leg of its median, so the mark sits
  between index and last and moves more smoothly than the last price.
* The **premium index** of a moment is ``(last - index) / index`` in 1e-8 units; a 1m premium
  candle opens and closes on the premium at its minute's boundaries.
* **Funding** is settled every 8 h (00:00, 08:00, 16:00 UTC): the time-weighted average ``P`` of
  the 1m premium closes of the 8 h before (weights 1..n, as Binance documents), plus
  ``clamp(0.01 % - P, -0.05 %, +0.05 %)``, capped at ±2 %.
* **Open interest** is a level sampled every 5 minutes, ``oi0 * exp(noise(j))`` with slow value
  noise; between samples it moves linearly.
* **Liquidations** (``forceOrder``): at most one a second, in about one second in four, near the
  last price.
"""

from __future__ import annotations

from typing import Unpack

import numpy as np

from data_collector.markets import HOUR_MS, MINUTE_MS
from data_collector.simulator.market import MarketOptions, Partial, Rows, SymbolMarket, _empty_rows
from data_collector.simulator.rng import F64, I64, exp_array, hash_at, stream_key, uniform_array

#: Funding is settled every 8 hours.
FUNDING_MS = 8 * HOUR_MS
#: Binance's interest rate per funding interval (0.03 % a day).
INTEREST_E8 = 10_000
#: The clamp around the interest rate and the cap of the rate, in 1e-8.
CLAMP_E8 = 50_000
CAP_E8 = 2_000_000
#: Open interest is sampled every 5 minutes.
OI_STEP_MS = 5 * MINUTE_MS
#: Price kinds served as klines beside the last price.
PRICE_KINDS = ("mark", "index", "premium")
_BASIS_LEVELS = ((64, 0.0003), (512, 0.0006), (4096, 0.0012))
_BASIS_DRIFT = 0.0001
_OI_LEVELS = ((12, 0.01), (96, 0.03), (864, 0.06), (6048, 0.1))


def settle_of(symbol: str) -> tuple[str, str]:
    """``BTC/USDT:USDT`` or ``BTC/USDT`` -> (``BTC/USDT``, ``BTC/USDT:USDT``)."""
    spot, _, settle = symbol.upper().partition(":")
    quote = spot.partition("/")[2]
    return spot, f"{spot}:{settle or quote}"


def _value_noise(key: int, idx: I64, levels: tuple[tuple[int, float], ...]) -> F64:
    """Sum of linearly interpolated uniform knots in [-1, 1] at each level's spacing."""
    out = np.zeros(idx.shape[0], dtype=np.float64)
    for i, (span, amp) in enumerate(levels):
        k = stream_key(key, i)
        j = idx // span
        frac = (idx - j * span).astype(np.float64) / span
        a = 2.0 * uniform_array(k, j) - 1.0
        b = 2.0 * uniform_array(k, j + 1) - 1.0
        out += amp * (a + (b - a) * frac)
    return out


def funding_rate(premiums_e8: I64) -> int:
    """Binance's rate from the 1m premiums of an interval (1e-8): weighted mean plus clamped interest."""
    if len(premiums_e8) == 0:
        return INTEREST_E8
    w = np.arange(1, len(premiums_e8) + 1, dtype=np.int64)
    num, den = int((premiums_e8 * w).sum()), int(w.sum())
    avg = (2 * num + den) // (2 * den)
    rate = avg + min(CLAMP_E8, max(-CLAMP_E8, INTEREST_E8 - avg))
    return min(CAP_E8, max(-CAP_E8, rate))


class PerpMarket(SymbolMarket):
    """The last-price side of a perpetual, plus its index, mark, premium, funding and OI.

    Args:
        symbol: ``BASE/QUOTE`` or ``BASE/QUOTE:SETTLE``.
        seed: the world seed (the same as the spot market's, for the same index).
        listing_ms, gaps, day_cache, delisted_ms: as for :class:`SymbolMarket`.
    """

    def __init__(self, symbol: str, seed: int, **options: Unpack[MarketOptions]) -> None:
        spot, unified = settle_of(symbol)
        super().__init__(spot, seed, key_name=unified, **options)
        #: ``BTC/USDT:USDT``.
        self.unified = unified
        self.qty_units *= 3.0  # perpetuals trade more than their spot market
        self._k_basis = stream_key(seed, unified, "basis")
        self._k_oi = stream_key(seed, unified, "open-interest")
        self._k_liq = stream_key(seed, unified, "liquidation")
        oi_notional = 5e7 * (1.0 + 20.0 * uniform_array(self._k_oi, np.array([0]))[0])
        self._oi0 = oi_notional / self.price0 * 10**self.qty_decimals
        self.series = {kind: DerivedSeries(self, kind) for kind in PRICE_KINDS}
        self._estimate: tuple[int, int] | None = None

    # -- prices ------------------------------------------------------------------------------

    def basis(self, m: I64, slow: bool = False) -> F64:
        """Log basis of the last price over the index at minute boundaries ``m``."""
        levels = _BASIS_LEVELS[1:] if slow else _BASIS_LEVELS
        return _BASIS_DRIFT + _value_noise(self._k_basis, m, levels)

    def _walk(self, m_lo: int, m_hi: int) -> F64:
        base = super()._walk(m_lo, m_hi)
        return base + self.basis(np.arange(m_lo, m_hi + 1, dtype=np.int64))

    def boundary_prices(self, m_lo: int, m_hi: int) -> tuple[I64, I64, I64]:
        """(last, index, mark) in ticks at minute boundaries ``m_lo..m_hi`` inclusive."""
        m = np.arange(m_lo, m_hi + 1, dtype=np.int64)
        w = SymbolMarket._walk(self, m_lo, m_hi)
        b = self.basis(m)
        last = np.maximum(np.rint(self._p0_ticks * exp_array(w + b)), 1.0).astype(np.int64)
        index_f = np.maximum(np.rint(self._p0_ticks * exp_array(w)), 1.0)
        mark = np.maximum(np.rint(index_f * (1.0 + self.basis(m, slow=True))), 1.0).astype(np.int64)
        return last, index_f.astype(np.int64), mark

    @staticmethod
    def premium_e8(last: I64, index: I64) -> I64:
        """``(last - index) / index`` in 1e-8 units, rounded half away from zero (exact integers)."""
        num = (last - index) * 100_000_000
        out: I64 = np.sign(num) * ((np.abs(num) * 2 + index) // (2 * index))
        return out

    def derived_rows(self, kind: str, m_lo: int, m_hi: int) -> Rows:
        """1m ``kind`` candles (mark/index/premium) of trading minutes in ``[m_lo, m_hi)``."""
        m_lo = max(m_lo, self._lm)
        if m_hi <= m_lo:
            return _empty_rows()
        m = np.arange(m_lo, m_hi, dtype=np.int64)
        _o, h, low, _c, *_ = self._minute_fields(m)
        last, index, mark = self.boundary_prices(m_lo, m_hi)
        o_l, c_l = last[:-1], last[1:]
        up = h - np.maximum(o_l, c_l)
        down = np.minimum(o_l, c_l) - low
        if kind == "premium":
            p = self.premium_e8(last, index)
            po, pc = p[:-1], p[1:]
            i_hi = np.maximum(index[:-1], index[1:]) + up // 2
            i_lo = np.minimum(index[:-1], index[1:]) - down // 2
            ph = np.maximum(np.maximum(po, pc), self.premium_e8(h, i_hi))
            pl = np.minimum(np.minimum(po, pc), self.premium_e8(low, np.maximum(i_lo, 1)))
            o, hi, lo, c = po, ph, pl, pc
        else:
            series = index if kind == "index" else mark
            o, c = series[:-1], series[1:]
            hi = np.maximum(o, c) + up // 2
            lo = np.maximum(np.minimum(o, c) - down // 2, 1)
        zero = np.zeros_like(m)
        keep = self._present(m)
        cols = (m * MINUTE_MS, o, hi, lo, c, zero, zero + 60, zero, zero, zero)
        return Rows(*(col[keep] for col in cols))

    def live_prices(self, now_ms: int) -> tuple[int, int, int] | None:
        """(last, index, mark) in ticks at ``now_ms``; None when not trading.

        Index and mark move linearly through the forming minute; the last price is the last trade.
        """
        last = self.last_price(now_ms)
        if last is None:
            return None
        minute = now_ms // MINUTE_MS
        _l, index, mark = self.boundary_prices(minute, minute + 1)
        frac = (now_ms - minute * MINUTE_MS) / MINUTE_MS
        idx = int(index[0] + (int(index[1]) - int(index[0])) * frac)
        mk = int(mark[0] + (int(mark[1]) - int(mark[0])) * frac)
        return last, idx, mk

    # -- funding -----------------------------------------------------------------------------

    def funding_times(self, start_ms: int, end_ms: int, now_ms: int) -> list[int]:
        """Funding times in ``[start_ms, end_ms]`` after the listing, up to now, while listed."""
        first = -(-max(start_ms, self.listing_ms + 1) // FUNDING_MS) * FUNDING_MS
        last = min(end_ms, now_ms)
        if self.delisted_ms is not None:
            last = min(last, self.delisted_ms)
        return list(range(first, last + 1, FUNDING_MS)) if last >= first else []

    def funding_rates(self, times: list[int]) -> list[int]:
        """The rate settled at each time (1e-8 units), from the premium of the 8 h before."""
        if not times:
            return []
        m_lo = max(times[0] // MINUTE_MS - 480, self._lm)
        m_hi = times[-1] // MINUTE_MS
        last, index, _mark = self.boundary_prices(m_lo, m_hi)
        closes = self.premium_e8(last[1:], index[1:])  # the close of minute m_lo + i
        present = self._present(np.arange(m_lo, m_hi, dtype=np.int64))
        out = []
        for t in times:
            a = max(t // MINUTE_MS - 480, m_lo) - m_lo
            b = t // MINUTE_MS - m_lo
            out.append(funding_rate(closes[a:b][present[a:b]]))
        return out

    def estimated_rate(self, now_ms: int) -> int:
        """The rate the next settlement would pay on the premium so far (kept for the minute)."""
        minute = now_ms // MINUTE_MS
        hit = self._estimate
        if hit is not None and hit[0] == minute:
            return hit[1]
        start = minute - minute % (FUNDING_MS // MINUTE_MS)
        rate = INTEREST_E8
        if minute > start and minute > self._lm:
            last, index, _mark = self.boundary_prices(max(start, self._lm), minute)
            rate = funding_rate(self.premium_e8(last[1:], index[1:]))
        self._estimate = (minute, rate)
        return rate

    def mark_at(self, times: list[int]) -> list[int]:
        """The mark (ticks) at each minute-aligned time."""
        return [int(self.boundary_prices(t // MINUTE_MS, t // MINUTE_MS)[2][0]) for t in times]

    # -- open interest -----------------------------------------------------------------------

    def open_interest(self, times_ms: I64) -> I64:
        """Open interest (lot steps) at 5-minute-aligned times."""
        j = times_ms // OI_STEP_MS
        noise = _value_noise(self._k_oi, j, _OI_LEVELS)
        out: I64 = np.maximum(np.rint(self._oi0 * exp_array(noise)), 1.0).astype(np.int64)
        return out

    def open_interest_now(self, now_ms: int) -> int:
        """Open interest at ``now_ms``: linear between the 5-minute samples."""
        t0 = now_ms - now_ms % OI_STEP_MS
        a, b = (int(x) for x in self.open_interest(np.array([t0, t0 + OI_STEP_MS], dtype=np.int64)))
        return a + (b - a) * (now_ms - t0) // OI_STEP_MS

    # -- liquidations ------------------------------------------------------------------------

    def liquidation(self, second: int) -> tuple[int, bool, int, int] | None:
        """The forced order of one second: (time ms, is sell, price ticks, qty lots), or None."""
        h = hash_at(self._k_liq, second)
        if h & 3:
            return None
        time_ms = second * 1000 + (h >> 8) % 1000
        price = self.last_price(time_ms)
        if price is None:
            return None
        sell = bool((h >> 2) & 1)
        offset = price * ((h >> 24) % 50) // 10_000
        qty = max(1, int(self.qty_units * (0.2 + ((h >> 32) % 1000) / 100.0)))
        return time_ms, sell, price - offset if sell else price + offset, qty


class DerivedSeries(SymbolMarket):
    """A price kind of a perpetual (mark, index or premium) served through :class:`SymbolMarket`'s
    candle machinery: only its 1m rows and its forming minute differ; aggregation, the day
    cache and the live-range cache are inherited.
    """

    def __init__(self, perp: PerpMarket, kind: str) -> None:
        super().__init__(
            perp.symbol,
            perp.seed,
            perp.listing_ms,
            [(s * MINUTE_MS, e * MINUTE_MS) for s, e in perp._gaps_min if e * MINUTE_MS < 1 << 40],
            perp.day_cache,
            key_name=f"{perp.unified}#{kind}",
            delisted_ms=perp.delisted_ms,
        )
        self.perp = perp
        self.kind = kind
        if kind == "premium":
            self.price_decimals = 8

    def minute_rows(self, m_lo: int, m_hi: int) -> Rows:
        return self.perp.derived_rows(self.kind, m_lo, m_hi)

    def partial_minute(self, now_ms: int) -> Partial | None:
        minute = now_ms // MINUTE_MS
        if not self.is_trading(minute):
            return None
        live = self.perp.live_prices(now_ms)
        if live is None:
            return None
        last, index, mark = live
        if self.kind == "premium":
            cur = int(self.perp.premium_e8(np.array([last]), np.array([index]))[0])
        else:
            cur = index if self.kind == "index" else mark
        o = int(self.perp.derived_rows(self.kind, minute, minute + 1).o[0])
        # The count column holds the seconds sampled so far, as Binance's "number of basic data".
        n = 1 + (now_ms - minute * MINUTE_MS) // 1000
        return Partial(minute, o, max(o, cur), min(o, cur), cur, 0, n, 0, 0, 0)

    def second_rows(self, start_ms: int, end_ms: int, now_ms: int) -> Rows:
        return _empty_rows()
