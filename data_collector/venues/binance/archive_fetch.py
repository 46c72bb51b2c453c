"""Download, verify and parse one archive file of klines (data.binance.vision layout).

A file is a zip holding one CSV; ``<file>.CHECKSUM`` holds its sha256. Nothing of a file is
returned unless its bytes match that checksum (unless ``verify`` is off) and the zip opens with a
good CRC. A failure is an :class:`ArchiveFailure` with a short reason the report shows.

Parsing: pyarrow's CSV reader, single-threaded (files are parsed side by side already), the six
used columns straight to numpy. Measured on a month of 1m candles (44,640 rows, 6.5 MB, best of
5): ``numpy.loadtxt`` of the same columns 0.085 s, pyarrow 0.035 s; parsing is most of the
collector's own work per archive row, so the faster reader is worth its dependency.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Protocol, TypeVar, cast

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from data_collector.storage.base import Candle
from data_collector.storage.candle_columns import CandleColumns
from data_collector.venues.binance.archive_plan import ArchiveFile

_T = TypeVar("_T")
#: Archive timeframes are named as in the API, except ``1M`` (``1mo`` for case-blind file systems).
_PATH_TF = {"1M": "1mo"}
_COLUMNS = [f"c{i}" for i in range(12)]
_READ = pa_csv.ReadOptions(column_names=_COLUMNS, use_threads=False)
_READ_AFTER_HEADER = pa_csv.ReadOptions(column_names=_COLUMNS, use_threads=False, skip_rows=1)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError)
_CONVERT = pa_csv.ConvertOptions(
    include_columns=_COLUMNS[:6],
    column_types={"c0": pa.int64(), **{name: pa.float64() for name in _COLUMNS[1:6]}},
)
#: A timestamp above this is in microseconds (spot files from 2025-01-01); ms stay below until 5138.
_MICROS_ABOVE = 10**14


class ArchiveFailure(Exception):
    """A file that cannot be used; ``reason`` is what the report shows."""

    def __init__(self, reason: str, *, retry: bool = True, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.unreachable = unreachable


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """Where the archive tree is and how to download from it (``exchange.archive``)."""

    base_url: str
    verify: bool = True
    downloads_in_flight: int = 4
    timeout_s: float = 60.0


def archive_path(exchange_symbol: str, timeframe: str, file: ArchiveFile, kind: str = "") -> str:
    """``/data/spot/<period>/klines/<SYM>/<tf>/<SYM>-<tf>-<date>.zip``; with ``kind`` (``klines``,
    ``markPriceKlines``, ...) the USDⓈ-M futures tree's ``/data/futures/um/<period>/<kind>/...``."""
    tf = _PATH_TF.get(timeframe, timeframe)
    name = f"{exchange_symbol}-{tf}-{file.date}.zip"
    root = "/data/futures/um" if kind else "/data/spot"
    return f"{root}/{file.period}/{kind or 'klines'}/{exchange_symbol}/{tf}/{name}"


class _Peekable(Protocol):
    """A zip member (``zipfile.ZipExtFile``) or a buffered reader: pyarrow reads it, we peek."""

    def peek(self, n: int = ..., /) -> bytes: ...

    def read(self, n: int = ..., /) -> bytes: ...


