"""The Parquet tier on ``s3://``, against a local S3-compatible server (moto's, from PyPI).

Skips, saying why, when moto's server is not installed (``pip install 'moto[server]'``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from data_collector.errors import UsageError
from data_collector.storage import CandleStore, Instrument, TradeBatch, TradeCoverage
from data_collector.storage import archive as tier
from data_collector.storage.parquet_files import FILE_NAME, MANIFEST_NAME, MonthKey
from tests.storage.test_archive import store  # noqa: F401  (the fixture)
from tests.support.archive import CUTOFF_MS, END_MS, START_MS, SYMBOL, TIMEFRAME, VENUE, seed, seed_trades
from tests.support.archive_s3 import CREDENTIALS, dataset_uri, moto_server
from tests.support.services import PG_URL

ROOT = Path(__file__).resolve().parents[2]
JANUARY = MonthKey(VENUE, "spot", TIMEFRAME, SYMBOL, 2024, 1)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    for module in ("moto", "flask", "flask_cors"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"moto's S3 server is not installed ({module} missing): pip install 'moto[server]'")
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[pafs.S3FileSystem, str]:
    """A fresh bucket; the AWS variables set for this process and the ones it starts."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    filesystem = pafs.S3FileSystem(
        endpoint_override=s3_endpoint,
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
        allow_delayed_open=True,  # as the archive opens it: see parquet_remote
    )
    name = f"t-{uuid.uuid4().hex[:12]}"
    filesystem.create_dir(name)
    return filesystem, name


def _uri(s3_endpoint: str, bucket: tuple[pafs.S3FileSystem, str]) -> str:
    return dataset_uri(s3_endpoint, bucket[1])


def _objects(bucket: tuple[pafs.S3FileSystem, str]) -> list[str]:
    filesystem, name = bucket
    infos = filesystem.get_file_info(pafs.FileSelector(name, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


async def _seeded(store: CandleStore) -> tuple[Instrument, pd.DataFrame]:  # noqa: F811
    """The seeded instrument and its candles as read before any move."""
    instrument = await seed(store)
    return instrument, await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)


async def test_archive_to_s3_with_prune_then_both_tiers_read_the_data_before(
    store: CandleStore,  # noqa: F811
    s3_endpoint: str,
    bucket: tuple[pafs.S3FileSystem, str],
) -> None:
    instrument = await seed(store)
    await seed_trades(store, instrument)
    before = await store.load_frame(instrument.id, TIMEFRAME, START_MS, END_MS)
    trades_before = await store.load_trades_frame(instrument.id, START_MS, END_MS)
    archive = tier.ParquetArchive(tier.ArchiveSettings(_uri(s3_endpoint, bucket)))
    report = await archive.archive(store, VENUE, CUTOFF_MS, prune=True)
    assert report.failed == [] and report.months_pruned == 4
    january = JANUARY.directory(Path(bucket[1]) / "archive").as_posix()
    assert {f"{january}/{FILE_NAME}", f"{january}/{MANIFEST_NAME}"} <= set(_objects(bucket))
    assert len(await store.load(instrument.id, TIMEFRAME, START_MS, END_MS)) < len(before)
    now = await tier.load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)
    pd.testing.assert_frame_equal(now, before)
    trades_now = await tier.load_trades_tiers(store, archive, instrument, START_MS, END_MS)
    pd.testing.assert_frame_equal(trades_now, trades_before)
    again = await archive.archive(store, VENUE, CUTOFF_MS, prune=True)
    assert (again.months_written, again.failed) == (0, [])


#: pyarrow's S3 output stream uploads in parts of this size; a larger object is a multipart upload.
PART_SIZE = 10 * 1024 * 1024


async def _busy_january(store: CandleStore) -> Instrument:  # noqa: F811
    """A January of trades whose values do not compress (random prices, quantities and plain
    trade ids): its Parquet file is larger than one upload part."""
    instrument = await store.ensure_instrument(VENUE, SYMBOL, base="SOL", quote="USDT")
    rng = np.random.default_rng(11)
    n = 560_000
    ids, ts = np.arange(n), START_MS + np.arange(n) * 4_000  # every 4 s: 26 days
    first = np.cumsum(rng.integers(1, 2**20, n))
    columns = (
        ids,
        ts,
        rng.random(n) * 100,
        rng.random(n),
        first,
        first + rng.integers(0, 9, n),
        ids % 2 == 0,
    )
    rows = list(zip(*(c.tolist() for c in columns), strict=True))
    coverage = [TradeCoverage(0, n, START_MS, int(ts[-1]) + 1)]
    await store.write_trades([TradeBatch(instrument.id, rows, coverage)])
    return instrument


