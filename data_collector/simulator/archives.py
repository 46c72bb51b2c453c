"""The data.binance.vision archive tree of the simulator: spot kline and aggTrades zips + ``.CHECKSUM``.

Paths as on the real site: ``/data/spot/{daily,monthly}/klines/<SYM>/<tf>/<SYM>-<tf>-<date>.zip``
and ``/data/spot/{daily,monthly}/aggTrades/<SYM>/<SYM>-aggTrades-<date>.zip``, each with its
``<...>.zip.CHECKSUM`` (``sha256sum`` output: ``<hex>  <file name>``). ``1M`` is spelled
``1mo`` there. Each zip holds one CSV without a header row (spot), whose values are the REST
klines' exactly: the same model, the same number strings. As on the real site, spot timestamps
(open and close time) are in microseconds from 2025-01-01 on and in milliseconds before.

Availability: a daily file exists once its day has ended plus ``daily_lag_ms``, a monthly one once
its month has ended plus ``monthly_lag_ms``; a file with no candle (before the listing, a day
inside a maintenance gap) does not exist (404).

Faults (off by default, see :meth:`ArchiveServer.inject`): a wrong CHECKSUM, a corrupt zip, a
truncated transfer, a missing CHECKSUM, a 404 for a file, a 5xx, a slow transfer.

The futures tree ``/data/futures/um/...`` (:mod:`~data_collector.simulator.um_archives`) has the
same layout and rules for ``klines``, ``markPriceKlines``, ``indexPriceKlines``,
``premiumIndexKlines`` and ``aggTrades``, with a header row and millisecond timestamps.

Zips are built deterministically (fixed member time), so a cache directory
(:attr:`ArchiveSettings.cache_dir`) keeps them across runs: benchmarks measure the collector.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import io
import re
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from aiohttp import web

from data_collector.errors import UsageError
from data_collector.markets import DAY_MS, TIMEFRAME_MS
from data_collector.simulator.formats import decimal8, kline_matrix
from data_collector.simulator.um_archives import UM_KLINE_KINDS, um_agg_trades_csv, um_kline_csv

if TYPE_CHECKING:
    from data_collector.simulator.market import SymbolMarket
    from data_collector.simulator.server import SimulatedExchange

#: Spot archive timestamps are microseconds from here on (2025-01-01 00:00 UTC).
MICROS_FROM_MS = 1_735_689_600_000
#: Kline intervals the archive publishes, as their path names.
ARCHIVE_INTERVALS = {**{tf: tf for tf in TIMEFRAME_MS}, "1M": "1mo"}
_PATH_TF = {v: k for k, v in ARCHIVE_INTERVALS.items()}
_NAME = re.compile(
    r"^(?P<sym>[A-Z0-9]+)-(?P<tf>[0-9a-zA-Z]+)-(?P<date>\d{4}-\d{2}(-\d{2})?)\.zip(?P<check>\.CHECKSUM)?$"
)
_CSV_ROW = "%d,%d.%08d,%d.%08d,%d.%08d,%d.%08d,%d.%08d,%d,%d.%08d,%d,%d.%08d,%d.%08d,0"
#: A member's date in the zip: fixed, so the same candles always give the same bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)

FaultKind = Literal["bad_checksum", "corrupt", "truncated", "no_checksum", "404", "5xx", "slow"]
FAULT_KINDS: tuple[str, ...] = ("bad_checksum", "corrupt", "truncated", "no_checksum", "404", "5xx", "slow")
#: A fault no checksum finds: one value of the file differs from REST, and its CHECKSUM matches the
#: changed zip (what a cross-check with REST is for). Not in :data:`FAULT_KINDS`: nothing falls
#: back unless the collector cross-checks.
WRONG_VALUE = "wrong_value"
#: Faults that hit the ``.CHECKSUM`` file; the others hit the zip.
_CHECKSUM_FAULTS = ("bad_checksum", "no_checksum")


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """How the simulator's archive tree behaves.

    Args:
        cache_dir: where built zips are kept (``None``: built on every request).
        daily_lag_ms: a day's file appears this long after the day ended.
        monthly_lag_ms: a month's file appears this long after the month ended.
        slow_s: how long a ``slow`` fault holds an answer.
    """

    cache_dir: Path | None = None
    daily_lag_ms: int = 6 * 3600 * 1000
    monthly_lag_ms: int = 3 * DAY_MS
    slow_s: float = 2.0


@dataclass(slots=True)
class _Fault:
    kind: str
    match: str
    times: int | None


def period_range(date: str) -> tuple[Literal["daily", "monthly"], int, int]:
    """``YYYY-MM-DD`` or ``YYYY-MM`` -> (period, start_ms, end_ms)."""
    parts = [int(p) for p in date.split("-")]
    if len(parts) == 3:
        start = calendar.timegm((parts[0], parts[1], parts[2], 0, 0, 0)) * 1000
        return "daily", start, start + DAY_MS
    year, month = parts
    start = calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
    end = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0)) * 1000
    return "monthly", start, end


def kline_csv(market: SymbolMarket, timeframe: str, start_ms: int, end_ms: int, now_ms: int) -> bytes:
    """The archive CSV of the closed candles opening in ``[start_ms, end_ms)`` (no header row)."""
    rows = market.candles(timeframe, start_ms, end_ms, now_ms)
    if len(rows) == 0:
        return b""
    matrix = np.array(kline_matrix(rows, market, timeframe), dtype=np.int64)
    micros = matrix[:, 0] >= MICROS_FROM_MS
    matrix[micros, 0] *= 1000
    # closeTime is column 11 of the integer matrix (after 5 whole/fraction pairs).
    matrix[micros, 11] = matrix[micros, 11] * 1000 + 999
    t = _CSV_ROW
    return ("\n".join([t % tuple(r) for r in matrix.tolist()]) + "\n").encode()


def agg_trades_csv(market: SymbolMarket, start_ms: int, end_ms: int) -> bytes:
    """The archive CSV of the aggregate trades with ``start_ms <= T < end_ms`` (no header row).

    Columns as on the real site: id, price, quantity, first and last trade id, time, buyer was
    maker, best price match (``True``/``False``); time in µs from 2025-01-01.
    """
    pd, qd = market.price_decimals, market.qty_decimals
    lines = []
    for minute in range(start_ms // 60_000, end_ms // 60_000):
        for t in market.minute_trades(minute):
            ts = t.time_ms * 1000 if t.time_ms >= MICROS_FROM_MS else t.time_ms
            lines.append(
                f"{t.id},{decimal8(t.price, pd)},{decimal8(t.qty, qd)},{t.id},{t.id},{ts},{t.buyer_maker},True"
            )
    return ("\n".join(lines) + "\n").encode() if lines else b""


def zip_bytes(member: str, payload: bytes) -> bytes:
    """A deterministic deflated zip holding ``payload`` as ``member``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, payload)
    return out.getvalue()