def _read_columns(stream: _Peekable) -> CandleColumns:
    """The columns of a CSV stream (it must have ``peek``); a header row is found by the data."""
    head = stream.peek(1)[:1]
    header = head.isalpha()  # futures files start with a header row, spot files do not
    try:
        table = pa_csv.read_csv(
            stream, read_options=_READ_AFTER_HEADER if header else _READ, convert_options=_CONVERT
        )
    except (pa.ArrowInvalid, ValueError) as exc:
        if "Empty CSV file" in str(exc):
            return CandleColumns.from_candles([])
        raise ArchiveFailure(f"unreadable CSV ({str(exc).splitlines()[0]})") from None
    ts = table.column(0).to_numpy()
    ts = np.where(ts > _MICROS_ABOVE, ts // 1000, ts)
    values = [table.column(i).to_numpy() for i in range(1, 6)]
    return CandleColumns(ts, *values)


def parse_kline_columns(csv: bytes) -> CandleColumns:
    """``ts_ms, o, h, l, c, v`` columns of the CSV; a header row and µs timestamps are found by the data."""
    return _read_columns(io.BufferedReader(io.BytesIO(csv)))


def parse_klines(csv: bytes) -> list[Candle]:
    """``(ts_ms, o, h, l, c, v)`` of each CSV row (:func:`parse_kline_columns` as tuples)."""
    return list(parse_kline_columns(csv))


def _one_member(zf: zipfile.ZipFile) -> str:
    names = zf.namelist()
    if len(names) != 1:
        raise ArchiveFailure(f"zip holds {len(names)} files, expected 1")
    return names[0]


def unzip_one(data: bytes) -> bytes:
    """The single member of a zip; ``ArchiveFailure('corrupt zip')`` when it does not open or its CRC fails."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(_one_member(zf))
    except _ZIP_ERRORS as exc:
        raise ArchiveFailure(f"corrupt zip ({exc})") from None


def _check_sha256(data: bytes, sha256: str | None) -> None:
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ArchiveFailure("checksum mismatch")


def _read_csv_zip(parse: Callable[[bytes], _T], data: bytes, sha256: str | None) -> _T:
    """``parse`` of a downloaded zip's one CSV member, its sha256 checked first (unless ``None``);
    runs in the reading thread, as :func:`read_kline_zip` does."""
    _check_sha256(data, sha256)
    return parse(unzip_one(data))


def read_kline_zip(data: bytes, sha256: str | None) -> CandleColumns:
    """The candles of a downloaded zip: its sha256 checked first (unless ``None``), its CSV member
    streamed into pyarrow (no decompressed copy of the file is held; the member's CRC is checked
    when the stream ends). Runs in a worker thread: hashlib, zlib and pyarrow release the GIL.

    Raises:
        ArchiveFailure: a checksum mismatch, a corrupt zip or an unreadable CSV.
    """
    _check_sha256(data, sha256)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf, zf.open(_one_member(zf)) as member:
            return _read_columns(cast(_Peekable, member))
    except _ZIP_ERRORS as exc:
        raise ArchiveFailure(f"corrupt zip ({exc})") from None


def _use_system_pool() -> None:
    """Make pyarrow allocate with the C allocator, for the whole process (it has one default pool).

    The wheels' default pool (mimalloc) keeps freed pages for reuse, and the CSV reader also
    allocates outside any ``memory_pool=`` it is given (its reads of the zip member stream).
    Measured (``benchmarks/bench_archive.py``'s collection at the issue size, 20 symbols x 1m x
    730 days, one child each, loaded 2-core machine, load 8-10): peak RSS 295, 297, 298 MB with
    mimalloc, 291-292 MB with ``memory_pool=`` on ``read_csv`` alone, 283-285 MB with the system
    pool as the default, at the same CPU (23.7-24.1 s). A fixed glibc mmap threshold (128 KB)
    gave 276 MB but 36 s of CPU, so it is not used. Nothing else in the collector depends on the pool.
    Set this late (after pyarrow's import) it gave 292-293 MB: ``data_collector/__init__.py`` sets
    ``ARROW_DEFAULT_MEMORY_POOL`` before the import (284 MB, same CPU); this is the fallback, for
    a pyarrow imported first. A pool the user chose in that variable is left as it is.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system":
        pa.set_memory_pool(pa.system_memory_pool())


class ArchiveClient:
    """Downloads of one run: one aiohttp session, and :attr:`slots` for the files in flight."""

    def __init__(self, settings: ArchiveSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        #: Files between their download and the write queue, over all pairs: the caller holds one
        #: per file until its rows are queued, so the bytes in memory stay bounded.
        self.slots = asyncio.Semaphore(settings.downloads_in_flight)
        #: Bytes downloaded and files verified, for the report.
        self.bytes = 0
        self.files = 0
        self._thread: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> ArchiveClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session and the reading thread. Safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False, cancel_futures=True)

    def _reader(self) -> ThreadPoolExecutor:
        """One thread verifies, unzips and parses every file of the run, one at a time. Measured by
        hand (12 monthly 1m zips of the benchmark's cache, four submitted at a time, loaded 2-core
        machine): one thread on the streamed member read ~450,000 rows/s (more than PostgreSQL
        takes here) and peaked at 128 MB; four ``to_thread`` workers on unzipped bytes peaked at
        269 MB (an allocator arena and a pyarrow heap per thread) for no more speed."""
        if self._thread is None:
            _use_system_pool()
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="dc-archive-read")
        return self._thread

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s, sock_connect=10)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def klines(
        self,
        exchange_symbol: str,
        timeframe: str,
        file: ArchiveFile,
        kind: str = "",
        *,
        sizes: list[int] | None = None,
    ) -> CandleColumns:
        """The verified candles of one file; tried twice, then :class:`ArchiveFailure`.

        ``kind``: a futures file's kind (see :func:`archive_path`); ``sizes``: the zip's size in
        bytes is appended to it (for the progress display)."""
        path = archive_path(exchange_symbol, timeframe, file, kind)
        return await self._twice(path, read_kline_zip, sizes)

    async def fetch(self, path: str, parse: Callable[[bytes], _T]) -> _T:
        """``parse`` of the verified CSV at ``path``; tried twice, then :class:`ArchiveFailure`."""
        return await self._twice(path, partial(_read_csv_zip, parse), None)

    async def _twice(self, path: str, read: Callable[[bytes, str | None], _T], sizes: list[int] | None) -> _T:
        try:
            return await self._once(path, read, sizes)
        except ArchiveFailure as first:
            if not first.retry:
                raise
        return await self._once(path, read, sizes)

    async def _once(self, path: str, read: Callable[[bytes, str | None], _T], sizes: list[int] | None) -> _T:
        data = await self._get(path)
        if data is None:
            raise ArchiveFailure("404 (not published)", retry=False)
        if self.settings.verify:
            check = await self._get(path + ".CHECKSUM")
            if check is None:
                raise ArchiveFailure("missing CHECKSUM")
            want: str | None = (
                check.split(maxsplit=1)[0].decode("ascii", "replace").lower() if check.strip() else ""
            )
        else:
            want = None
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._reader(), read, data, want)
        self.bytes += len(data)
        self.files += 1
        if sizes is not None:
            sizes.append(len(data))
        return rows

    async def _get(self, path: str) -> bytes | None:
        url = self.settings.base_url.rstrip("/") + path
        try:
            async with self._http().get(url) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise ArchiveFailure(f"HTTP {resp.status}")
                return await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise ArchiveFailure(f"unreachable ({exc})", retry=False, unreachable=True) from None
        except aiohttp.ClientPayloadError:
            raise ArchiveFailure("truncated transfer") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ArchiveFailure(f"download failed ({type(exc).__name__})") from None
