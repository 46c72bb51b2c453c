"""The Parquet tier on an object store: ``archive.path: s3://bucket/prefix``, through pyarrow's
filesystem layer (:func:`pyarrow.fs.FileSystem.from_uri`).

The URI's query carries the options pyarrow knows, e.g.
``s3://archive/candles?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1`` for a
local S3-compatible server; credentials come from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) or the instance's role. The bucket must exist.

Object stores have no rename, so a month is written differently from a local directory:

* The file is built whole in memory, then uploaded to its final key (one PutObject up to the
  10 MB part size: ``allow_delayed_open`` is set unless the URI says otherwise). An object
  appears whole when its upload completes (S3's PutObject and CompleteMultipartUpload are
  atomic); an upload cut short (a kill, a lost connection) leaves no object a reader sees (an
  incomplete multipart upload is invisible; a bucket lifecycle rule
  ``AbortIncompleteMultipartUpload`` reclaims its parts). A month's previous object stays
  readable until the new one completes.
* The manifest is uploaded after the file. A crash between the two leaves a file whose manifest
  does not match: verification fails, nothing is pruned, and the next run writes the month again.
* There is no fsync: a completed upload is durable.

Tested against moto's server (``tests/storage/test_archive_s3.py``) for files under the part
size, which go up in one PutObject, and for a larger file (a month of a very busy pair's trades),
which goes up as a multipart upload. moto 5.2 names its CompleteMultipartUpload reply other than
S3 does, which pyarrow reads as an "error embedded in a 200 OK response"; the tests run moto with
S3's name (``tests/support/moto_s3.py``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from data_collector.errors import UsageError
from data_collector.storage.parquet_files import (
    FILE_NAME,
    MANIFEST_NAME,
    ZSTD_LEVEL,
    ArchiveWriteError,
    Columns,
    Manifest,
    MonthKey,
    StepHook,
    write_parquet,
)


def is_remote(path: object) -> bool:
    """Whether ``archive.path`` names an object store (``s3://...``) rather than a directory."""
    return "://" in str(path)


@dataclass(frozen=True, slots=True)
class RemoteRoot:
    """Where the dataset lives on an object store: the filesystem and ``bucket/prefix``."""

    filesystem: pafs.FileSystem
    root: PurePosixPath
    #: The URI without its query or credentials, for messages.
    name: str

    @classmethod
    def open(cls, uri: str) -> RemoteRoot:
        """Raises: UsageError: pyarrow does not take the URI (an unknown scheme, a bad option)."""
        parts = urlsplit(uri)
        name = urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
        if parts.scheme == "s3" and "allow_delayed_open" not in parts.query:
            # Nothing goes to the server before the first part fills or the stream closes: a
            # month's file (under the 10 MB part size) is one PutObject at close.
            query = "&".join(q for q in (parts.query, "allow_delayed_open=true") if q)
            uri = urlunsplit(parts._replace(query=query))
        try:
            filesystem, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise UsageError(
                f"archive.path {name}: {exc}; give s3://bucket/prefix, options as a query "
                "(?endpoint_override=host:port&scheme=http)"
            ) from None
        return cls(filesystem, PurePosixPath(path), name)

    def exists(self, path: PurePosixPath) -> bool:
        return bool(self.filesystem.get_file_info(str(path)).type != pafs.FileType.NotFound)

    def load_manifest(self, path: PurePosixPath) -> Manifest | None:
        """The manifest at ``path``, or ``None`` if there is none or it does not parse."""
        if not self.exists(path):
            return None
        with self.filesystem.open_input_stream(str(path)) as source:
            return Manifest.parse(source.read())

    def check_writable(self) -> None:
        """Prove an object can be written under the prefix, before anything is read.

        Raises:
            UsageError: it cannot (no such bucket, no permission, no server there).
        """
        probe = self.root / f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self._put(probe, b"probe")
            self.filesystem.delete_file(str(probe))
        except OSError as exc:
            raise UsageError(f"archive.path {self.name}: cannot write there ({_first_line(exc)})") from None

    def write_month(
        self,
        key: MonthKey,
        columns: Columns,
        *,
        row_group_rows: int,
        zstd_level: int = ZSTD_LEVEL,
        before_upload: StepHook | None = None,
    ) -> Manifest:
        """Upload a month's file, then its manifest (see the module's notes); return the manifest.

        ``before_upload`` is called with the object's key once the file is built and the upload
        is open but not completed (tests stop the process there).

        Raises:
            ArchiveWriteError: an upload failed; the month's previous objects stay as they were.
        """
        directory = key.directory(self.root)
        sink = pa.BufferOutputStream()
        write_parquet(columns, sink, row_group_rows, zstd_level)
        data = sink.getvalue()
        manifest = Manifest.of(columns, data.size)
        try:
            self._put(directory / FILE_NAME, data, before_upload)
            self._put(directory / MANIFEST_NAME, manifest.to_json().encode())
        except OSError as exc:
            raise ArchiveWriteError(
                f"archive {self.name}: uploading {key} failed: {_first_line(exc)}; nothing was pruned, "
                "run again"
            ) from None
        return manifest

    def _put(self, path: PurePosixPath, data: bytes | pa.Buffer, hook: StepHook | None = None) -> None:
        # Not a ``with`` block: leaving one on an error would close the stream, which completes
        # the upload of whatever was written. One write of the whole object, then close.
        out = self.filesystem.open_output_stream(str(path))
        out.write(data)
        if hook is not None:
            hook("write", str(path))
        out.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
