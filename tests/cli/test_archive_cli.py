"""``data-collector archive``: bad input is one line and the documented exit code, nothing lost."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_collector.cli.archive import main
from data_collector.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from data_collector.config import load_config
from data_collector.storage import CandleStore, open_store, parquet_files
from data_collector.storage.parquet_files import FILE_NAME
from tests.storage.test_archive import JANUARY
from tests.support.archive import END_MS, START_MS, TIMEFRAME, seed, store_config
from tests.support.backfill import write_config
from tests.support.services import PG_URL

OLDER_THAN = "2024-03-01"


@pytest.fixture
async def seeded(pg_schema: str, tmp_path: Path) -> AsyncIterator[tuple[CandleStore, Path]]:
    """The seeded store and a config file pointing at it (archive.path: tmp_path/archive)."""
    config = {**store_config(PG_URL, pg_schema), "archive": {"path": str(tmp_path / "archive")}}
    async with open_store(load_config(config)) as store:
        await seed(store)
        yield store, write_config(tmp_path / "config.yaml", config)


async def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def _rows(store: CandleStore) -> int:
    return len(await store.load(1, TIMEFRAME, START_MS, END_MS))


def _one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert all(w in err for w in words), err


async def test_archive_and_prune_exit_0(
    seeded: tuple[CandleStore, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, config = seeded
    code, out, err = await _run(["--config", str(config), "--older-than", OLDER_THAN, "--prune"], capsys)
    assert (code, err) == (EXIT_OK, "") and "2 pruned" in out
    assert await _rows(store) == (END_MS - 1_709_251_200_000) // 3_600_000


async def test_older_than_in_the_future_exits_2(
    seeded: tuple[CandleStore, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, config = seeded
    code, _, err = await _run(["--config", str(config), "--older-than", "2999-01-01", "--prune"], capsys)
    assert code == EXIT_USAGE
    _one_line(err, "--older-than 2999-01-01", "future")
    assert await _rows(store) == (END_MS - START_MS) // 3_600_000 - 10


async def test_an_unwritable_path_exits_2(
    seeded: tuple[CandleStore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, config = seeded
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    argv = [
        "--config",
        str(config),
        "--older-than",
        OLDER_THAN,
        "--prune",
        "--path",
        str(blocker / "archive"),
    ]
    code, _, err = await _run(argv, capsys)
    assert code == EXIT_USAGE
    _one_line(err, str(blocker), "choose a writable directory")
    assert await _rows(store) == (END_MS - START_MS) // 3_600_000 - 10


async def test_a_dataset_of_a_newer_schema_version_exits_2(
    seeded: tuple[CandleStore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, config = seeded
    assert (await _run(["--config", str(config), "--older-than", OLDER_THAN], capsys))[0] == EXIT_OK
    path = JANUARY.directory(tmp_path / "archive") / FILE_NAME
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"data_collector.schema_version": b"2"}), path)
    code, _, err = await _run(["--config", str(config), "--older-than", OLDER_THAN, "--prune"], capsys)
    assert code == EXIT_USAGE
    _one_line(err, str(path), "schema version 2", "upgrade")
    assert await _rows(store) == (END_MS - START_MS) // 3_600_000 - 10


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs: room for the directories, not for a month of candles."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill_leaving_one_page(path: Path) -> None:
    """Fill the file system, then free one 4 kB page: less than a month's file needs."""
    with open(path, "wb") as out:
        try:
            out.write(b"\0" * (1 << 20))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(path, path.stat().st_size - 4096)


async def test_a_full_disk_exits_1_and_leaves_no_half_file(
    seeded: tuple[CandleStore, Path], tiny_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, config = seeded
    _fill_leaving_one_page(tiny_disk / "filler")
    argv = ["--config", str(config), "--older-than", OLDER_THAN, "--prune", "--path", str(tiny_disk / "a")]
    code, _, err = await _run(argv, capsys)
    assert code == EXIT_FAILED
    _one_line(err, "No space left on device", "nothing was pruned")
    assert await _rows(store) == (END_MS - START_MS) // 3_600_000 - 10
    # No temporary file is left; a month file that did fit is whole (its manifest did not).
    files = [p for p in (tiny_disk / "a").rglob("*") if p.is_file()]
    assert not [p.name for p in files if p.name.startswith(".")], files
    assert all(pq.read_table(p).num_rows > 0 for p in files if p.name == FILE_NAME)


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written: a full disk at the
    filesystem layer, for machines where a tmpfs cannot be mounted (the test above skips)."""

    def __init__(self, path: str | os.PathLike[str], mode: str, room: int) -> None:
        self._file = open(path, mode)  # noqa: SIM115  (closed by __exit__ / close)
        self._room = room

    def write(self, data: bytes) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self._file.write(data))

    def __getattr__(self, name: str) -> object:
        return getattr(self._file, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


async def test_a_write_error_of_a_full_disk_injected_at_the_file_layer_exits_1(
    seeded: tuple[CandleStore, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, config = seeded
    monkeypatch.setattr(parquet_files, "open", lambda p, m="r": _FullDisk(p, m, 64), raising=False)
    code, _, err = await _run(["--config", str(config), "--older-than", OLDER_THAN, "--prune"], capsys)
    assert code == EXIT_FAILED
    _one_line(err, "No space left on device", "nothing was pruned")
    assert await _rows(store) == (END_MS - START_MS) // 3_600_000 - 10
    files = [p for p in (tmp_path / "archive").rglob("*") if p.is_file()]
    assert files == [], files  # no temporary file left, no month file without its bytes
