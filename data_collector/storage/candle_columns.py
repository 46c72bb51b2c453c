"""Candles held as numpy columns: what an archive file becomes, without a Python tuple per row.

:class:`CandleColumns` is a ``Sequence[Candle]``, so a :class:`~data_collector.storage.base.CandleBatch`
may carry it to any store and any code that reads candles one by one (tuples are made on
demand). PostgreSQL's writer sees the columns and encodes them into binary COPY data with a few
numpy assignments per batch (:func:`copy_binary`, about a million rows a second on the loaded
2-core benchmark machine) instead of asyncpg encoding a tuple per row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt

from data_collector.storage.base import Candle

#: ``PGCOPY\n\377\r\n\0``, flags 0, header extension length 0 (PostgreSQL's binary COPY format).
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
#: A field count of -1 ends the data.
COPY_TRAILER = b"\xff\xff"
#: One ``ohlcv`` row in binary COPY: the field count, then each field's length and big-endian value.
_OHLCV_ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l_id", ">i4"),
        ("instrument_id", ">i4"),
        ("l_tf", ">i4"),
        ("timeframe", ">i2"),
        ("l_ts", ">i4"),
        ("ts", ">i8"),
        *[
            (f, t)
            for name in ("open", "high", "low", "close", "volume")
            for f, t in ((f"l_{name}", ">i4"), (name, ">f8"))
        ],
    ]
)
_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True, eq=False)
class CandleColumns(Sequence[Candle]):
    """``ts`` (int64 ms) and five float64 columns of equal length; read-only by convention."""

    ts: npt.NDArray[np.int64]
    open: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    volume: npt.NDArray[np.float64]

    @classmethod
    def from_candles(cls, candles: Sequence[Candle]) -> CandleColumns:
        if not candles:
            return cls(np.empty(0, np.int64), *(np.empty(0, np.float64) for _ in range(5)))
        ts = np.fromiter((c[0] for c in candles), np.int64, len(candles))
        values = np.array([c[1:6] for c in candles], dtype=np.float64)
        return cls(ts, *(np.ascontiguousarray(values[:, i]) for i in range(5)))

    def __len__(self) -> int:
        return len(self.ts)

    @overload
    def __getitem__(self, index: int) -> Candle: ...

    @overload
    def __getitem__(self, index: slice) -> CandleColumns: ...

    def __getitem__(self, index: int | slice) -> Candle | CandleColumns:
        if isinstance(index, slice):
            return CandleColumns(*(a[index] for a in self.arrays()))
        return (
            int(self.ts[index]),
            float(self.open[index]),
            float(self.high[index]),
            float(self.low[index]),
            float(self.close[index]),
            float(self.volume[index]),
        )

    def __iter__(self) -> Iterator[Candle]:
        return zip(*(a.tolist() for a in self.arrays()), strict=True)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.ts, self.open, self.high, self.low, self.close, self.volume)

    def increasing(self) -> bool:
        """Whether the open times are strictly increasing (so unique and sorted)."""
        return bool(len(self.ts) < 2 or (np.diff(self.ts) > 0).all())

    def without(self, stored: Sequence[int] | set[int]) -> CandleColumns:
        """The rows whose open time is not in ``stored``."""
        if not stored:
            return self
        keep = ~np.isin(self.ts, np.fromiter(stored, np.int64, len(stored)))
        return self if keep.all() else CandleColumns(*(a[keep] for a in self.arrays()))


def copy_binary(groups: Sequence[tuple[int, int, CandleColumns]]) -> Iterator[bytes]:
    """The binary COPY data of ``ohlcv`` rows (``instrument_id, timeframe, ts, o, h, l, c, v``)
    from ``(instrument_id, timeframe code, columns)`` groups, in order: one part per group, each
    encoded when it is asked for, so a write holds one group's bytes at a time, not all of them."""
    yield COPY_HEADER
    for instrument_id, code, cols in groups:
        rows = np.empty(len(cols), dtype=_OHLCV_ROW)
        rows["n"] = 8
        rows["l_id"] = 4
        rows["instrument_id"] = instrument_id
        rows["l_tf"] = 2
        rows["timeframe"] = code
        rows["l_ts"] = 8
        rows["ts"] = cols.ts
        for name in _FIELDS:
            rows[f"l_{name}"] = 8
            rows[name] = getattr(cols, name)
        yield rows.tobytes()
    yield COPY_TRAILER
