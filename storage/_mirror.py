"""A local copy of an object-store root, so DuckDB reads object-store data as fast as local files.

Committed files never change (every name is unique and written once) and compaction only adds a
merged file and deletes the originals, so a copy is never wrong, only behind: it can lack the newest
files, and a file deleted upstream stays readable here until the next listing of its partition. The
catalog hides superseded originals either way. This makes a read-through cache of whole files safe,
and it turns every query after the first download into a local-disk query (bench/object_store.py
measures it against reading the objects through pyarrow datasets on each query).

Listing is what costs on a large store, so a sync does not list every key every tick:

- one delimiter listing per table finds the partitions (runs), a few keys per 1,000 runs;
- partitions that are new, or changed within the last ``hot_s`` seconds (live runs), are listed
  on every sync;
- of the quiet ones, only the ``cold_per_sync`` listed longest ago are, so a run that wakes up after
  more than ``hot_s`` seconds of silence is noticed within (quiet partitions / cold_per_sync) syncs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from logprobe.storage._layout import SUFFIX, TMP_PREFIX, check_name
from logprobe.storage._objectstore import ObjectRoot, RemoteFile
from logprobe.storage._partitions import run_of_partition
from logprobe.storage._schema import TABLES

log = logging.getLogger(__name__)

CACHE_ENV = "LOGPROBE_CACHE_DIR"
HOT_S = 300.0
COLD_PER_SYNC = 16
DOWNLOAD_THREADS = 8


@dataclass
class _Partition:
    listed_at: float = float("-inf")  # time.monotonic() of the last listing
    changed_at: float = float("-inf")  # ... of the last listing that found a change
    files: dict[str, RemoteFile] = field(default_factory=dict)


@dataclass
class SyncStats:
    """What the last ``sync()`` did: for the live-refresh benchmark and the tests of listing cost."""

    listings: int = 0
    downloads: int = 0
    bytes_downloaded: int = 0
    removed: int = 0
    seconds: float = 0.0


def cache_root() -> Path:
    """Where logprobe keeps what it can rebuild (object-store copies, kept scans):
    ``$LOGPROBE_CACHE_DIR``, else ``$XDG_CACHE_HOME/logprobe``, else ``~/.cache/logprobe``."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "logprobe"
    )
    return Path(base).expanduser().absolute()


def default_cache_dir(root: ObjectRoot) -> Path:
    """``cache_root()`` / objects / endpoint hash / bucket / prefix.

    The endpoint is part of the path so that two S3 services with a bucket of the same name (a test
    server and AWS, say) never share a copy.
    """
    endpoint = hashlib.sha256(root.endpoint.encode()).hexdigest()[:12]
    return cache_root() / "objects" / endpoint / root.base