def wrong_value(zipped: bytes) -> bytes:
    """``zipped`` again with one value changed: the middle row's fifth field (a kline's close, a
    trade's first trade id) gets one more last digit."""
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        (name,) = zf.namelist()
        lines = zf.read(name).split(b"\n")
    row = lines[len(lines) // 2].split(b",")
    row[4] = row[4][:-1] + (b"0" if row[4].endswith(b"9") else bytes([row[4][-1] + 1]))
    lines[len(lines) // 2] = b",".join(row)
    return zip_bytes(name, b"\n".join(lines))


def checksum_text(zipped: bytes, name: str) -> bytes:
    """The ``.CHECKSUM`` file of ``name``: ``sha256sum`` output."""
    return f"{hashlib.sha256(zipped).hexdigest()}  {name}\n".encode()


class ArchiveServer:
    """The ``/data/spot/...`` routes of one simulator; state lives here, the model on the simulator."""

    def __init__(self, sim: SimulatedExchange, settings: ArchiveSettings | None = None) -> None:
        self.sim = sim
        self.settings = settings or ArchiveSettings()
        self._faults: list[_Fault] = []
        #: Requests (``zip_requests``, ``checksum_requests``), files served (``zip``, ``checksum``,
        #: ``bytes``), 404s, and faults fired by kind (``fault_<kind>``).
        self.stats: Counter[str] = Counter()
        self.build_s = 0.0

    def add_routes(self, app: web.Application) -> None:
        """Register the archive paths."""
        app.router.add_get("/data/spot/{period}/klines/{sym}/{tf}/{name}", self._klines)
        app.router.add_get("/data/spot/{period}/aggTrades/{sym}/{name}", self._agg_trades)
        app.router.add_get("/data/futures/um/{period}/aggTrades/{sym}/{name}", self._um_agg_trades)
        app.router.add_get("/data/futures/um/{period}/{kind}/{sym}/{tf}/{name}", self._um_klines)

    def inject(self, kind: str, match: str = "", times: int | None = None) -> None:
        """Make files whose path contains ``match`` fail with ``kind`` (:data:`FAULT_KINDS`).

        ``times``: how many answers the fault spoils (``None``: all of them).
        """
        if kind not in (*FAULT_KINDS, WRONG_VALUE):
            raise UsageError(f"unknown archive fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        self._faults.append(_Fault(kind, match, times))

    def clear_faults(self) -> None:
        """Serve every file correctly again."""
        self._faults.clear()

    def _fault(self, path: str, checksum: bool) -> str | None:
        for f in self._faults:
            if f.kind == WRONG_VALUE:
                continue
            if f.match in path and (f.kind in _CHECKSUM_FAULTS) == checksum and f.times != 0:
                if f.times is not None:
                    f.times -= 1
                self.stats[f"fault_{f.kind}"] += 1
                return f.kind
        return None

    def available(self, period: str, end_ms: int, now_ms: int) -> bool:
        """Whether a file ending at ``end_ms`` is published at ``now_ms``."""
        lag = self.settings.daily_lag_ms if period == "daily" else self.settings.monthly_lag_ms
        return now_ms >= end_ms + lag

    def url(self, market: SymbolMarket, timeframe: str, period: str, date: str, kind: str = "") -> str:
        """The path of one zip (append ``.CHECKSUM`` for its checksum); ``aggTrades`` for trades.

        ``kind``: empty for the spot tree, else the futures tree's directory (``klines``,
        ``markPriceKlines``, ..., ``aggTrades``).
        """
        sym = market.exchange_symbol
        root = "/data/futures/um" if kind else "/data/spot"
        if timeframe == "aggTrades":
            return f"{root}/{period}/aggTrades/{sym}/{sym}-aggTrades-{date}.zip"
        tf = ARCHIVE_INTERVALS[timeframe]
        return f"{root}/{period}/{kind or 'klines'}/{sym}/{tf}/{sym}-{tf}-{date}.zip"

    def build(self, market: SymbolMarket, timeframe: str, date: str, kind: str = "") -> bytes | None:
        """The zip of one file (from the disk cache when there), or None when it has no row.

        ``timeframe`` is a kline interval, or ``aggTrades``; ``kind`` as for :meth:`url`.
        """
        _, start, end = period_range(date)
        name = f"{market.exchange_symbol}-{ARCHIVE_INTERVALS.get(timeframe, timeframe)}-{date}"
        cached = self._cache_path(market, name, kind)
        if cached is not None and cached.exists():
            data = cached.read_bytes()
            return data or None
        started = time.perf_counter()
        now = self.sim.clock.now_ms()
        if kind and timeframe == "aggTrades":
            csv = um_agg_trades_csv(market, start, end)
        elif kind:
            csv = um_kline_csv(self.sim.usdm, market, kind, timeframe, start, end, now)
        elif timeframe == "aggTrades":
            csv = agg_trades_csv(market, start, end)
        else:
            csv = kline_csv(market, timeframe, start, end, now)
        data = zip_bytes(name + ".csv", csv) if csv else b""
        self.build_s += time.perf_counter() - started
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(cached)
        return data or None

    def _cache_path(self, market: SymbolMarket, name: str, kind: str = "") -> Path | None:
        root = self.settings.cache_dir
        if root is None:
            return None
        # The file's content depends on the seed, the listing, the gaps and the delisting.
        world = f"{market.seed}|{market.listing_ms}|{market.gaps()}|{market.delisted_ms}"
        key = hashlib.sha256(world.encode()).hexdigest()[:16]
        # Futures files of each kind under their own directory (their names are spot's).
        return Path(root) / (f"um-{kind}" if kind else "") / market.exchange_symbol / key / (name + ".zip")

    async def _klines(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _PATH_TF.get(request.match_info["tf"]), request.match_info["tf"])

    async def _agg_trades(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "aggTrades", "aggTrades")

    async def _um_klines(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        tf = _PATH_TF.get(request.match_info["tf"]) if kind in UM_KLINE_KINDS else None
        return await self._serve(request, None if tf == "1s" else tf, request.match_info["tf"], kind)

    async def _um_agg_trades(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "aggTrades", "aggTrades", "aggTrades")

    async def _serve(
        self, request: web.Request, tf: str | None, path_tf: str, kind: str = ""
    ) -> web.StreamResponse:
        info = request.match_info
        m = _NAME.match(info["name"])
        markets = (
            self.sim.market_by_id
            if not kind
            else {}
            if self.sim.futures is None
            else self.sim.futures.market_by_id
        )
        market = markets.get(info["sym"])
        if m is None or tf is None or market is None or m["sym"] != info["sym"] or m["tf"] != path_tf:
            return self._not_found()
        period, start, end = period_range(m["date"])
        if period != info["period"] or not self.available(period, end, self.sim.clock.now_ms()):
            return self._not_found()
        checksum = m["check"] is not None
        # Counted when asked for, so an answer still pending when its client dies counts at once.
        self.stats["checksum_requests" if checksum else "zip_requests"] += 1
        fault = self._fault(request.path, checksum)
        if fault == "slow":
            await asyncio.sleep(self.settings.slow_s)
        elif fault == "5xx":
            return web.Response(status=503, text="Service Unavailable")
        elif fault in ("404", "no_checksum"):
            return self._not_found()
        data = await asyncio.to_thread(self.build, market, tf, m["date"], kind)
        if data is None:
            return self._not_found()
        if any(f.kind == WRONG_VALUE and f.match in request.path for f in self._faults):
            self.stats[f"fault_{WRONG_VALUE}"] += 1
            data = wrong_value(data)
        zip_name = info["name"].removesuffix(".CHECKSUM")
        if checksum:
            self.stats["checksum"] += 1
            body = checksum_text(data + (b"x" if fault == "bad_checksum" else b""), zip_name)
            return web.Response(body=body, content_type="text/plain")
        self.stats["zip"] += 1
        self.stats["bytes"] += len(data)
        if fault == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
        if fault == "truncated":
            resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()
            return resp
        return web.Response(body=data, content_type="application/zip")

    def _not_found(self) -> web.Response:
        self.stats["404"] += 1
        body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code></Error>'
        return web.Response(status=404, body=body, content_type="application/xml")
