"""The cache's value format: msgpack with extension types, one header byte, optional compression.

A stored value is ``<header byte><payload>``. The header's high nibble is the format version
(:data:`FORMAT_VERSION`), its low nibble the compression of the payload (0 none, 1 zlib, 2 lz4),
so a reader always knows how to decode a value, whoever wrote it and with which settings.

The payload is msgpack. Besides msgpack's own types (dict, list, str, bytes, int, float, bool,
None) these round-trip exactly through extension types:

* ``datetime`` (naive or timezone-aware: UTC, ``zoneinfo`` zones and fixed offsets keep their
  tzinfo; other tzinfo classes become a fixed offset at that instant), ``date``, ``time``,
  ``timedelta``;
* ``Decimal`` (as its exact string), integers beyond 64 bits;
* numpy arrays (dtype and shape kept), pandas ``DataFrame``, ``Series`` and ``Index``: index
  (including ``DatetimeIndex`` with its timezone and frequency, ``RangeIndex`` and
  ``MultiIndex``), column names, dtypes and NaNs. Numeric, boolean and datetime columns travel
  as raw little-endian buffers, not element by element.

A list of at least :data:`ROWS_MIN` equal-length rows whose columns are each all-int or
all-float (a candle batch), at the top level or as a value of a top-level dict, is packed
column-wise and byte-shuffled: it compresses to about a third of its JSON size instead of a half.

Tuples come back as lists (msgpack has one sequence type) and numpy scalars as Python numbers.
Nothing is ever pickled: decoding a value cannot run code.

Long because each extension type's encoder and decoder sit side by side, so the format is
read in one place.
"""

from __future__ import annotations

import datetime as dt
import zlib
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import lz4.block
import msgpack
import numpy as np
import pandas as pd

from data_collector.echo import shown_input
from data_collector.errors import PermanentError, UsageError

FORMAT_VERSION = 1
Compression = Literal["none", "zlib", "lz4"]
COMPRESSION_CODES: dict[str, int] = {"none": 0, "zlib": 1, "lz4": 2}
_CODE_NAMES = {code: name for name, code in COMPRESSION_CODES.items()}

#: zlib level 1: on 1,000 candles it was within a few per cent of level 6's size at ~4x the speed.
ZLIB_LEVEL = 1

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_TIME = 3
_EXT_TIMEDELTA = 4
_EXT_DECIMAL = 5
_EXT_BIGINT = 6
_EXT_NA = 7
_EXT_NAT = 8
_EXT_NDARRAY = 10
_EXT_DATAFRAME = 11
_EXT_SERIES = 12
_EXT_INDEX = 13
_EXT_ROWS = 14

#: A list of at least this many equal-length numeric rows is stored column-wise (see _rows_ext).
ROWS_MIN = 8
_ROWS_MAX_COLUMNS = 64

# Numpy dtype kinds whose values are fixed-size and can travel as a raw buffer.
_RAW_KINDS = frozenset("biufcmM")


class SerializationError(UsageError):
    """A value cannot be stored in the cache (its type is not supported)."""


class CorruptValueError(PermanentError):
    """Stored bytes are not a value of this format (foreign, truncated or from a newer version)."""


def encode(value: Any, compression: Compression = "lz4", threshold: int = 1024) -> tuple[bytes, int]:
    """Serialise ``value`` into the stored form.

    Args:
        value: the value to store.
        compression: the codec used when the packed value is at least ``threshold`` bytes.
        threshold: minimum packed size, in bytes, worth compressing.

    Returns:
        ``(stored_bytes, logical_size)``, where ``logical_size`` is the packed size before
        compression (for the cache's compression-ratio statistics).

    Raises:
        SerializationError: the value holds a type the format does not support.
    """
    packed = pack(value)
    return frame(packed, compression, threshold), len(packed)


def decode(data: bytes) -> Any:
    """Deserialise bytes made by :func:`encode`.

    Raises:
        CorruptValueError: the bytes are not a value of this format.
    """
    return unpack(unframe(data))


