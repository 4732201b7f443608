"""Disk and filesystem faults under a live writer: disk full, read-only, the data root deleted.

Each test keeps a training-shaped loop calling ``Run.log`` through the fault and checks the
contract: ``log`` never raises or blocks, rows are buffered up to the bound and then counted as
dropped (and recorded as a ``dropped_rows`` event), a warning names the cause, and writing resumes
by itself once the fault is gone, with every buffered row written exactly once.

The faults are real: a small tmpfs filled to the last byte (ENOSPC), a read-only bind mount (EROFS),
``shutil.rmtree`` of the root, and a process file-size limit (EFBIG). Mounting needs root with
CAP_SYS_ADMIN; where that is missing those variants skip and the file-size-limit variant still
covers a full disk.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logprobe.collectors import Run
from logprobe.storage import Store, Writer
from tests.conftest import run_python

BOUND = 2_000  # the writer's buffer bound in these tests (rows)
NAMES = 5  # metrics per step


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _can_mount(tmp_path: Path) -> bool:
    probe = tmp_path / "probe-mount"
    probe.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (OSError, subprocess.CalledProcessError):
        return False
    subprocess.run(["umount", str(probe)], check=False)
    return True


@pytest.fixture
def mountable(tmp_path: Path) -> None:
    if not _can_mount(tmp_path):
        pytest.skip(
            "mounting a tmpfs or a read-only bind mount needs root with CAP_SYS_ADMIN; "
            "test_file_size_limit_is_a_full_disk_too covers a full disk without it"
        )


@pytest.fixture
def small_disk(tmp_path: Path, mountable: None) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real filesystem that fills up."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt))
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    """Write a filler file until the filesystem says ENOSPC; deleting it gives the space back."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
        try:
            while True:
                handle.write(b"\0")
        except OSError:
            pass
    return filler


class Loop:
    """A training loop on its own thread: logs NAMES metrics per step, timing each ``log`` call."""

    def __init__(self, run: Run, first_step: int, steps: int, period: float = 0.0005) -> None:
        self.run, self.first, self.steps, self.period = run, first_step, steps, period
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._body)

    def _body(self) -> None:
        for step in range(self.first, self.first + self.steps):
            t0 = time.perf_counter()
            try:
                self.run.log(step, {f"m{j}": float(step) for j in range(NAMES)})
            except BaseException as exc:  # the contract: nothing ever comes out of log()
                self.errors.append(exc)
            self.latencies.append(time.perf_counter() - t0)
            time.sleep(self.period)

    def __call__(self) -> Loop:
        self.thread.start()
        self.thread.join()
        assert not self.errors, f"log() raised into the training loop: {self.errors[:3]}"
        return self


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, "writing did not resume by itself"
        time.sleep(0.02)
    return time.perf_counter() - start


def _check_store(root: Path, run_id: str, kept_steps: list[int], dropped: int) -> None:
    with Store(root) as store:
        assert not store.bad_files, store.bad_files
        rows = store.sql(
            "SELECT step, count(*) AS n FROM metrics WHERE run_id = ? GROUP BY step ORDER BY step",
            params=[run_id],
        ).to_pylist()
        assert [r["step"] for r in rows] == kept_steps, "buffered rows must land, in full, exactly once"
        assert {r["n"] for r in rows} == {NAMES}
        recorded = store.sql(
            "SELECT payload FROM events WHERE run_id = ? AND kind = 'dropped_rows'", params=[run_id]
        ).column(0)
        assert sum(json.loads(p)["rows"] for p in recorded.to_pylist()) == dropped
    assert not list(root.rglob("*.tmp")), "a failed write left its temp file behind"


