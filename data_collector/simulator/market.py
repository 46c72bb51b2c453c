"""The simulated market: deterministic, lazily computed candles and trades for one symbol.

Model (every number is a pure function of ``(seed, symbol, position)``):

* The log price is a sum of value-noise octaves (midpoint displacement, ``2**22`` minutes on top),
  so a minute's price costs ``O(octaves)`` however far from the listing it is.
* A minute ``m`` opens at ``P(m)`` and closes at ``P(m + 1)``, rounded to the tick; its high and low
  stretch beyond by a random amount. Prices are integer ticks, quantities integer lot steps, quote
  volumes integer 1e-8 units, so every aggregate is exact.
* The trade count of minute ``m`` is ``4 + floor(F(m + 1)) - floor(F(m))`` with ``F`` increasing
  and cheap, so the id of a minute's first trade is a closed form too (minus the gaps before it):
  aggregate trade ids run without holes from the listing on.
* Each minute's trades are drawn from its candle: the first is the open, the last the close, two
  of them hit the high and the low, the quantities add up to the volume. The forming candle is
  the aggregate of the trades up to now, so it closes into exactly the candle served afterwards.

Long because candles, trades, listing dates and maintenance gaps all derive from the same
seeded positions, and the formulas must agree; they stay side by side.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple, TypedDict

import numpy as np

from data_collector.markets import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    TIMEFRAME_MS,
    WEEK_OFFSET_MS,
    candle_open_ms,
    exchange_symbol,
    next_open_ms,
    normalize_symbol,
)
from data_collector.simulator.rng import (
    F64,
    I64,
    exp_array,
    hash_array,
    stream_key,
    uniform_array,
)

#: Octaves of the price walk: the coarsest spans 2**22 minutes (about 8 years).
OCTAVES = 23
#: Minute fields of an aggregated row, in this order (all int64).
FIELDS = ("open_ms", "o", "h", "l", "c", "v", "n", "q", "tb", "tbq")
_KNOWN_PRICES = {"BTC": 40000.0, "ETH": 2500.0, "SOL": 100.0, "BNB": 300.0, "XRP": 0.5, "DOGE": 0.1}
_YEAR_MIN = 365 * 24 * 60
#: The end of a delisting "gap": a minute index far beyond any clock (year ~21,000).
_NEVER_MIN = 1 << 33


@dataclass(frozen=True, slots=True)
class Rows:
    """Aggregated candles as parallel int64 arrays (prices in ticks, volumes in lot steps).

    ``len()`` is the number of candles; iterating yields the columns in :data:`FIELDS` order.
    """

    open_ms: I64
    o: I64
    h: I64
    l: I64  # noqa: E741
    c: I64
    v: I64
    n: I64
    q: I64
    tb: I64
    tbq: I64

    def __len__(self) -> int:
        return int(self.open_ms.shape[0])

    def __iter__(self) -> Iterator[I64]:
        return iter((self.open_ms, self.o, self.h, self.l, self.c, self.v, self.n, self.q, self.tb, self.tbq))


def _empty_rows() -> Rows:
    z = np.zeros(0, dtype=np.int64)
    return Rows(z, z, z, z, z, z, z, z, z, z)


@dataclass(frozen=True)
class Trade:
    """One aggregate trade (one fill per aggregate, so ``f == l == id``)."""

    id: int
    price: int
    qty: int
    time_ms: int
    buyer_maker: bool


@dataclass(frozen=True, slots=True)
class MinuteTape:
    """One minute's trades with running aggregates, so "the minute up to t" is a bisect.

    ``run_*[j]`` aggregates trades ``0..j`` (inclusive); ``times`` are ascending.
    """

    minute: int
    trades: list[Trade]
    times: list[int]
    o: int
    v: int
    q: int
    run_hi: list[int]
    run_lo: list[int]
    run_v: list[int]
    run_tb: list[int]

    def done(self, now_ms: int) -> int:
        """How many of the minute's trades have ``time_ms <= now_ms``."""
        return bisect_right(self.times, now_ms)


_NO_TAPE = MinuteTape(-1, [], [], 0, 0, 0, [], [], [], [])


