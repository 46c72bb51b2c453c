"""The README's DuckDB, polars and pyarrow snippets, run as written against an archived dataset."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from data_collector.storage import CandleStore
from data_collector.storage.archive import ArchiveSettings, ParquetArchive
from tests.storage.test_archive import store  # noqa: F401  (the fixture)
from tests.support.archive import CUTOFF_MS, START_MS, TIMEFRAME, VENUE, seed, seed_trades

ROOT = Path(__file__).resolve().parents[2]


def readme_snippets() -> dict[str, str]:
    """The Parquet section's python blocks, by their first line (``# DuckDB`` ...)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Long-term storage: the Parquet tier", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(# \w+)\n(.*?)```", section, flags=re.S)
    return {name[2:]: code for name, code in blocks}


def test_the_readme_has_the_three_snippets() -> None:
    assert set(readme_snippets()) == {"DuckDB", "polars", "pyarrow"}


@pytest.mark.parametrize("reader", ["DuckDB", "polars", "pyarrow"])
async def test_readme_snippet_reads_the_archived_candles(
    store: CandleStore,  # noqa: F811
    tmp_path: Path,
    reader: str,
) -> None:
    pytest.importorskip(reader.lower())
    instrument = await seed(store)
    await seed_trades(store, instrument)  # trade files beside the candles' must not get mixed in
    archive_root = tmp_path / "archive"
    report = await ParquetArchive(ArchiveSettings(archive_root)).archive(store, VENUE, CUTOFF_MS)
    assert report.months_verified == 4
    want = await store.load_frame(instrument.id, TIMEFRAME, START_MS, CUTOFF_MS)
    # Only January and February are in the dataset; the snippets filter on timeframe '1m'.
    code = readme_snippets()[reader].replace("data/archive", str(archive_root)).replace("'1m'", "'1h'")
    code = code.replace('"1m"', '"1h"')
    scope: dict[str, object] = {}
    exec(code, scope)
    frame = scope["frame"]
    if reader == "polars":
        frame = frame.to_pandas()  # type: ignore[attr-defined]
    assert isinstance(frame, pd.DataFrame)
    got = frame.set_index("ts")[list(want.columns)]
    assert len(got) == len(want)
    assert (pd.DatetimeIndex(got.index).as_unit("ns").tz_convert("UTC") == want.index.as_unit("ns")).all()
    assert (got.to_numpy() == want.to_numpy()).all()
