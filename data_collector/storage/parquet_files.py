"""The Parquet tier's files: where a month lives, how it is written atomically, read and checked.

Layout (hive partitions, values URL-encoded so that ``SOL/USDT`` stays one directory)::

    <root>/venue=binance/market=spot/data_type=ohlcv/timeframe=1m/symbol=SOL%2FUSDT/
        year=2024/month=01/part-0.parquet          the candles of that month, sorted by time
        year=2024/month=01/_part-0.manifest.json   rows, min/max time, content hash, schema version

A file is written under a temporary name (``.part-0.parquet.tmp-…``), flushed to disk, then
renamed; readers (pyarrow, polars, DuckDB) skip names starting with ``.`` and ``_``, so no
reader ever sees half a file. The manifest is written the same way, after the file.

The content hash is SHA-256 over the columns' little-endian bytes (``ts`` as int64 ms, then
``open high low close volume`` as float64), in time order: the database side computes the same
hash from the rows it holds (:mod:`data_collector.storage.postgres_archive`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from data_collector.errors import PermanentError, UsageError

#: Version of the files' schema; a reader refuses files of a newer one.
SCHEMA_VERSION = 1
VERSION_KEY = b"data_collector.schema_version"
FILE_NAME = "part-0.parquet"
MANIFEST_NAME = "_part-0.manifest.json"
CANDLE_FIELDS = ("open", "high", "low", "close", "volume")
CANDLE_SCHEMA = pa.schema(
    [pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False)]
    + [pa.field(name, pa.float64(), nullable=False) for name in CANDLE_FIELDS]
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class StepHook(Protocol):
    """Called at each step of a move (``'write'``, ``'verify'``, ``'drop'``) with a path or ``''``."""

    def __call__(self, step: str, path: str) -> None: ...


class NewerSchemaError(UsageError):
    """A file of the dataset was written by a newer version of this program."""


class ArchiveWriteError(PermanentError):
    """The Parquet tier could not be written (disk full, an I/O error); nothing was pruned."""


@dataclass(slots=True)
class CandleColumns:
    """Candles as columns, sorted by ``ts`` (UTC ms)."""

    ts: I64
    values: dict[str, F64]

    def __len__(self) -> int:
        return len(self.ts)

    def content_hash(self) -> str:
        digest = hashlib.sha256(b"data_collector.ohlcv.v1")
        digest.update(np.ascontiguousarray(self.ts, dtype="<i8").tobytes())
        for name in CANDLE_FIELDS:
            digest.update(np.ascontiguousarray(self.values[name], dtype="<f8").tobytes())
        return digest.hexdigest()

    def take(self, mask: npt.NDArray[np.bool_]) -> CandleColumns:
        return CandleColumns(self.ts[mask], {k: v[mask] for k, v in self.values.items()})

    @classmethod
    def empty(cls) -> CandleColumns:
        return cls(np.empty(0, np.int64), {k: np.empty(0, np.float64) for k in CANDLE_FIELDS})

    def union(self, newer: CandleColumns) -> CandleColumns:
        """These rows and ``newer``'s; where both have a time, ``newer`` wins. Sorted."""
        keep = ~np.isin(self.ts, newer.ts)
        ts = np.concatenate([self.ts[keep], newer.ts])
        order = np.argsort(ts, kind="stable")
        values = {k: np.concatenate([self.values[k][keep], newer.values[k]])[order] for k in CANDLE_FIELDS}
        return CandleColumns(ts[order], values)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a month's file holds, written beside it."""

    schema_version: int
    file: str
    rows: int
    min_ts_ms: int
    max_ts_ms: int
    sha256: str
    bytes: int

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in cls.__slots__})
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as absent, the month is written again


@dataclass(frozen=True, slots=True)
class MonthKey:
    """One file of the dataset: a (venue, market, timeframe, symbol) and a calendar month."""

    venue: str
    market: str
    timeframe: str
    symbol: str
    year: int
    month: int

    @property
    def start_ms(self) -> int:
        return int(datetime(self.year, self.month, 1, tzinfo=UTC).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        year, month = (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)
        return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)

    def directory(self, root: Path) -> Path:
        return (
            root
            / f"venue={quote(self.venue, safe='')}"
            / f"market={quote(self.market, safe='')}"
            / "data_type=ohlcv"
            / f"timeframe={self.timeframe}"
            / f"symbol={quote(self.symbol, safe='')}"
            / f"year={self.year:04d}"
            / f"month={self.month:02d}"
        )

    def __str__(self) -> str:
        return f"{self.venue} {self.symbol} {self.timeframe} {self.year:04d}-{self.month:02d}"


def month_of(ts_ms: int) -> tuple[int, int]:
    when = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return when.year, when.month