class Partial(NamedTuple):
    """The forming minute: the aggregate of its trades up to now."""

    minute: int
    o: int
    h: int
    l: int  # noqa: E741
    c: int
    v: int
    n: int
    q: int
    tb: int
    tbq: int


def _tri(x: F64) -> F64:
    """Triangle wave in [0, 1] with period 1 (only exact float ops)."""
    return np.abs(2.0 * (x - np.floor(x + 0.5)))


def _group_reduce(rows: Rows, keys: I64) -> Rows:
    """Aggregate consecutive rows sharing a key: first open, max high, min low, last close, sums."""
    if len(rows) == 0:
        return rows
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    ends = np.concatenate((starts[1:], [len(keys)])) - 1
    return Rows(
        keys[starts],
        rows.o[starts],
        np.maximum.reduceat(rows.h, starts),
        np.minimum.reduceat(rows.l, starts),
        rows.c[ends],
        np.add.reduceat(rows.v, starts),
        np.add.reduceat(rows.n, starts),
        np.add.reduceat(rows.q, starts),
        np.add.reduceat(rows.tb, starts),
        np.add.reduceat(rows.tbq, starts),
    )


def candle_keys(open_ms: I64, timeframe: str) -> I64:
    """Vectorised :func:`data_collector.markets.candle_open_ms`."""
    if timeframe == "1M":
        months = open_ms.astype("datetime64[ms]").astype("datetime64[M]")
        return months.astype("datetime64[ms]").astype(np.int64)
    step = TIMEFRAME_MS[timeframe]
    offset = WEEK_OFFSET_MS if timeframe == "1w" else 0
    return open_ms - (open_ms - offset) % step


