"""Rows of one data type as numpy columns: the Parquet tier's in-memory form.

:class:`DataSpec` names a data type's columns and key; :class:`Columns` holds rows sorted by that
key, hashes them (the content hash of the manifests) and merges two tiers' rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd

CANDLE_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class DataSpec:
    """One data type's columns: name, numpy dtype (``<i8``, ``<f8``, ``?``) and key.

    ``ts`` (UTC ms) is stored as ``timestamp[ms, UTC]``; the ``key`` column orders the rows and
    identifies a row across the tiers (``ts`` for candles, the aggregate ``id`` for trades).
    """

    data_type: str
    key: str
    fields: tuple[tuple[str, str], ...]
    #: Float columns written with dictionary encoding (``None``: every float column). Prices
    #: repeat within a month; volumes and quantities mostly do not, and a dictionary that
    #: overflows costs time for nothing: a month of 1m candles wrote in 6.1 ms at 9.2 B/row with
    #: volume plain, against 8.8 ms at 10.7 B/row with it in a dictionary.
    dictionary: tuple[str, ...] | None = None

    @property
    def dictionary_columns(self) -> list[str]:
        floats = [name for name, dtype in self.fields if dtype == "<f8"]
        return floats if self.dictionary is None else [n for n in floats if n in self.dictionary]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.fields]

    def arrow_schema(self) -> pa.Schema:
        types = {"<i8": pa.int64(), "<f8": pa.float64(), "?": pa.bool_()}
        return pa.schema(
            [
                pa.field(name, pa.timestamp("ms", tz="UTC") if name == "ts" else types[dtype], nullable=False)
                for name, dtype in self.fields
            ]
        )


OHLCV_SPEC = DataSpec(
    "ohlcv",
    "ts",
    (("ts", "<i8"), *((name, "<f8") for name in CANDLE_FIELDS)),
    ("open", "high", "low", "close"),
)
TRADES_SPEC = DataSpec(
    "trades",
    "id",
    (
        ("id", "<i8"),
        ("ts", "<i8"),
        ("price", "<f8"),
        ("qty", "<f8"),
        ("first_trade_id", "<i8"),
        ("last_trade_id", "<i8"),
        ("buyer_maker", "?"),
    ),
    ("price",),
)


@dataclass(slots=True)
class Columns:
    """Rows of one data type as numpy columns, sorted by the spec's key."""

    spec: DataSpec
    arrays: dict[str, npt.NDArray[Any]]

    def __len__(self) -> int:
        return len(self.arrays[self.spec.key])

    @property
    def ts(self) -> npt.NDArray[np.int64]:
        return self.arrays["ts"]

    @property
    def key(self) -> npt.NDArray[np.int64]:
        return self.arrays[self.spec.key]

    def content_hash(self) -> str:
        """SHA-256 over the columns' little-endian bytes, in the spec's order."""
        digest = hashlib.sha256(f"data_collector.{self.spec.data_type}.v1".encode())
        for name, dtype in self.spec.fields:
            digest.update(np.ascontiguousarray(self.arrays[name], dtype=dtype).tobytes())
        return digest.hexdigest()

    def take(self, mask: npt.NDArray[np.bool_]) -> Columns:
        return Columns(self.spec, {k: v[mask] for k, v in self.arrays.items()})

    @classmethod
    def empty(cls, spec: DataSpec) -> Columns:
        return cls(spec, {name: np.empty(0, dtype) for name, dtype in spec.fields})

    @classmethod
    def concat(cls, spec: DataSpec, parts: list[Columns]) -> Columns:
        if not parts:
            return cls.empty(spec)
        if len(parts) == 1:
            return parts[0]
        return cls(spec, {name: np.concatenate([p.arrays[name] for p in parts]) for name in spec.names})

    def union(self, newer: Columns) -> Columns:
        """These rows and ``newer``'s; where both have a key, ``newer`` wins. Sorted by key.

        Both must be sorted by key (see :meth:`union_pieces`).
        """
        return Columns.concat(self.spec, self.union_pieces(newer))

    def union_pieces(self, newer: Columns) -> list[Columns]:
        """:meth:`union` as consecutive pieces (mostly views), to be copied once by the caller.

        Only this side's rows within ``newer``'s key span are looked up and sorted; the rest is
        sliced: at the seam of the two tiers that is a few rows of ten million (a whole ``isin``
        and ``argsort`` took most of a 10M-row read).
        """
        if not len(newer):
            return [self]
        if not len(self):
            return [newer]
        lo, hi = (int(i) for i in np.searchsorted(self.key, [newer.key[0], newer.key[-1]], side="left"))
        hi += int(hi < len(self) and self.key[hi] == newer.key[-1])
        inside = self.key[lo:hi]
        keep = ~np.isin(inside, newer.key, assume_unique=True)
        middle = newer
        if keep.any():  # rows of this side between newer's keys: merge them in order
            order = np.argsort(np.concatenate([inside[keep], newer.key]), kind="stable")
            middle = Columns(
                self.spec,
                {
                    k: np.concatenate([self.arrays[k][lo:hi][keep], newer.arrays[k]])[order]
                    for k in self.spec.names
                },
            )
        return [self.slice(0, lo), middle, self.slice(hi, len(self))]

    def slice(self, start: int, stop: int) -> Columns:
        """Rows ``start:stop`` as views."""
        return Columns(self.spec, {k: v[start:stop] for k, v in self.arrays.items()})


