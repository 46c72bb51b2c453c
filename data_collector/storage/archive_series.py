"""Which series the Parquet tier moves, and where each one's rows, coverage and files live.

Every series with a coverage record moves: traded candles and the perpetual venue's candles
(``ohlcv``, by series code: ``1h``, ``mark:1h``, ``index:1h``, ``premium:1h``), funding rates
(``funding``, coverage code 1000) and open interest (``open_interest``, coverage codes
2000 + period). Their archived months are marked ``'archived'`` in ``coverage`` like candles,
so a re-run never fetches them again. Trades have their own id-keyed record (:mod:`.archive`).

In the dataset, price candles are ``data_type=ohlcv_mark`` (``_index``, ``_premium``) with
``timeframe=1h``; funding is ``data_type=funding`` (no timeframe); open interest is
``data_type=open_interest`` with ``timeframe=<period>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from data_collector.markets import SERIES_CODES, TIMEFRAME_CODES, split_series
from data_collector.storage.columns import pieces_frame
from data_collector.storage.parquet_files import OHLCV_SPEC, Columns, DataSpec

if TYPE_CHECKING:
    import pandas as pd

FUNDING_SPEC = DataSpec("funding", "ts", (("ts", "<i8"), ("rate", "<f8"), ("mark_price", "<f8")))
OPEN_INTEREST_SPEC = DataSpec("open_interest", "ts", (("ts", "<i8"), ("amount", "<f8"), ("value", "<f8")))
#: Series code -> series key (``"mark:1h"``, ``"funding"``, ``"oi:5m"``).
CODE_SERIES = {code: key for key, code in SERIES_CODES.items()}


@dataclass(frozen=True, slots=True)
class Series:
    """One stored series: its spec, its rows' key in PostgreSQL, its coverage code, and the
    ``(data_type, timeframe)`` of its files."""

    spec: DataSpec
    db_key: tuple[int, ...]
    code: int
    data_type: str
    timeframe: str | None


def series_of(instrument_id: int, code: int) -> Series | None:
    """The series behind a coverage code, or ``None`` for a code this version does not know."""
    key = CODE_SERIES.get(code)
    if key is None:
        return None
    if key == "funding":
        return Series(FUNDING_SPEC, (instrument_id,), code, "funding", None)
    if key.startswith("oi:"):
        period = key[3:]
        return Series(
            OPEN_INTEREST_SPEC, (instrument_id, TIMEFRAME_CODES[period]), code, "open_interest", period
        )
    timeframe, price = split_series(key)
    data_type = "ohlcv" if price == "last" else f"ohlcv_{price}"
    return Series(OHLCV_SPEC, (instrument_id, code), code, data_type, timeframe)


def series_for(instrument_id: int, key: str) -> Series:
    """The series of a series key (``"1h"``, ``"mark:1h"``, ``"funding"``, ``"oi:5m"``)."""
    series = series_of(instrument_id, SERIES_CODES[key])
    assert series is not None  # every key of SERIES_CODES has one
    return series


def fields_frame(columns: Columns | Sequence[Columns]) -> pd.DataFrame:
    """Columns (but ``ts``; or consecutive pieces of them) as a DataFrame indexed by UTC time
    (``time``), as the stores' frames."""
    spec = columns.spec if isinstance(columns, Columns) else columns[0].spec
    return pieces_frame(columns, [k for k in spec.names if k != "ts"])
