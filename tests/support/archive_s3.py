"""A local S3-compatible server (moto's, from PyPI) for the Parquet tier's ``s3://`` tests, and a
process that archives into it and SIGKILLs itself while an upload is open.

Run as ``python -m tests.support.archive_s3 URL SCHEMA DATASET_URI DATA_TYPE``: it archives the
data type before :data:`~tests.support.archive.CUTOFF_MS` with ``prune=True`` and kills itself
the first time a month's file is built and its upload opened but not completed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from data_collector.config import load_config
from data_collector.storage import open_store
from data_collector.storage.archive import ArchiveSettings, ParquetArchive
from tests.support.archive import CUTOFF_MS, VENUE, store_config

ROOT = Path(__file__).resolve().parents[2]
#: What the server accepts (moto takes any key) and the dataset's clients read from the environment.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server(timeout_s: float = 60.0) -> Iterator[str]:
    """Run moto's S3 server (:mod:`tests.support.moto_s3`) on a free port of 127.0.0.1; yield
    ``host:port`` once it accepts connections."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.moto_s3", "-H", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:  # the condition: the port accepts a connection
            if proc.poll() is not None:
                raise RuntimeError(f"moto.server exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("moto.server did not start listening") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def dataset_uri(endpoint: str, bucket: str, prefix: str = "archive") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


async def archive_and_die(url: str, schema: str, uri: str, data_type: str) -> None:
    def hook(at: str, path: str) -> None:
        if at == "write":
            os.kill(os.getpid(), signal.SIGKILL)

    archive = ParquetArchive(ArchiveSettings(uri))
    async with open_store(load_config(store_config(url, schema))) as store:
        await archive.archive(store, VENUE, CUTOFF_MS, data_types=[data_type], prune=True, hook=hook)


if __name__ == "__main__":
    asyncio.run(archive_and_die(*sys.argv[1:5]))