def pack(value: Any) -> bytes:
    """msgpack with this module's extension types, without header or compression."""
    if type(value) is list:
        value = _rows_ext(value) or value
    elif type(value) is dict:
        value = {k: (_rows_ext(v) or v) if type(v) is list else v for k, v in value.items()}
    try:
        return msgpack.packb(value, default=_default, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot serialise value for the cache: {exc}") from None


def unpack(packed: bytes) -> Any:
    """The inverse of :func:`pack`."""
    try:
        return msgpack.unpackb(packed, ext_hook=_ext_hook, raw=False, strict_map_key=False, timestamp=0)
    except CorruptValueError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise CorruptValueError(f"cannot decode cached value: {type(exc).__name__}: {exc}") from None


def frame(packed: bytes, compression: Compression = "lz4", threshold: int = 1024) -> bytes:
    """Prefix the header byte, compressing ``packed`` when it is large enough and it pays."""
    code = COMPRESSION_CODES.get(compression)
    if code is None:
        raise UsageError(f"unknown compression {shown_input(compression)}: use lz4, zlib or none")
    if code and len(packed) >= threshold:
        body = compress(packed, compression)
        if len(body) < len(packed):
            return bytes(((FORMAT_VERSION << 4) | code,)) + body
    return bytes(((FORMAT_VERSION << 4),)) + packed


def unframe(data: bytes) -> bytes:
    """Check the header byte and return the decompressed msgpack payload."""
    if not data:
        raise CorruptValueError("cannot decode cached value: it is empty")
    header = data[0]
    version, code = header >> 4, header & 0x0F
    if version != FORMAT_VERSION:
        raise CorruptValueError(
            f"cannot decode cached value: format version {version}, this code reads {FORMAT_VERSION}"
        )
    body = memoryview(data)[1:]
    if code == 0:
        return bytes(body)
    try:
        if code == 1:
            return zlib.decompress(body)
        if code == 2:
            return lz4.block.decompress(body)  # type: ignore[no-any-return]
    except Exception as exc:
        raise CorruptValueError(f"cannot decompress cached value ({_CODE_NAMES[code]}): {exc}") from None
    raise CorruptValueError(f"cannot decode cached value: unknown compression code {code}")


def compress(packed: bytes, compression: Compression) -> bytes:
    """The raw codec (no header): zlib level :data:`ZLIB_LEVEL`, or an lz4 block with its size."""
    if compression == "none":
        return packed
    if compression == "zlib":
        return zlib.compress(packed, ZLIB_LEVEL)
    return lz4.block.compress(packed, store_size=True)  # type: ignore[no-any-return]


def _default(obj: Any) -> Any:
    # Order matters: NaT and Timestamp are datetimes, bool is an int, datetime is a date.
    if obj is pd.NaT:
        return msgpack.ExtType(_EXT_NAT, b"")
    if obj is pd.NA:
        return msgpack.ExtType(_EXT_NA, b"")
    if isinstance(obj, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, pack(_datetime_fields(obj)))
    if isinstance(obj, dt.date):
        return msgpack.ExtType(_EXT_DATE, pack([obj.year, obj.month, obj.day]))
    if isinstance(obj, dt.time):
        fields = [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold]
        return msgpack.ExtType(_EXT_TIME, pack([*fields, _tz_spec(obj.tzinfo, None)]))
    if isinstance(obj, dt.timedelta):
        return msgpack.ExtType(_EXT_TIMEDELTA, pack([obj.days, obj.seconds, obj.microseconds]))
    if isinstance(obj, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, int):
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
    if isinstance(obj, pd.DataFrame):
        return msgpack.ExtType(_EXT_DATAFRAME, pack(_frame_fields(obj)))
    if isinstance(obj, pd.Series):
        series_fields: list[Any] = [_name(obj.name), _index_fields(obj.index), _array_fields(obj.array)]
        return msgpack.ExtType(_EXT_SERIES, pack(series_fields))
    if isinstance(obj, pd.Index):
        return msgpack.ExtType(_EXT_INDEX, pack(_index_fields(obj)))
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _RAW_KINDS:
            return msgpack.ExtType(_EXT_NDARRAY, pack(["obj", list(obj.shape), obj.ravel().tolist()]))
        raw = np.ascontiguousarray(obj)
        return msgpack.ExtType(_EXT_NDARRAY, pack(["raw", list(obj.shape), raw.dtype.str, raw.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise SerializationError(
        f"cannot serialise {type(obj).__name__} for the cache: use dict, list, str, bytes, numbers, "
        "datetime, Decimal, numpy arrays or pandas objects"
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        y, mo, d, h, mi, s, us, fold, tz = unpack(data)
        return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz_from_spec(tz), fold=fold)
    if code == _EXT_DATE:
        return dt.date(*unpack(data))
    if code == _EXT_TIME:
        h, mi, s, us, fold, tz = unpack(data)
        return dt.time(h, mi, s, us, tzinfo=_tz_from_spec(tz), fold=fold)
    if code == _EXT_TIMEDELTA:
        days, seconds, micros = unpack(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_BIGINT:
        return int(data.decode())
    if code == _EXT_NA:
        return pd.NA
    if code == _EXT_NAT:
        return pd.NaT
    if code == _EXT_NDARRAY:
        fields = unpack(data)
        if fields[0] == "obj":
            out = np.empty(len(fields[2]), dtype=object)
            out[:] = fields[2]
            return out.reshape(fields[1])
        _, shape, dtype, raw = fields
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if code == _EXT_DATAFRAME:
        return _frame_from(unpack(data))
    if code == _EXT_SERIES:
        name, index, values = unpack(data)
        return pd.Series(_array_from(values), index=_index_from(index), name=_unname(name), copy=False)
    if code == _EXT_INDEX:
        return _index_from(unpack(data))
    if code == _EXT_ROWS:
        return _rows_from(unpack(data))
    raise CorruptValueError(f"cannot decode cached value: unknown extension type {code}")


def _rows_ext(rows: list[Any]) -> msgpack.ExtType | None:
    """Candle-like batches, column-wise: a list of equal-length rows whose columns are all int
    or all float becomes int64 deltas and float64 values, byte-shuffled (byte k of every value
    together), which lz4/zlib compress to about 30% of the JSON size where row-wise msgpack gives
    about 50%. Any other list returns None and is packed as usual. Decoded rows are lists."""
    if len(rows) < ROWS_MIN:
        return None
    first = rows[0]
    if type(first) not in (list, tuple) or not 0 < len(first) <= _ROWS_MAX_COLUMNS:
        return None
    width = len(first)
    if not all(type(row) in (list, tuple) and len(row) == width for row in rows):
        return None
    kinds = []
    buffers = []
    for column in zip(*rows, strict=True):
        kind = type(column[0])
        if kind is float:
            if not all(type(v) is float for v in column):
                return None
            values = np.array(column, dtype="<f8").view("<u8")
            kinds.append("f")
        elif kind is int:
            if not all(type(v) is int for v in column):
                return None
            try:
                ints = np.array(column, dtype="<i8")
            except OverflowError:
                return None
            # Wrapping differences: exact modulo 2**64, and tiny for timestamps.
            values = np.diff(ints, prepend=np.int64(0)).view("<u8")
            kinds.append("i")
        else:
            return None
        buffers.append(values.view(np.uint8).reshape(-1, 8).T.tobytes())
    return msgpack.ExtType(_EXT_ROWS, pack([len(rows), "".join(kinds), b"".join(buffers)]))


def _rows_from(fields: list[Any]) -> list[list[Any]]:
    n, kinds, raw = fields
    width = len(kinds)
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(width, 8, n)
    # Filling an object array and calling tolist() builds the row lists in C.
    out = np.empty((n, width), dtype=object)
    for j, kind in enumerate(kinds):
        values = np.ascontiguousarray(planes[j].T).view("<u8").ravel()
        if kind == "i":
            out[:, j] = np.cumsum(values.view("<i8"), dtype=np.int64).tolist()
        else:
            out[:, j] = values.view("<f8").tolist()
    return out.tolist()  # type: ignore[no-any-return]


def _datetime_fields(value: dt.datetime) -> list[Any]:
    return [
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        value.fold,
        _tz_spec(value.tzinfo, value),
    ]


def _tz_spec(tz: dt.tzinfo | None, at: dt.datetime | None) -> Any:
    if tz is None:
        return None
    if tz is dt.UTC:
        return "UTC"
    if isinstance(tz, ZoneInfo):
        return ["zone", tz.key]
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        default_name = dt.timezone(offset).tzname(None)
        return ["fixed", _micros(offset), None if name == default_name else name]
    # pytz, dateutil and friends: keep the instant and the offset, not the class.
    other = tz.utcoffset(at)
    if other is None:
        return None
    return ["fixed", _micros(other), None]


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _tz_from_spec(spec: Any) -> dt.tzinfo | None:
    if spec is None:
        return None
    if spec == "UTC":
        return dt.UTC
    if spec[0] == "zone":
        return ZoneInfo(spec[1])
    offset = dt.timedelta(microseconds=spec[1])
    return dt.timezone(offset, spec[2]) if spec[2] is not None else dt.timezone(offset)


def _name(name: Any) -> Any:
    # Tuples (MultiIndex column labels) are tagged so that they come back hashable.
    if isinstance(name, tuple):
        return {"t": [_name(part) for part in name]}
    return name


def _unname(name: Any) -> Any:
    if isinstance(name, dict) and set(name) == {"t"}:
        return tuple(_unname(part) for part in name["t"])
    return name


def _array_fields(values: Any) -> list[Any]:
    """One column: raw buffer for fixed-size numpy dtypes, a list of values otherwise."""
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        utc = pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)
        raw = np.ascontiguousarray(utc.to_numpy())
        return ["tz", raw.dtype.str, _tz_spec(dtype.tz, None), _shuffle(raw)]
    if isinstance(dtype, pd.CategoricalDtype):
        return [
            "cat",
            _array_fields(dtype.categories.array),
            _array_fields(np.asarray(values.codes)),
            bool(dtype.ordered),
        ]
    if isinstance(dtype, np.dtype):
        array = np.asarray(values)
        if dtype.kind in _RAW_KINDS:
            raw = np.ascontiguousarray(array)
            return ["np", raw.dtype.str, _shuffle(raw)]
        return ["obj", array.tolist()]
    # Other pandas extension dtypes (str, Int64, boolean, Float64, ...): values with None for NA.
    return ["ext", str(dtype), values.to_numpy(dtype=object, na_value=None).tolist()]


def _array_from(fields: list[Any]) -> Any:
    kind = fields[0]
    if kind == "np":
        return _unshuffle(fields[2], np.dtype(fields[1]))
    if kind == "tz":
        naive = _unshuffle(fields[3], np.dtype(fields[1]))
        return pd.DatetimeIndex(naive).tz_localize("UTC").tz_convert(_tz_from_spec(fields[2])).array
    if kind == "cat":
        categories = _array_from(fields[1])
        codes = _array_from(fields[2])
        return pd.Categorical.from_codes(codes, categories=categories, ordered=fields[3])
    if kind == "obj":
        out = np.empty(len(fields[1]), dtype=object)
        out[:] = fields[1]
        return out
    if kind == "ext":
        return pd.array(fields[2], dtype=fields[1])
    raise CorruptValueError(f"cannot decode cached value: unknown column kind {kind!r}")


def _shuffle(values: np.ndarray) -> bytes:
    """Byte k of every element together: similar high bytes of prices and timestamps then form
    long runs that lz4/zlib compress well (the idea of Blosc's shuffle filter)."""
    size = values.dtype.itemsize
    if size == 1 or values.size == 0:
        return values.tobytes()
    return values.view(np.uint8).reshape(-1, size).T.tobytes()


def _unshuffle(raw: bytes, dtype: np.dtype[Any]) -> np.ndarray:
    size = dtype.itemsize
    if size == 1 or not raw:
        return np.frombuffer(raw, dtype=dtype).copy()
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(size, -1)
    return np.ascontiguousarray(planes.T).view(dtype).ravel()


def _index_fields(index: pd.Index) -> list[Any]:
    if isinstance(index, pd.RangeIndex):
        return ["range", index.start, index.stop, index.step, _name(index.name)]
    if isinstance(index, pd.MultiIndex):
        levels = [_index_fields(index.get_level_values(i)) for i in range(index.nlevels)]
        return ["multi", levels, [_name(n) for n in index.names]]
    if isinstance(index, pd.DatetimeIndex):
        return ["dt", _array_fields(index.array), index.freqstr, _name(index.name)]
    return ["idx", _array_fields(index.array), _name(index.name)]


def _index_from(fields: list[Any]) -> pd.Index:
    kind = fields[0]
    if kind == "range":
        return pd.RangeIndex(fields[1], fields[2], fields[3], name=_unname(fields[4]))
    if kind == "multi":
        levels = [_index_from(level) for level in fields[1]]
        return pd.MultiIndex.from_arrays(levels, names=[_unname(n) for n in fields[2]])
    if kind == "dt":
        return pd.DatetimeIndex(_array_from(fields[1]), freq=fields[2], name=_unname(fields[3]))
    if kind == "idx":
        values = _array_from(fields[1])
        return pd.Index(values, dtype=values.dtype, name=_unname(fields[2]), copy=False)
    raise CorruptValueError(f"cannot decode cached value: unknown index kind {kind!r}")


def _frame_fields(frame_: pd.DataFrame) -> list[Any]:
    columns = [_array_fields(frame_.iloc[:, i].array) for i in range(frame_.shape[1])]
    return [_index_fields(frame_.columns), _index_fields(frame_.index), columns]


def _frame_from(fields: list[Any]) -> pd.DataFrame:
    columns, index, arrays = _index_from(fields[0]), _index_from(fields[1]), fields[2]
    out = pd.DataFrame({i: _array_from(a) for i, a in enumerate(arrays)}, index=index)
    out.columns = columns
    return out
