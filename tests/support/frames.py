"""A DataFrame with every dtype the cache serializer must round-trip."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pandas as pd


def frame_with_everything() -> pd.DataFrame:
    index = pd.date_range("2024-03-31 00:00", periods=6, freq="h", tz="Europe/Berlin", name="ts")
    return pd.DataFrame(
        {
            "open": [1.0, np.nan, 3.5, 4.25, np.nan, 6.0],
            "volume": np.arange(6, dtype=np.int64) * 10**12,
            "trades": np.arange(6, dtype=np.uint16),
            "f32": np.array([1, 2, np.nan, 4, 5, 6], dtype=np.float32),
            "flag": [True, False, True, True, False, True],
            "symbol": ["BTC/USDT", None, "SOL/USDT", "ETH/USDT", "x", "y"],
            "mixed": [Decimal("1.1"), None, "a", 1, 2.5, dt.date(2024, 1, 1)],
            "seen": pd.date_range("2020-01-01", periods=6, freq="D", tz="UTC"),
            "naive": pd.to_datetime(["2024-01-01", None, "2024-01-03", "2024-01-04", "2024-01-05", None]),
            "wait": pd.to_timedelta([1, 2, None, 4, 5, 6], unit="s"),
            "nullable": pd.array([1, None, 3, 4, 5, None], dtype="Int64"),
            "side": pd.Categorical(["buy", "sell", "buy", None, "sell", "buy"], categories=["sell", "buy"]),
            3: [1, 2, 3, 4, 5, 6],
        },
        index=index,
    )