def _fault_cycle(
    root: Path, run_id: str, start_fault: Callable[[], None], end_fault: Callable[[], None], caplog
) -> dict[str, float]:
    """Log through a fault and out of it; return the figures."""
    writer = Writer(root, flush_interval=0.05, max_buffer_rows=BOUND)
    run = Run(writer, run_id)
    Loop(run, 0, 100)()
    writer.flush()
    assert writer.stats().rows_written == 100 * NAMES
    start_fault()
    faulty = Loop(run, 100, 1000)()  # 5,000 rows into a 2,000-row buffer
    time.sleep(0.2)  # a few flush attempts fail
    stats = writer.stats()
    assert stats.write_errors >= 1
    assert stats.rows_pending == BOUND, stats
    assert stats.rows_dropped == 1000 * NAMES - BOUND, stats
    end_fault()
    resumed = _wait(lambda: writer.stats().rows_pending == 0)
    assert "resumed" in caplog.text
    Loop(run, 1100, 100)()
    final = writer.close()
    assert final.rows_pending == 0 and final.rows_dropped == stats.rows_dropped
    kept = list(range(100)) + list(range(100, 100 + BOUND // NAMES)) + list(range(1100, 1200))
    _check_store(root, run_id, kept, dropped=stats.rows_dropped)
    return {
        "rows_buffered": BOUND,
        "rows_dropped_counted": stats.rows_dropped,
        "resumed_after_s": round(resumed, 3),
        "log_max_ms_during_fault": round(max(faulty.latencies) * 1000, 2),
    }


def test_disk_full_buffers_counts_drops_and_resumes(small_disk: Path, caplog, figures) -> None:
    caplog.set_level(logging.WARNING)
    root = small_disk / "store"
    holder: list[Path] = []
    result = _fault_cycle(
        root, "full-disk", lambda: holder.append(_fill(small_disk)), lambda: holder[0].unlink(), caplog
    )
    assert "No space left on device" in caplog.text, "the warning must name the cause"
    assert "dropping rows: buffer full (2000 rows)" in caplog.text
    figures(**result)


@pytest.fixture
def read_only(
    tmp_path: Path, mountable: None
) -> Iterator[tuple[Callable[[Path], None], Callable[[Path], None]]]:
    """Turn a directory read-only and back with a read-only bind mount (root ignores chmod)."""
    mounted: list[Path] = []

    def start(path: Path) -> None:
        _mount("--bind", str(path), str(path))
        mounted.append(path)
        _mount("-o", "remount,bind,ro", str(path))

    def end(path: Path) -> None:
        subprocess.run(["umount", str(path)], check=True)
        mounted.remove(path)

    yield start, end
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_directory_buffers_counts_drops_and_resumes(
    tmp_path: Path, read_only, caplog, figures
) -> None:
    caplog.set_level(logging.WARNING)
    root = tmp_path / "store"
    root.mkdir()
    start, end = read_only
    result = _fault_cycle(root, "read-only", lambda: start(root), lambda: end(root), caplog)
    assert "Read-only file system" in caplog.text, "the warning must name the cause"
    figures(**result)


def test_data_root_deleted_mid_run_is_recreated_with_a_warning(tmp_path: Path, caplog, figures) -> None:
    from logprobe import collectors

    caplog.set_level(logging.WARNING)
    root = tmp_path / "store"
    run = collectors.init(
        run_id="deleted", root=root, name="my run", config={"lr": 1e-6}, flush_interval=0.05
    )
    Loop(run, 0, 100)()
    run.writer.flush()
    loop = Loop(run, 100, 2000)
    loop.thread.start()
    time.sleep(0.3)
    # The user (or a cleanup job) deletes the data directory under the run. Moved away first, so
    # rmtree does not race the writer's next file ("Directory not empty").
    root.rename(tmp_path / "deleted")
    shutil.rmtree(tmp_path / "deleted")
    loop.thread.join()
    assert not loop.errors, loop.errors
    run.close()
    assert "was deleted while run(s) deleted were writing; recreating it" in caplog.text
    with Store(root) as store:
        assert not store.bad_files
        steps = store.sql("SELECT DISTINCT step FROM metrics ORDER BY step").column(0).to_pylist()
        # Everything logged after the deletion is there (what was on disk before is gone with it).
        assert steps and steps[-1] == 2099 and steps == list(range(steps[0], 2100))
        run_row = store.sql("SELECT name, config FROM runs").to_pylist()
        assert run_row and run_row[0]["name"] == "my run", "the runs row is written again"
        kinds = store.sql("SELECT kind FROM events").column(0).to_pylist()
        assert "root_recreated" in kinds
    figures(steps_after_deletion=len(steps), log_max_ms=round(max(loop.latencies) * 1000, 2))


FSIZE_CHILD = r"""
import json, logging, resource, signal, sys, time
from logprobe.collectors import Run
from logprobe.storage import Writer

logging.basicConfig(level=logging.WARNING)
root = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
writer = Writer(root, flush_interval=0.05, max_buffer_rows=2000)
run = Run(writer, "fsize")
for step in range(100):
    run.log(step, {f"m{j}": float(step) for j in range(5)})
writer.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # no file may grow past one byte
worst = 0.0
for step in range(100, 1100):
    t0 = time.perf_counter()
    run.log(step, {f"m{j}": float(step) for j in range(5)})
    worst = max(worst, time.perf_counter() - t0)
    time.sleep(0.0005)
time.sleep(0.2)
during = writer.stats()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
t0 = time.perf_counter()
while writer.stats().rows_pending and time.perf_counter() - t0 < 10:
    time.sleep(0.02)
resumed = time.perf_counter() - t0
final = writer.close()
print(json.dumps({"during": during.__dict__, "final": final.__dict__, "resumed": resumed, "worst": worst}))
"""


def test_file_size_limit_is_a_full_disk_too(tmp_path: Path, figures) -> None:
    proc = run_python(FSIZE_CHILD, str(tmp_path), timeout=60)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    during, final = result["during"], result["final"]
    assert during["write_errors"] >= 1 and during["rows_pending"] == BOUND
    assert during["rows_dropped"] == 1000 * NAMES - BOUND
    assert "File too large" in proc.stderr, "the warning must name the cause"
    assert "resumed" in proc.stderr
    assert final["rows_pending"] == 0
    _check_store(tmp_path, "fsize", list(range(100 + BOUND // NAMES)), dropped=during["rows_dropped"])
    figures(
        rows_buffered=BOUND,
        rows_dropped_counted=during["rows_dropped"],
        resumed_after_s=round(result["resumed"], 3),
        log_max_ms_during_fault=round(result["worst"] * 1000, 2),
    )