def columns_frame(columns: Columns | Sequence[Columns]) -> pd.DataFrame:
    """Candle columns (or consecutive pieces of them) as the DataFrame
    :func:`~data_collector.storage.store.candles_frame` makes.

    The pieces are copied once, straight into the frame's one float block (a dict of columns
    would be copied again by pandas to consolidate them: a fifth of a 10M-row read).
    """
    import pandas as pd

    pieces = [columns] if isinstance(columns, Columns) else list(columns)
    n = sum(len(p) for p in pieces)
    if not n:
        from data_collector.storage.store import candles_frame

        return candles_frame([])  # its index's unit for no rows
    ts = np.concatenate([p.ts for p in pieces]) if len(pieces) > 1 else pieces[0].ts
    block = np.empty((len(CANDLE_FIELDS), n), dtype=np.float64)
    for row, name in enumerate(CANDLE_FIELDS):
        np.concatenate([p.arrays[name] for p in pieces], out=block[row])
    # The index's unit is the one pd.to_datetime gives ``candles_frame`` (a cast, not a parse).
    unit = pd.to_datetime(ts[:0], unit="ms", utc=True).dtype.unit
    times = ts.astype("datetime64[ms]").astype(f"datetime64[{unit}]")
    index = pd.DatetimeIndex(times, name="time").tz_localize("UTC")
    return pd.DataFrame(block.T, columns=list(CANDLE_FIELDS), index=index, copy=False)


def pieces_frame(columns: Columns | Sequence[Columns], names: Sequence[str]) -> pd.DataFrame:
    """The columns ``names`` of rows (or consecutive pieces of them, :meth:`Columns.union_pieces`)
    as a DataFrame indexed by UTC time (``time``), the shape of the stores' frames.

    Each column is copied once, from the pieces into its own array, and the frame takes the
    arrays as they are (``copy=False``: pandas keeps a block per column instead of copying them
    again into one block per dtype).
    """
    import pandas as pd

    pieces = (
        [columns] if isinstance(columns, Columns) else [p for p in columns if len(p)] or list(columns)[:1]
    )

    def joined(name: str) -> npt.NDArray[Any]:
        return (
            pieces[0].arrays[name] if len(pieces) == 1 else np.concatenate([p.arrays[name] for p in pieces])
        )

    index = pd.DatetimeIndex(pd.to_datetime(joined("ts"), unit="ms", utc=True), name="time")
    return pd.DataFrame({k: joined(k) for k in names}, index=index, copy=False)


def trade_columns_frame(columns: Columns | Sequence[Columns]) -> pd.DataFrame:
    """Trade columns (or consecutive pieces of them) as the DataFrame
    :func:`~data_collector.storage.store.trades_frame` makes."""
    from data_collector.storage.trades import TRADE_FRAME_COLUMNS

    return pieces_frame(columns, TRADE_FRAME_COLUMNS)
