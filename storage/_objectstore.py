"""Object-store roots (``s3://bucket/prefix``): the same layout as on disk, one object per file.

Writers PUT each file whole: S3 makes an object visible only once its upload completed (a single
PutObject, or a multipart upload's final CompleteMultipartUpload), so the rule that a reader sees a
file whole or not at all needs no temp key and no rename. The bytes are serialized in memory first,
so a failure can only happen in the upload of a finished file, never halfway through encoding it.

The endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), as for the
AWS CLI and boto3; pyarrow's S3 filesystem does the HTTP.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from logprobe.storage._partitions import is_partition

SCHEME = "s3://"
# A flush thread must not hang on a dead endpoint; a failed PUT is retried at the next flush.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 30.0


def is_object_uri(root: object) -> bool:
    return isinstance(root, str) and root.startswith(SCHEME)


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime_ns: int


class ObjectRoot:
    """``s3://bucket/prefix``: where a store lives in an S3-compatible object store."""

    def __init__(self, uri: str) -> None:
        rest = uri[len(SCHEME) :].rstrip("/") if uri.startswith(SCHEME) else ""
        if not rest or any(part in ("", ".", "..") for part in rest.split("/")):
            raise ValueError(f"invalid object-store root {uri!r}: expected s3://bucket[/prefix]")
        self.uri = SCHEME + rest
        self.base = rest  # bucket/prefix, as pyarrow's filesystem names paths
        self._fs: pafs.S3FileSystem | None = None
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"ObjectRoot({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRoot) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def endpoint(self) -> str:
        return _endpoint() or "aws"

    @property
    def fs(self) -> pafs.S3FileSystem:
        """One S3 client per root, made on first use: constructing it never touches the network."""
        with self._lock:
            if self._fs is None:
                self._fs = pafs.S3FileSystem(
                    endpoint_override=_endpoint(),
                    region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                    connect_timeout=CONNECT_TIMEOUT_S,
                    request_timeout=REQUEST_TIMEOUT_S,
                    allow_bucket_creation=False,
                    allow_bucket_deletion=False,
                )
            return self._fs

    def key(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def put_table(self, key: str, table: pa.Table, compression: str) -> None:
        """Write ``table`` as one Parquet object at ``key``, visible only once complete."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=compression)
        self.put_bytes(key, sink.getvalue())

    def put_bytes(self, key: str, data: pa.Buffer | bytes) -> None:
        out = self.fs.open_output_stream(key)
        out.write(data)
        out.close()

    def put_file(self, key: str, path: os.PathLike[str] | str) -> None:
        """Upload a local file as one object, streamed (multipart past pyarrow's part size, which
        S3 also shows only once complete). Should the upload fail halfway and pyarrow still complete
        what it sent, that object lacks Parquet's trailing footer: readers list it as unreadable, and
        compaction deletes the originals only after this returned."""
        with open(path, "rb") as src, self.fs.open_output_stream(key) as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)

    def partitions(self, table: str) -> list[str]:
        """The ``run_id=...`` folder names under ``table`` (one delimiter listing, not every key)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.key(table), allow_not_found=True))
        return sorted(
            name
            for info in infos
            if info.type == pafs.FileType.Directory and is_partition(name := info.base_name)
        )

    def files(self, table: str, partition: str) -> list[RemoteFile]:
        """Every object of one partition (the caller keeps the data files)."""
        selector = pafs.FileSelector(self.key(table, partition), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                mtime_ns = info.mtime_ns if info.mtime_ns is not None else 0
                out.append(RemoteFile(info.base_name, int(info.size or 0), mtime_ns))
        return sorted(out, key=lambda f: f.name)

    def read(self, key: str) -> bytes:
        with self.fs.open_input_stream(key) as src:
            return src.read()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # already gone: deleting is idempotent
            self.fs.delete_file(key)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