class Mirror:
    _shared: ClassVar[dict[tuple[str, Path], Mirror]] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, remote: ObjectRoot) -> Mirror:
        """This process's one copy of ``remote``: every Store over it (one per dashboard tab, the
        alert watcher) shares its listings instead of each listing the bucket every second."""
        directory = default_cache_dir(remote)
        with cls._shared_lock:
            mirror = cls._shared.get((remote.uri, directory))
            if mirror is None:
                mirror = cls._shared[(remote.uri, directory)] = cls(remote, directory)
            return mirror

    def __init__(
        self,
        remote: ObjectRoot,
        directory: Path | None = None,
        *,
        hot_s: float = HOT_S,
        cold_per_sync: int = COLD_PER_SYNC,
    ) -> None:
        self.remote = remote
        self.dir = directory if directory is not None else default_cache_dir(remote)
        self.hot_s = hot_s
        self.cold_per_sync = cold_per_sync
        self.last = SyncStats()
        self.last_error: str | None = None
        self._partitions: dict[tuple[str, str], _Partition] = {}
        self._lock = threading.Lock()
        self._synced_at = float("-inf")

    def sync(
        self, *, full: bool = False, tables: tuple[str, ...] = TABLES, max_age_s: float = 0.0
    ) -> SyncStats:
        """Bring the copy up to date (all partitions if ``full``); never raises for a network error,
        which is kept in ``last_error`` while the copy goes on serving what it has.

        A sync that finished less than ``max_age_s`` ago counts as current: Stores sharing a mirror
        pass their refresh cadence, so N readers cost one listing per interval, not N.
        """
        with self._lock:
            if not full and time.monotonic() - self._synced_at < max_age_s:
                return SyncStats()
            stats = self._locked_sync(full, tables)
            self._synced_at = time.monotonic()
            return stats

    def _locked_sync(self, full: bool, tables: tuple[str, ...]) -> SyncStats:
        started = time.perf_counter()
        stats = SyncStats()
        try:
            self._sync(full, tables, stats)
        except OSError as exc:  # pyarrow reports S3 and network failures as OSError
            if self.last_error is None:
                log.warning("logprobe: cannot list %s (showing the local copy): %s", self.remote, exc)
            self.last_error = f"{type(exc).__name__}: {exc}"
        else:
            if self.last_error is not None:
                log.warning("logprobe: listing %s works again", self.remote)
            self.last_error = None
        stats.seconds = time.perf_counter() - started
        self.last = stats
        return stats

    def _sync(self, full: bool, tables: tuple[str, ...], stats: SyncStats) -> None:
        now = time.monotonic()
        due: list[tuple[str, str]] = []
        quiet: list[tuple[str, str]] = []
        for table in tables:
            # A partition whose run id is not a valid name cannot come from a logprobe writer, and
            # its name would become a local path: leave it out.
            names = [n for n in self.remote.partitions(table) if _valid_partition(n)]
            stats.listings += 1
            present = {(table, name) for name in names}
            for key in [k for k in self._partitions if k[0] == table and k not in present]:
                del self._partitions[key]  # the whole run was deleted upstream
                shutil.rmtree(self.dir / key[0] / key[1], ignore_errors=True)
            for key in sorted(present):
                state = self._partitions.setdefault(key, _Partition())
                if full or state.listed_at == float("-inf") or now - state.changed_at < self.hot_s:
                    due.append(key)
                else:
                    quiet.append(key)
        quiet.sort(key=lambda k: self._partitions[k].listed_at)
        due += quiet[: self.cold_per_sync]
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            for key, listing in zip(due, pool.map(lambda k: self.remote.files(*k), due), strict=True):
                stats.listings += 1
                self._apply(key, listing, now, stats, pool)

    def _apply(
        self,
        key: tuple[str, str],
        listing: list[RemoteFile],
        now: float,
        stats: SyncStats,
        pool: ThreadPoolExecutor,
    ) -> None:
        state = self._partitions[key]
        local_dir = self.dir / key[0] / key[1]
        local = _local_files(local_dir)
        listing = [f for f in listing if f.name.endswith(SUFFIX) and not f.name.startswith(TMP_PREFIX)]
        wanted = {f.name: f for f in listing}
        fetch = [f for f in listing if local.get(f.name) != f.size]
        gone = [name for name in local if name not in wanted]
        if fetch:
            local_dir.mkdir(parents=True, exist_ok=True)
            for size in pool.map(lambda f: self._download(key, f), fetch):
                if size is not None:
                    stats.downloads += 1
                    stats.bytes_downloaded += size
        for name in gone:
            (local_dir / name).unlink(missing_ok=True)
            stats.removed += 1
        if fetch or gone or wanted != state.files:
            state.changed_at = now
        state.files = wanted
        state.listed_at = now

    def _download(self, key: tuple[str, str], f: RemoteFile) -> int | None:
        """Copy one object whole into place (temp file + rename, as the local writer does)."""
        final = self.dir / key[0] / key[1] / f.name
        # Unique per download: two Stores of one process (two dashboard tabs) may fetch one file.
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            data = self.remote.read(self.remote.key(key[0], key[1], f.name))
        except FileNotFoundError:
            return None  # compacted away between the listing and the read
        try:
            tmp.write_bytes(data)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return len(data)


def _valid_partition(name: str) -> bool:
    try:
        check_name("run id", run_of_partition(name))
    except ValueError:
        return False
    return True


def _local_files(directory: Path) -> dict[str, int]:
    """Name -> size of the copied files (another process's sync may remove one as we look)."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for e in entries:
        if e.name.endswith(SUFFIX) and not e.name.startswith(TMP_PREFIX):
            try:
                out[e.name] = e.stat().st_size
            except FileNotFoundError:
                continue
    return out