async def test_a_month_larger_than_a_part_goes_up_as_a_multipart_upload_and_reads_back(
    store: CandleStore,  # noqa: F811
    s3_endpoint: str,
    bucket: tuple[pafs.S3FileSystem, str],
) -> None:
    instrument = await _busy_january(store)
    before = await store.load_trades_frame(instrument.id, START_MS, END_MS)
    archive = tier.ParquetArchive(tier.ArchiveSettings(_uri(s3_endpoint, bucket)))
    report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=["trades"], prune=True)
    assert (report.months_pruned, report.failed) == (1, [])
    filesystem, name = bucket
    files = [
        i
        for i in filesystem.get_file_info(pafs.FileSelector(name, recursive=True))
        if i.path.endswith(FILE_NAME)
    ]
    assert len(files) == 1 and files[0].size > PART_SIZE, files
    assert await store.load_trades(instrument.id, START_MS, END_MS) == []
    now = await tier.load_trades_tiers(store, archive, instrument, START_MS, END_MS)
    pd.testing.assert_frame_equal(now, before)


async def _killed_mid_upload(
    pg_schema: str, s3_endpoint: str, bucket: tuple[pafs.S3FileSystem, str], data_type: str
) -> str:
    """Archive ``data_type`` with prune in a process that SIGKILLs itself with the first upload
    open; check that no object is there; return the dataset's URI."""
    uri = _uri(s3_endpoint, bucket)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.archive_s3", PG_URL, pg_schema, uri, data_type, cwd=ROOT
    )
    assert await asyncio.wait_for(proc.wait(), 120) == -9
    assert _objects(bucket) == []
    return uri


# The multipart case takes ~30 s (a month over the part size written, killed, written again):
# -m slow; CI runs the single-object case and the multipart round trip above.
@pytest.mark.parametrize("data_type", ["ohlcv", pytest.param("trades", marks=pytest.mark.slow)])
async def test_a_kill_while_an_upload_is_open_leaves_no_object_then_a_rerun_converges(
    store: CandleStore,  # noqa: F811
    pg_schema: str,
    s3_endpoint: str,
    bucket: tuple[pafs.S3FileSystem, str],
    data_type: str,
) -> None:
    """ohlcv: January's small file, one PutObject; trades: a month over the part size, a
    multipart upload whose parts are sent but not completed."""
    if data_type == "ohlcv":
        instrument, before = await _seeded(store)
    else:
        instrument = await _busy_january(store)
        before = await store.load_trades_frame(instrument.id, START_MS, END_MS)

    async def both_tiers(archive: tier.ParquetArchive) -> pd.DataFrame:
        if data_type == "ohlcv":
            return await tier.load_ohlcv_tiers(store, archive, instrument, TIMEFRAME, START_MS, END_MS)
        return await tier.load_trades_tiers(store, archive, instrument, START_MS, END_MS)

    # Killed with the month's file built and its upload open: nothing a reader would see.
    uri = await _killed_mid_upload(pg_schema, s3_endpoint, bucket, data_type)
    filesystem, name = bucket
    assert ds.dataset(f"{name}/archive", filesystem=filesystem, format="parquet").files == []
    archive = tier.ParquetArchive(tier.ArchiveSettings(uri))
    pd.testing.assert_frame_equal(await both_tiers(archive), before)  # all still in PostgreSQL
    report = await archive.archive(store, VENUE, CUTOFF_MS, data_types=[data_type], prune=True)
    months = 2 if data_type == "ohlcv" else 1
    assert (report.months_written, report.months_pruned, report.failed) == (months, months, [])
    pd.testing.assert_frame_equal(await both_tiers(archive), before)


async def test_a_changed_object_is_caught_by_verification_and_not_pruned(
    store: CandleStore,  # noqa: F811
    s3_endpoint: str,
    bucket: tuple[pafs.S3FileSystem, str],
) -> None:
    instrument, before = await _seeded(store)
    filesystem, _ = bucket

    def change_a_price(step: str, path: str) -> None:
        # Still valid Parquet with the same rows: only the content hash can tell.
        if step == "verify":
            table = pq.read_table(path, filesystem=filesystem)
            close = table.column("close").to_numpy().copy()
            close[0] += 0.01
            index = table.schema.get_field_index("close")
            table = table.set_column(index, table.schema.field(index), pa.array(close))
            pq.write_table(table, path, filesystem=filesystem)

    archive = tier.ParquetArchive(tier.ArchiveSettings(_uri(s3_endpoint, bucket)))
    report = await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True, hook=change_a_price)
    assert report.months_pruned == 0 and len(report.failed) == 2
    # Caught by the read-back against the manifest, before the prune's own comparison.
    assert all("does not match its manifest; not pruned" in line for line in report.failed)
    assert len(await store.load(instrument.id, TIMEFRAME, START_MS, END_MS)) == len(before)


async def test_a_missing_bucket_is_one_usage_error_line(
    store: CandleStore,  # noqa: F811
    s3_endpoint: str,
    bucket: tuple[pafs.S3FileSystem, str],
) -> None:
    await seed(store)
    archive = tier.ParquetArchive(tier.ArchiveSettings(dataset_uri(s3_endpoint, "no-such-bucket-here")))
    with pytest.raises(UsageError) as caught:
        await archive.archive_ohlcv(store, VENUE, CUTOFF_MS, prune=True)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("archive.path s3://no-such-bucket-here/archive:")
    assert "endpoint_override" not in message  # the URI's query is not repeated