def months_between(start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """Every calendar month that ``[start_ms, end_ms)`` touches, oldest first."""
    if end_ms <= start_ms:
        return []
    year, month = month_of(start_ms)
    last = month_of(end_ms - 1)
    out = []
    while (year, month) <= last:
        out.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_month(
    root: Path,
    key: MonthKey,
    columns: CandleColumns,
    *,
    row_group_rows: int,
    before_rename: StepHook | None = None,
) -> Manifest:
    """Write a month's candles (sorted) atomically and durably; return its manifest.

    ``before_rename`` is called with the temporary file's path once it is complete (tests stop
    the process there).

    Raises:
        ArchiveWriteError: the file could not be written (disk full, I/O error); no file of that
            name is left behind, a previous version stays as it was.
        UsageError: the directory cannot be created or written (permissions, not a directory).
    """
    directory = key.directory(root)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _path_error(root, exc) from None
    final = directory / FILE_NAME
    for stale in directory.glob(".*.tmp-*"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    tmp = directory / f".{FILE_NAME}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_manifest = directory / f".{MANIFEST_NAME}.tmp-{uuid.uuid4().hex[:8]}"
    meta = {VERSION_KEY: str(SCHEMA_VERSION).encode()}
    table = pa.Table.from_arrays(
        [pa.array(columns.ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))]
        + [pa.array(columns.values[name], pa.float64()) for name in CANDLE_FIELDS],
        schema=CANDLE_SCHEMA.with_metadata(meta),
    )
    try:
        with open(tmp, "wb") as sink:
            pq.write_table(
                table,
                sink,
                compression="zstd",
                compression_level=9,
                row_group_size=row_group_rows,
                write_statistics=True,
                sorting_columns=[pq.SortingColumn(0)],
                # Times are a steady step: delta-encoded they cost almost nothing. Prices repeat
                # within a month, so the float columns keep dictionary encoding.
                use_dictionary=list(CANDLE_FIELDS),
                column_encoding={"ts": "DELTA_BINARY_PACKED"},
            )
            sink.flush()
            os.fsync(sink.fileno())
        if before_rename is not None:
            before_rename("write", str(tmp))
        os.replace(tmp, final)
        _fsync_dir(directory)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            file=FILE_NAME,
            rows=len(columns),
            min_ts_ms=int(columns.ts[0]) if len(columns) else 0,
            max_ts_ms=int(columns.ts[-1]) if len(columns) else 0,
            sha256=columns.content_hash(),
            bytes=final.stat().st_size,
        )
        with open(tmp_manifest, "w") as out:
            json.dump(asdict(manifest), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_manifest, directory / MANIFEST_NAME)
        _fsync_dir(directory)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)
        if isinstance(exc, PermissionError | NotADirectoryError | IsADirectoryError):
            raise _path_error(root, exc) from None
        raise ArchiveWriteError(
            f"archive {root}: writing {key} failed: {exc.strerror or exc}; nothing was pruned, free "
            "space (or fix the disk) and run again"
        ) from None
    return manifest


def check_writable(root: Path) -> None:
    """Create ``root`` if needed and prove a file can be made in it, before anything is read.

    Raises:
        UsageError: it cannot (permissions, a file in the way, a read-only file system).
    """
    probe = root / f".write-probe-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise _path_error(root, exc) from None


def _path_error(root: Path, exc: OSError) -> UsageError:
    return UsageError(
        f"archive.path {root}: cannot write there ({exc.strerror or type(exc).__name__}: "
        f"{exc.filename}); choose a writable directory"
    )


def read_file(path: Path, start_ms: int | None = None, end_ms: int | None = None) -> CandleColumns:
    """A month's candles in ``[start_ms, end_ms)`` (all when not given), sorted by time.

    Raises:
        NewerSchemaError: the file was written by a newer schema version.
        PermanentError: the file is not readable Parquet (corrupt).
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise PermanentError(f"archive file {path} is unreadable: {exc}") from None
    check_version(table.schema, path)
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    values = {name: table.column(name).to_numpy() for name in CANDLE_FIELDS}
    columns = CandleColumns(ts, values)
    if start_ms is not None and end_ms is not None and len(ts) and (ts[0] < start_ms or ts[-1] >= end_ms):
        columns = columns.take((ts >= start_ms) & (ts < end_ms))
    return columns


def check_version(schema: pa.Schema, path: Path) -> None:
    """Refuse a file written by a newer schema version (one line naming the file)."""
    raw = (schema.metadata or {}).get(VERSION_KEY)
    try:
        version = int(raw) if raw is not None else 0
    except ValueError:
        version = 0
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"archive file {path} has schema version {version}, newer than this program's "
            f"{SCHEMA_VERSION}; upgrade data-collector to read it"
        )