class DayCache:
    """A bounded LRU of per-day aggregates, keyed by (symbol, day index); about 2 KB a day."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def put(self, key: tuple[str, int], value: np.ndarray) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class MarketOptions(TypedDict, total=False):
    """The optional arguments of :class:`SymbolMarket` that a subclass passes through unchanged."""

    listing_ms: int | None
    gaps: list[tuple[int, int]] | None
    day_cache: DayCache | None
    delisted_ms: int | None


class SymbolMarket:
    """Candles and trades of one simulated symbol.

    Args:
        symbol: ``BASE/QUOTE``.
        seed: the world seed.
        listing_ms: first millisecond with trading (aligned down to the minute).
        gaps: maintenance windows ``[(start_ms, end_ms)]`` with no trades and no candles, or
            ``None`` for the seed's defaults (one multi-hour window per year).
        day_cache: LRU of daily aggregates, shareable between symbols.
        key_name: the name the minute, trade, listing and gap randomness is keyed on (default:
            the symbol). A perpetual keys them on ``BASE/QUOTE:SETTLE`` while its price walk and
            size parameters stay keyed on the symbol, so it follows the spot price of its base.
        delisted_ms: no trading from this time on (aligned up to the minute); ``None``: listed.
    """

    def __init__(
        self,
        symbol: str,
        seed: int,
        listing_ms: int | None = None,
        gaps: list[tuple[int, int]] | None = None,
        day_cache: DayCache | None = None,
        key_name: str | None = None,
        delisted_ms: int | None = None,
    ) -> None:
        self.symbol = normalize_symbol(symbol)
        #: What the non-price randomness and the day cache are keyed on.
        self.key_name = key_name or self.symbol
        self.exchange_symbol = exchange_symbol(self.symbol)
        self.base, self.quote = self.symbol.split("/")
        self.seed = seed
        k = stream_key(seed, self.symbol, "params")
        u = [((k >> (8 * i)) & 0xFF) / 256.0 for i in range(8)]
        price = _KNOWN_PRICES.get(self.base)
        if price is None:
            price = 10 ** (-1.0 + 4.0 * u[0])
        if self.quote not in ("USDT", "USDC", "FDUSD", "BUSD", "USD", "TUSD", "DAI"):
            price = price / 40000.0 if self.quote == "BTC" else price / 100.0
        self.price0 = price
        mag = int(np.floor(np.log10(price)))
        #: Decimals of the tick (price) and of the lot step (quantity).
        self.price_decimals = int(min(8, max(2, 6 - mag)))
        self.qty_decimals = int(min(8, max(0, mag + 1)))
        self.tick = 10.0**-self.price_decimals
        self.step = 10.0**-self.qty_decimals
        self.sigma = 0.0006 + 0.0006 * u[1]
        self.rate = 20.0 + 100.0 * u[2]
        notional = 200.0 + 1800.0 * u[3]
        self.qty_units = max(1.0, notional / price * 10**self.qty_decimals)
        self._p0_ticks = price * 10**self.price_decimals
        self._phase_d = u[4]
        self._phase_w = u[5]
        self._k_oct = [stream_key(seed, self.symbol, "oct", i) for i in range(OCTAVES)]
        self._amp = [min(0.25, self.sigma * 0.7 * 2 ** (i / 2)) for i in range(OCTAVES)]
        self._k_min = stream_key(seed, self.key_name, "minute")
        self._k_f = stream_key(seed, self.key_name, "count")
        self._k_tt = stream_key(seed, self.key_name, "trade-time")
        self._k_tp = stream_key(seed, self.key_name, "trade-price")
        self._k_tw = stream_key(seed, self.key_name, "trade-pick")
        self._k_tb = stream_key(seed, self.key_name, "trade-side")
        self._k_tq = stream_key(seed, self.key_name, "trade-qty")
        if listing_ms is None:
            lk = stream_key(seed, self.key_name, "listing")
            base = 1546300800000  # 2019-01-01
            listing_ms = base + (lk % (3 * 365)) * DAY_MS + ((lk >> 20) % 24) * HOUR_MS
        self.listing_ms = listing_ms - listing_ms % MINUTE_MS
        self._lm = self.listing_ms // MINUTE_MS
        self._gaps_min = self._make_gaps(gaps)
        #: First minute without trading after a delisting (None: still listed).
        self.delisted_ms: int | None = None
        if delisted_ms is not None:
            end_min = max(-(-int(delisted_ms) // MINUTE_MS), self._lm)
            self.delisted_ms = end_min * MINUTE_MS
            self._gaps_min = [(s, min(e, end_min)) for s, e in self._gaps_min if s < end_min]
            self._gaps_min.append((end_min, _NEVER_MIN))
        #: Aggregates of past days (shared between the symbols of one simulator).
        self.day_cache = day_cache if day_cache is not None else DayCache(4000)
        self._tapes: OrderedDict[int, MinuteTape] = OrderedDict()
        self._live: OrderedDict[tuple[str, int, int, int], Rows] = OrderedDict()

    # -- gaps and listing ------------------------------------------------------------------

    def _make_gaps(self, gaps: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        if gaps is None:
            gk = stream_key(self.seed, self.key_name, "gaps")
            for year, h64 in enumerate(hash_array(gk, np.arange(100, dtype=np.int64))):
                h = int(h64)
                start = self._lm + year * _YEAR_MIN + 30 * 1440 + (h % (300 * 1440))
                length = 120 + (h >> 32) % 240
                out.append((start, start + length))
        else:
            for start_ms, end_ms in gaps:
                s = max(int(start_ms) // MINUTE_MS, self._lm)
                e = -(-int(end_ms) // MINUTE_MS)
                if e > s:
                    out.append((s, e))
        out.sort()
        merged: list[tuple[int, int]] = []
        for s, e in out:
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        return merged

    def gaps(self, until_ms: int | None = None) -> list[tuple[int, int]]:
        """Maintenance windows ``[(start_ms, end_ms)]`` (end exclusive) starting before ``until_ms``."""
        return [
            (s * MINUTE_MS, e * MINUTE_MS)
            for s, e in self._gaps_min
            if (until_ms is None or s * MINUTE_MS < until_ms) and e != _NEVER_MIN
        ]

    def is_trading(self, minute: int) -> bool:
        """Whether minute index ``minute`` has trades (listed and not in a gap)."""
        if minute < self._lm:
            return False
        return not any(s <= minute < e for s, e in self._gaps_min)

    def _present(self, m: I64) -> np.ndarray:
        mask = m >= self._lm
        if len(m):
            lo, hi = int(m[0]), int(m[-1])
            for s, e in self._gaps_min:
                if s > hi:
                    break
                if e > lo:
                    mask &= (m < s) | (m >= e)
        return mask

    # -- the model ---------------------------------------------------------------------------

    def _walk(self, m_lo: int, m_hi: int) -> F64:
        """Log-price offsets at minutes ``m_lo..m_hi`` inclusive."""
        top = OCTAVES - 1
        j = np.arange(m_lo >> top, (m_hi >> top) + 2, dtype=np.int64)
        vals = self._amp[top] * (2.0 * uniform_array(self._k_oct[top], j) - 1.0)
        lo_idx = m_lo >> top
        for level in range(top - 1, -1, -1):
            i = np.arange(m_lo >> level, (m_hi >> level) + 2, dtype=np.int64)
            p = (i >> 1) - lo_idx
            odd = (i & 1) == 1
            mid = np.where(odd, (vals[p] + vals[np.minimum(p + 1, len(vals) - 1)]) * 0.5, vals[p])
            vals = mid + self._amp[level] * (2.0 * uniform_array(self._k_oct[level], i) - 1.0)
            lo_idx = m_lo >> level
        return vals[: m_hi - m_lo + 1]

    def _floor_f(self, m: I64) -> I64:
        """floor(F(m)): F increasing, so trade counts and cumulative ids are closed forms."""
        r = self.rate
        mf = m.astype(np.float64)
        f = (
            r * mf
            + 0.45 * r * uniform_array(self._k_f, m)
            + (0.15 * r * 1440.0) * _tri(mf * (1.0 / 1440.0) + self._phase_d)
            + (0.05 * r * 10080.0) * _tri(mf * (1.0 / 10080.0) + self._phase_w)
        )
        return np.floor(f).astype(np.int64)

    def _minute_fields(self, m: I64) -> tuple[Any, ...]:
        """Fields of minutes ``m`` (a contiguous ascending range), listed or not.

        Returns o, h, l, c, v, n, q, tb, tbq, k (taker-buy trade count) and the volume-split
        shape ``a`` (as float64), all per minute.
        """
        m_lo, m_hi = int(m[0]), int(m[-1])
        logp = self._walk(m_lo, m_hi + 1)
        px = np.maximum(np.rint(self._p0_ticks * exp_array(logp)), 1.0)
        o = px[:-1].astype(np.int64)
        c = px[1:].astype(np.int64)
        hbits = hash_array(self._k_min, m)
        u1 = (hbits & np.uint64(0xFFFF)).astype(np.float64) / 65536.0
        u2 = ((hbits >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.float64) / 65536.0
        u3 = ((hbits >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.float64) / 65536.0
        u4 = (hbits >> np.uint64(48)).astype(np.float64) / 65536.0
        spread = o.astype(np.float64) * self.sigma * 0.8
        h = np.maximum(o, c) + np.floor(spread * (u1 * u1 * 2.0)).astype(np.int64)
        low = np.maximum(np.minimum(o, c) - np.floor(spread * (u2 * u2 * 2.0)).astype(np.int64), 1)
        ff = self._floor_f(np.concatenate((m, [m_hi + 1])))
        n = 4 + ff[1:] - ff[:-1]
        v = np.maximum(np.floor(n.astype(np.float64) * self.qty_units * (0.3 + 1.4 * u3)).astype(np.int64), n)
        k = np.clip(np.floor(n * (0.3 + 0.4 * u4)).astype(np.int64), 1, n - 1)
        a = u1 * 1.6 - 0.8
        vp = v - n
        x = k.astype(np.float64) / n.astype(np.float64)
        tb = k + np.floor(vp.astype(np.float64) * (x + a * x * (1.0 - x))).astype(np.int64)
        typ = (o + h + low + c) // 4
        scale = 8 - self.price_decimals - self.qty_decimals
        q = v * typ * 10**scale if scale >= 0 else (v * typ) // 10 ** (-scale)
        tbq = np.floor(q.astype(np.float64) * (tb.astype(np.float64) / v.astype(np.float64))).astype(np.int64)
        return o, h, low, c, v, n, q, tb, tbq, k, a

    def minute_rows(self, m_lo: int, m_hi: int) -> Rows:
        """1m candles of listed, non-gap minutes in ``[m_lo, m_hi)`` (minute indices)."""
        m_lo = max(m_lo, self._lm)
        if m_hi <= m_lo:
            return _empty_rows()
        m = np.arange(m_lo, m_hi, dtype=np.int64)
        o, h, low, c, v, n, q, tb, tbq, _k, _a = self._minute_fields(m)
        keep = self._present(m)
        if keep.all():
            return Rows(m * MINUTE_MS, o, h, low, c, v, n, q, tb, tbq)
        return Rows(
            m[keep] * MINUTE_MS,
            o[keep],
            h[keep],
            low[keep],
            c[keep],
            v[keep],
            n[keep],
            q[keep],
            tb[keep],
            tbq[keep],
        )

    # -- trades ------------------------------------------------------------------------------

    def trades_before(self, minute: int) -> int:
        """Id of the first trade of ``minute``: the number of trades since the listing before it."""
        if minute <= self._lm:
            return 0
        pts = [self._lm, minute]
        for s, e in self._gaps_min:
            if s >= minute:
                break
            pts += [s, min(e, minute)]
        ff = self._floor_f(np.array(pts, dtype=np.int64))
        total = 4 * (minute - self._lm) + int(ff[1] - ff[0])
        for i in range(2, len(pts), 2):
            s, e = pts[i], pts[i + 1]
            total -= 4 * (e - s) + int(ff[i + 1] - ff[i])
        return total

    def minute_trades(self, minute: int) -> list[Trade]:
        """The aggregate trades of one minute (empty if not trading), in id order."""
        return self.minute_tape(minute).trades

    def minute_tape(self, minute: int) -> MinuteTape:
        """The trades of one minute with their running aggregates, computed once (a small LRU)."""
        hit = self._tapes.get(minute)
        if hit is not None:
            self._tapes.move_to_end(minute)
            return hit
        hit = self._make_tape(minute)
        self._tapes[minute] = hit
        if len(self._tapes) > 16:
            self._tapes.popitem(last=False)
        return hit

    def has_tape(self, minute: int) -> bool:
        """Whether :meth:`minute_tape` of ``minute`` is already computed (then it costs a lookup)."""
        return minute in self._tapes

    def _make_tape(self, minute: int) -> MinuteTape:
        if not self.is_trading(minute):
            return _NO_TAPE
        trades, o, v, q = self._make_minute_trades(minute)
        prices = [t.price for t in trades]
        return MinuteTape(
            minute,
            trades,
            [t.time_ms for t in trades],
            o,
            v,
            q,
            list(accumulate(prices, max)),
            list(accumulate(prices, min)),
            list(accumulate(t.qty for t in trades)),
            list(accumulate(0 if t.buyer_maker else t.qty for t in trades)),
        )

    def _make_minute_trades(self, minute: int) -> tuple[list[Trade], int, int, int]:
        """A trading minute's trades, and its candle's open, volume and quote volume."""
        m = np.array([minute], dtype=np.int64)
        o, h, low, c, v, n_, _q, tb_, _tbq, k_, _a = self._minute_fields(m)
        n, k, vol, tb = int(n_[0]), int(k_[0]), int(v[0]), int(tb_[0])
        idx = np.arange(minute * 4096, minute * 4096 + n, dtype=np.int64)
        offsets = np.sort(np.floor(uniform_array(self._k_tt, idx) * 60000.0).astype(np.int64))
        lo_t, hi_t = int(low[0]), int(h[0])
        prices = lo_t + np.floor(uniform_array(self._k_tp, idx) * (hi_t - lo_t + 1)).astype(np.int64)
        pick = hash_array(self._k_tw, np.array([minute], dtype=np.int64))[0]
        i_hi = 1 + int(pick % np.uint64(n - 2))
        i_lo = 1 + int((pick >> np.uint64(32)) % np.uint64(n - 3))
        if i_lo >= i_hi:
            i_lo += 1
        prices[i_hi] = hi_t
        prices[i_lo] = lo_t
        prices[0] = int(o[0])
        prices[-1] = int(c[0])
        # k of the n trades, at random places, were bought by the taker; their quantities add up
        # to the candle's taker-buy volume and the others' to the rest of the volume.
        buyer = np.zeros(n, dtype=bool)
        buyer[np.argsort(uniform_array(self._k_tb, idx), kind="stable")[:k]] = True
        qtys = np.empty(n, dtype=np.int64)
        weights = uniform_array(self._k_tq, idx)
        qtys[buyer] = self._split(tb, k, weights[buyer])
        qtys[~buyer] = self._split(vol - tb, n - k, weights[~buyer])
        first = self.trades_before(minute)
        t0 = minute * MINUTE_MS
        trades = [
            Trade(first + i, int(prices[i]), int(qtys[i]), t0 + int(offsets[i]), not buyer[i])
            for i in range(n)
        ]
        return trades, int(o[0]), vol, int(_q[0])

    @staticmethod
    def _split(total: int, parts: int, u: F64) -> I64:
        """``parts`` positive integers adding up to ``total`` (>= parts), weighted by ``u``."""
        if parts == 0:
            return np.zeros(0, dtype=np.int64)
        w = np.cumsum(0.1 + u[:parts] ** 4 * 8.0)
        cum = np.arange(1, parts + 1, dtype=np.int64)
        cum += np.floor(float(total - parts) * (w / w[-1])).astype(np.int64)
        cum[-1] = total
        return np.diff(cum, prepend=0)

    def second_rows(self, start_ms: int, end_ms: int, now_ms: int) -> Rows:
        """1s candles opening in ``[start_ms, end_ms)`` up to ``now_ms``, built from the trades.

        Every second of a trading minute has a candle; a second without trades repeats the last
        price with zero volume. Quote volumes are differences of the minute's cumulative quote,
        so the seconds of a minute add up to exactly its 1m candle.
        """
        start_ms = max(-(-start_ms // 1000) * 1000, self.listing_ms)
        end_ms = min(end_ms, now_ms - now_ms % 1000 + 1000)
        cols: list[list[int]] = [[] for _ in FIELDS]
        for minute in range(start_ms // MINUTE_MS, (end_ms - 1) // MINUTE_MS + 1 if end_ms > start_ms else 0):
            trades = [t for t in self.minute_trades(minute) if t.time_ms <= now_ms]
            if not self.is_trading(minute):
                continue
            m = np.array([minute], dtype=np.int64)
            o, _h, _l, _c, v, _n, q, _tb, _tbq, _k, _a = self._minute_fields(m)
            price, vol, quote = int(o[0]), float(v[0]), float(q[0])
            cum_v = cum_tb = 0
            cum_q = cum_tbq = 0
            i = 0
            t0 = minute * MINUTE_MS
            for sec in range(60):
                open_ms = t0 + sec * 1000
                if open_ms > now_ms:
                    break
                bucket = []
                while i < len(trades) and trades[i].time_ms < open_ms + 1000:
                    bucket.append(trades[i])
                    i += 1
                if not start_ms <= open_ms < end_ms:
                    for t in bucket:
                        cum_v += t.qty
                        cum_tb += 0 if t.buyer_maker else t.qty
                    if bucket:
                        price = bucket[-1].price
                    cum_q = int(np.floor(quote * (cum_v / vol)))
                    cum_tbq = int(np.floor(quote * (cum_tb / vol)))
                    continue
                if bucket:
                    prices = [t.price for t in bucket]
                    op, hi, lo, cl = prices[0], max(prices), min(prices), prices[-1]
                    price = cl
                else:
                    op = hi = lo = cl = price
                bv = sum(t.qty for t in bucket)
                btb = sum(t.qty for t in bucket if not t.buyer_maker)
                cum_v += bv
                cum_tb += btb
                new_q = int(np.floor(quote * (cum_v / vol)))
                new_tbq = int(np.floor(quote * (cum_tb / vol)))
                for col, val in zip(
                    cols,
                    (open_ms, op, hi, lo, cl, bv, len(bucket), new_q - cum_q, btb, new_tbq - cum_tbq),
                    strict=True,
                ):
                    col.append(val)
                cum_q, cum_tbq = new_q, new_tbq
        return Rows(*(np.array(c, dtype=np.int64) for c in cols))

    def partial_minute(self, now_ms: int) -> Partial | None:
        """The forming minute at ``now_ms``: aggregate of its trades with time <= now.

        A bisect into the minute's :class:`MinuteTape` (computed once per minute).
        """
        minute = now_ms // MINUTE_MS
        tape = self.minute_tape(minute)
        if tape is _NO_TAPE:
            return None
        j = tape.done(now_ms)
        if j == 0:
            p = tape.o
            return Partial(minute, p, p, p, p, 0, 0, 0, 0, 0)
        i = j - 1
        vol, qq = tape.v, tape.q
        vj, tbj = tape.run_v[i], tape.run_tb[i]
        # The same float expressions as the closed candle's, so the last trade lands on it exactly.
        qj = int(np.floor(float(qq) * (float(vj) / float(vol))))
        tbqj = int(np.floor(float(qq) * (float(tbj) / float(vol))))
        trades = tape.trades
        return Partial(
            minute, trades[0].price, tape.run_hi[i], tape.run_lo[i], trades[i].price, vj, j, qj, tbj, tbqj
        )

    def last_price(self, now_ms: int) -> int | None:
        """The price of the forming minute at ``now_ms`` (its last trade, else its open), None if not trading."""
        minute = now_ms // MINUTE_MS
        tape = self.minute_tape(minute)
        if tape is _NO_TAPE:
            return None
        j = tape.done(now_ms)
        return tape.trades[j - 1].price if j else tape.o

    # -- aggregation -------------------------------------------------------------------------

    def _days(self, d_lo: int, d_hi: int) -> list[np.ndarray]:
        """Per fully past day, its hourly rows plus the daily row last, as one (k + 1, 10) array."""
        out: list[np.ndarray | None] = [self.day_cache.get((self.key_name, d)) for d in range(d_lo, d_hi)]
        missing = [d_lo + i for i, hit in enumerate(out) if hit is None]
        # Compute contiguous runs of missing days, at most 60 days of minutes at a time.
        runs: list[tuple[int, int]] = []
        for d in missing:
            if runs and runs[-1][1] == d and d - runs[-1][0] < 60:
                runs[-1] = (runs[-1][0], d + 1)
            else:
                runs.append((d, d + 1))
        for a, b in runs:
            rows = self.minute_rows(a * 1440, b * 1440)
            hours = _group_reduce(rows, rows.open_ms - rows.open_ms % HOUR_MS)
            days = _group_reduce(hours, hours.open_ms - hours.open_ms % DAY_MS)
            h_mat = np.stack(list(hours), axis=1) if len(hours) else np.zeros((0, 10), dtype=np.int64)
            d_mat = np.stack(list(days), axis=1) if len(days) else np.zeros((0, 10), dtype=np.int64)
            h_cut = np.searchsorted(hours.open_ms, np.arange(a, b + 1, dtype=np.int64) * DAY_MS)
            d_cut = np.searchsorted(days.open_ms, np.arange(a, b + 1, dtype=np.int64) * DAY_MS)
            for d in range(a, b):
                i = d - a
                block = np.concatenate((h_mat[h_cut[i] : h_cut[i + 1]], d_mat[d_cut[i] : d_cut[i + 1]]))
                self.day_cache.put((self.key_name, d), block)
                out[d - d_lo] = block
        return [b for b in out if b is not None]

    def _closed_rows(self, unit: str, start_ms: int, end_ms: int, now_ms: int) -> Rows:
        """Sub-candles of ``unit`` (1m/1h/1d) opening in [start, end), from closed minutes only."""
        now_min = now_ms // MINUTE_MS
        if unit == "1m":
            return self.minute_rows(start_ms // MINUTE_MS, min(end_ms // MINUTE_MS, now_min))
        today = now_min // 1440
        d_lo = max(start_ms // DAY_MS, self._lm // 1440)
        d_hi = min(-(-end_ms // DAY_MS), today)
        parts: list[Rows] = []
        if d_hi > d_lo:
            blocks = [b for b in self._days(d_lo, d_hi) if len(b)]
            if blocks:
                if unit == "1h":
                    mat = np.concatenate([b[:-1] for b in blocks])
                else:
                    mat = np.stack([b[-1] for b in blocks])
                parts.append(Rows(*(np.ascontiguousarray(c) for c in mat.T)))
        if end_ms > today * DAY_MS and start_ms < now_min * MINUTE_MS:
            rows = self.minute_rows(max(today * 1440, start_ms // MINUTE_MS), now_min)
            step = HOUR_MS if unit == "1h" else DAY_MS
            parts.append(_group_reduce(rows, rows.open_ms - rows.open_ms % step))
        if not parts:
            return _empty_rows()
        out = Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))
        keep = (out.open_ms >= start_ms) & (out.open_ms < end_ms)
        return out if keep.all() else Rows(*(f[keep] for f in out))

    def _closed_candles(self, timeframe: str, unit: str, start_ms: int, end_ms: int, now_ms: int) -> Rows:
        """Candles of ``timeframe`` from closed minutes only; the live range's are kept for the minute.

        A range that holds the forming candle is asked for again and again (a WS kline every
        2 s, REST polls of the latest candles) while its closed part only changes each minute.
        The kept arrays are read-only: callers copy before they change anything.
        """
        live = end_ms > now_ms
        key = (timeframe, start_ms, end_ms, now_ms // MINUTE_MS)
        if live:
            hit = self._live.get(key)
            if hit is not None:
                return hit
        sub = self._closed_rows(unit, start_ms, end_ms, now_ms)
        rows = _group_reduce(sub, candle_keys(sub.open_ms, timeframe)) if unit != timeframe else sub
        if live:
            for col in rows:
                col.setflags(write=False)
            self._live[key] = rows
            if len(self._live) > 8:
                self._live.popitem(last=False)
        return rows

    def candles(self, timeframe: str, start_ms: int, end_ms: int, now_ms: int) -> Rows:
        """Every candle of ``timeframe`` opening in ``[start_ms, end_ms)`` that has data at ``now_ms``.

        Closed candles are exact aggregates of their 1m candles; the candle holding ``now_ms`` is
        the aggregate of the trades so far. Candles after now, before the listing or wholly in a
        gap are absent.
        """
        if timeframe == "1s":
            return self.second_rows(start_ms, end_ms, now_ms)
        first = candle_open_ms(max(start_ms, self.listing_ms), timeframe)
        if first < start_ms:
            first = next_open_ms(first, timeframe)
        start_ms = first
        end_ms = min(end_ms, now_ms + 1)
        if end_ms <= start_ms:
            return _empty_rows()
        if timeframe == "1M" or TIMEFRAME_MS[timeframe] >= DAY_MS:
            unit = "1d"
        elif TIMEFRAME_MS[timeframe] >= HOUR_MS:
            unit = "1h"
        else:
            unit = "1m"
        last_open = candle_open_ms(end_ms - 1, timeframe)
        sub_end = next_open_ms(last_open, timeframe)
        rows = self._closed_candles(timeframe, unit, start_ms, sub_end, now_ms)
        key = candle_open_ms(now_ms, timeframe)
        if not (start_ms <= key < end_ms):
            return rows
        partial = self.partial_minute(now_ms)
        if partial is None:
            return rows
        if len(rows) and int(rows.open_ms[-1]) == key:
            if partial.n == 0:
                return rows
            cols = [np.array(f) for f in rows]
            cols[2][-1] = max(int(cols[2][-1]), partial.h)
            cols[3][-1] = min(int(cols[3][-1]), partial.l)
            cols[4][-1] = partial.c
            for i, val in ((5, partial.v), (6, partial.n), (7, partial.q), (8, partial.tb), (9, partial.tbq)):
                cols[i][-1] += val
            return Rows(*cols)
        extra = Rows(
            *(
                np.array([x], dtype=np.int64)
                for x in (
                    key,
                    partial.o,
                    partial.h,
                    partial.l,
                    partial.c,
                    partial.v,
                    partial.n,
                    partial.q,
                    partial.tb,
                    partial.tbq,
                )
            )
        )
        return Rows(*(np.concatenate((a, b)) for a, b in zip(rows, extra, strict=True)))
