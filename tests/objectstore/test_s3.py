"""An ``s3://`` root against a real S3 API (moto's server, in its own process on 127.0.0.1).

Writers in several processes, the dashboard's queries and pages, compaction beside live readers,
``logprobe alerts watch``, and what a live refresh lists on a store with many quiet runs.
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from bench._servers import serve_ui
from logprobe import monitor, storage
from logprobe.storage import Store, Writer
from tests.app.test_dashboard import EXCEPTION
from tests.conftest import LOGPROBE, REPO
from tests.monitor.test_alerts import WRITER as ALERT_WRITER
from tests.objectstore.conftest import child_env

WRITER_CHILD = REPO / "tests" / "storage" / "writer_child.py"


def _objects(s3: object, bucket: str) -> dict[str, bytes]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _start_writers(
    root: str, run_id: str, n: int, steps: int, env: dict[str, str], pace_s: float = 0.0
) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, str(WRITER_CHILD), root, run_id, str(i), str(steps), "0.05", str(pace_s)],
            cwd=REPO,
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def _wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        assert "closed" in out


def _poll_while(procs: list[subprocess.Popen], store: Store, errors: list[str], counts: list[int]) -> None:
    """A dashboard-like reader: refresh and count until the writers are done; nothing may fail."""
    while any(p.poll() is None for p in procs):
        try:
            store.refresh()
            counts.append(store.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py())
        except Exception as exc:  # a reader error is the failure this test looks for
            errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.05)


def test_writers_in_four_processes_put_only_whole_objects(
    s3_root: str, s3_env: dict[str, str], s3: object, bucket: str
) -> None:
    steps = 300
    procs = _start_writers(s3_root, "multi", 4, steps, s3_env)
    store = Store(s3_root)
    errors: list[str] = []
    counts: list[int] = []
    _poll_while(procs, store, errors, counts)
    _wait(procs)
    assert errors == []
    assert counts == sorted(counts), "a reader saw rows disappear"

    store.refresh()
    rows = store.sql(
        "SELECT value AS writer, step FROM metrics WHERE run_id = 'multi' AND name = 'writer'"
    ).to_pylist()
    seen = Counter((int(r["writer"]), r["step"]) for r in rows)
    assert seen == Counter({(w, s): 1 for w in range(4) for s in range(steps)})
    assert store.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 4 * steps * 3

    # The bucket holds only finished Parquet files at their final keys, and no half-done upload.
    objects = _objects(s3, bucket)
    assert objects and all(key.startswith("team/store/") for key in objects)
    for key, body in objects.items():
        name = key.rsplit("/", 1)[1]
        assert name.endswith(".parquet") and not name.startswith("."), key
        assert pq.read_metadata(io.BytesIO(body)).num_rows > 0, key
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # What the reader holds is a byte-for-byte copy of the bucket.
    local = {str(p.relative_to(store.root)): p.read_bytes() for p in store.root.rglob("*.parquet")}
    assert local == {key[len("team/store/") :]: body for key, body in objects.items()}


def _upload(local_root: Path, s3_root: str) -> None:
    """Copy a store made on disk into the bucket, byte for byte (pyarrow's copy between filesystems)."""
    remote = storage.resolve_root(s3_root)
    pafs.copy_files(str(local_root), remote.key(), destination_filesystem=remote.fs)


def _same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Equal as multisets of rows (rows that tie on a query's ORDER BY may come in either order)."""
    return a.schema == b.schema and sorted(map(repr, a.to_pylist())) == sorted(map(repr, b.to_pylist()))


@pytest.mark.slow  # the demo runs (trained once per session)
def test_the_dashboards_queries_give_the_same_answers_as_on_disk(
    demo_root: Path, s3_root: str, s3_env: dict[str, str]
) -> None:
    _upload(demo_root, s3_root)
    with Store(demo_root) as disk, Store(s3_root) as remote:
        assert remote.root != disk.root
        for table in storage.TABLES:
            assert len(remote.files(table)) == len(disk.files(table)), table
        drop = ["age_s", "status"]  # both depend on the clock at the moment of the query
        assert storage.list_runs(remote).drop_columns(drop) == storage.list_runs(disk).drop_columns(drop)
        run_ids = storage.list_runs(disk).column("run_id").to_pylist()
        assert len(run_ids) >= 5
        names = storage.metric_names(disk)
        assert storage.metric_names(remote) == names
        assert storage.metric_series(remote, run_ids, names) == storage.metric_series(disk, run_ids, names)
        assert storage.engines(remote) == storage.engines(disk)
        assert storage.alerts(remote) == storage.alerts(disk)
        assert _same_rows(storage.events(remote, run_ids), storage.events(disk, run_ids))
        for run_id in run_ids:
            assert storage.worst_tokens(remote, run_id) == storage.worst_tokens(disk, run_id)
            assert storage.histogram_matrix(remote, run_id) == storage.histogram_matrix(disk, run_id)
            assert remote.column_range("metrics", run_id, "step") == disk.column_range(
                "metrics", run_id, "step"
            )
            assert monitor.detect_run(remote, run_id) == monitor.detect_run(disk, run_id)


def test_the_dashboard_follows_a_live_run_in_the_bucket(
    s3_root: str, s3_env: dict[str, str], browser: object
) -> None:
    with Writer(s3_root) as writer:
        writer.append("runs", "s3-run", {"name": "s3-run", "created_at": time.time()})
        writer.append("events", "s3-run", {"kind": "run_start"})
        for step in range(20):
            writer.log_metrics("s3-run", step, {"mismatch/k3": 1e-6, "reward/mean": step / 20})
    proc, url = serve_ui(s3_root)  # type: ignore[arg-type]  # the CLI takes the URI as --root
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(f"{url}/metrics")
        page.get_by_text("s3-run 19").first.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        with Writer(s3_root) as writer:
            for step in range(20, 57):
                writer.log_metrics("s3-run", step, {"mismatch/k3": 0.2, "reward/mean": 1.0})
        page.get_by_text("s3-run 56").first.wait_for(timeout=20_000)  # no reload: the fragment polls
        assert page.locator(EXCEPTION).count() == 0
    finally:
        page.close()
        proc.terminate()
        proc.wait(10)


def test_compaction_beside_live_writers_and_readers_keeps_every_row_once(
    s3_root: str, s3_env: dict[str, str], s3: object, bucket: str
) -> None:
    steps = 400
    procs = _start_writers(s3_root, "busy", 3, steps, s3_env, pace_s=0.01)  # live for 4 s or more
    store = Store(s3_root)
    errors: list[str] = []
    counts: list[int] = []
    poller = threading.Thread(target=_poll_while, args=(procs, store, errors, counts))
    poller.start()
    compactions = 0
    while any(p.poll() is None for p in procs):
        done = subprocess.run(
            [LOGPROBE, "compact", "--root", s3_root], env=child_env(s3_env), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        compactions += 1
        time.sleep(0.3)
    poller.join()
    _wait(procs)
    assert compactions >= 2
    assert errors == []
    assert counts == sorted(counts), "a reader saw rows disappear during a compaction"

    storage.compact(s3_root)  # the writers are done: this merges whatever the last one missed
    # (pyarrow leaves an empty "run_id=busy/" folder marker when it deletes a folder's last object)
    metric_keys = [k for k in _objects(s3, bucket) if "/metrics/run_id=busy/" in k and not k.endswith("/")]
    assert len(metric_keys) == 1 and "/compact-" in metric_keys[0]
    store.refresh()
    assert len(store.files("metrics")) == 1
    rows = store.sql("SELECT value AS writer, step FROM metrics WHERE name = 'writer'").to_pylist()
    assert Counter((int(r["writer"]), r["step"]) for r in rows) == Counter(
        {(w, s): 1 for w in range(3) for s in range(steps)}
    )


def test_alerts_watch_fires_on_a_run_in_the_bucket_and_records_the_alert_there(
    s3_root: str, s3_env: dict[str, str]
) -> None:
    env = child_env(s3_env)
    watcher = subprocess.Popen(
        [LOGPROBE, "alerts", "watch", "--root", s3_root, "--interval", "0.2"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    fired_at: list[float] = []
    lines: list[str] = []

    def read() -> None:
        for line in watcher.stderr:
            lines.append(line)
            if "firing" in line and "live step 32" in line and "k3" in line:
                fired_at.append(time.time())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    writer = subprocess.run(
        [sys.executable, "-c", ALERT_WRITER, s3_root],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=REPO,
    )
    assert writer.returncode == 0, writer.stderr
    flushed_at = float(writer.stdout.strip())
    watcher.terminate()
    watcher.wait(10)
    reader.join(5)
    assert fired_at, "the watcher never fired:\n" + "".join(lines[-20:])
    assert fired_at[0] - flushed_at < 3.0
    stored = Store(s3_root).sql("SELECT step, state, source FROM alerts WHERE rule = 'mismatch/k3-bad-above'")
    assert stored.to_pylist()[0] == {"step": 32, "state": "firing", "source": "watcher"}


def test_a_live_refresh_lists_live_runs_and_only_a_few_quiet_ones(
    s3_root: str, s3_env: dict[str, str]
) -> None:
    quiet_runs = 40
    with Writer(s3_root) as writer:
        for i in range(quiet_runs):
            writer.log_metrics(f"old-{i:02d}", 0, {"loss": float(i)})
    store = Store(s3_root)  # the first sync lists everything
    assert store.mirror is not None
    first = store.mirror.last
    assert first.listings == len(storage.TABLES) + quiet_runs and first.downloads == quiet_runs

    store.mirror.hot_s = 0.0  # from now on nothing counts as recently changed
    store.mirror.cold_per_sync = 4
    store.refresh()
    assert store.mirror.last.listings == len(storage.TABLES) + 4  # the partition listings + 4 quiet
    # A quiet run that wakes up is found within quiet_runs / cold_per_sync syncs...
    with Writer(s3_root) as writer:
        writer.log_metrics("old-07", 1, {"loss": 70.0})
    syncs = 0
    while store.sql("SELECT count(*) AS n FROM metrics WHERE run_id = 'old-07'").column("n")[0].as_py() < 2:
        store.refresh()
        syncs += 1
        assert syncs <= math.ceil(quiet_runs / 4), "a quiet run's new file was never found"
    # ... a new run at once (its partition is new), and a full refresh finds everything.
    with Writer(s3_root) as writer:
        writer.log_metrics("new-run", 0, {"loss": 1.0})
    store.refresh()
    assert "new-run" in storage.list_runs(store).column("run_id").to_pylist()
    store.mirror.hot_s = 300.0
    store.refresh(full=True)
    assert store.mirror.last.listings == len(storage.TABLES) + quiet_runs + 1


def test_the_store_root_comes_from_logprobe_dir_too(
    s3_root: str, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGPROBE_DIR", s3_root)
    with Writer() as writer:
        writer.log_metrics("env-run", 3, {"loss": 0.5})
    done = subprocess.run(
        [LOGPROBE, "runs", "--format", "json"], capture_output=True, text=True, env=child_env(s3_env)
    )
    assert done.returncode == 0, done.stderr
    assert '"env-run"' in done.stdout
    query = "SELECT run_id, step, value FROM metrics"
    done = subprocess.run(
        [LOGPROBE, "query", query, "--format", "csv"], capture_output=True, text=True, env=child_env(s3_env)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['"run_id","step","value"', '"env-run",3,0.5']
    escape = "SELECT * FROM read_csv('/etc/passwd')"  # confined to the local copy, like a local root
    done = subprocess.run([LOGPROBE, "query", escape], capture_output=True, text=True, env=child_env(s3_env))
    assert done.returncode != 0 and "passwd" in done.stderr
    assert str(Store().location) == s3_root


def test_a_missing_bucket_keeps_the_rows_until_it_exists(
    s3_env: dict[str, str], s3: object, tmp_path: Path
) -> None:
    bucket = "logprobe-not-yet"
    writer = Writer(f"s3://{bucket}/p", flush_interval=60)
    for step in range(50):
        writer.log_metrics("waiting", step, {"loss": float(step)})
    writer.flush()
    stats = writer.stats()
    assert stats.write_errors >= 1 and stats.rows_written == 0 and stats.rows_pending == 50
    assert "NoSuchBucket" in (stats.last_error or "") or "bucket" in (stats.last_error or "").lower()
    s3.create_bucket(Bucket=bucket)
    final = writer.close()
    assert final.rows_written == 50 and final.rows_dropped == 0
    assert Store(f"s3://{bucket}/p").sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 50


def test_an_unreachable_endpoint_leaves_the_reader_up_and_says_why(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # nothing listens here once the socket closes
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    started = time.monotonic()
    store = Store("s3://logprobe-anything/p")
    assert time.monotonic() - started < 30
    assert store.mirror is not None and store.mirror.last_error is not None
    assert store.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 0


@pytest.mark.parametrize("uri", ["s3://", "s3:///x", "s3://bucket/../x", "s3://bucket//x", "s3://bucket/./x"])
def test_a_malformed_uri_is_one_clear_error(uri: str) -> None:
    with pytest.raises(ValueError, match="invalid object-store root"):
        storage.resolve_root(uri)


def test_retention_and_compaction_of_a_bucket_through_the_cli(
    s3_root: str, s3_env: dict[str, str], s3: object, bucket: str
) -> None:
    old, fresh = time.time() - 10 * 86_400, time.time() - 3600
    with Writer(s3_root) as writer:
        writer.append("runs", "r", {"name": "r", "created_at": old})
        for step in range(5):
            writer.append("tokens", "r", {"step": step, "ts": old, "position": 0, "log_ratio": 0.1})
            writer.log_metrics("r", step, {"mismatch/k3": float(step)}, ts=old)
        writer.append("histograms", "r", {"step": 0, "ts": old, "name": "log_ratio", "bin": 0})
    with Writer(s3_root) as writer:
        for step in range(5, 8):
            writer.append("tokens", "r", {"step": step, "ts": fresh, "position": 0, "log_ratio": 0.1})
    done = subprocess.run(
        [LOGPROBE, "compact", "--root", s3_root, "--keep", "tokens=7d", "--keep", "histograms=1d"],
        env=child_env(s3_env),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "retention deleted 2 files" in done.stderr  # the 10-day-old tokens file and the histogram
    keys = [k for k in _objects(s3, bucket) if k.endswith(".parquet")]
    assert [k for k in keys if "/histograms/" in k] == []
    assert len([k for k in keys if "/tokens/" in k]) == 1
    with Store(s3_root) as store:
        steps = store.sql("SELECT DISTINCT step FROM tokens ORDER BY step").column("step").to_pylist()
        assert steps == [5, 6, 7]  # the fresh file's steps only
        assert store.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 5  # metrics stay


def test_stores_of_one_process_share_one_copy_and_its_listings(s3_root: str, s3_env: dict[str, str]) -> None:
    with Writer(s3_root) as writer:
        writer.log_metrics("shared", 0, {"loss": 1.0})
    tabs = [Store(s3_root, sync_max_age_s=60.0) for _ in range(2)]
    assert tabs[0].mirror is tabs[1].mirror
    with Writer(s3_root) as writer:
        writer.log_metrics("shared", 1, {"loss": 2.0})

    def count(store: Store) -> int:
        return store.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py()

    tabs[1].refresh()  # within a minute of the first tab's sync: no listing, the copy as it was
    assert count(tabs[1]) == 1
    tabs[1].refresh(max_age_s=0.0)
    assert count(tabs[1]) == 2
    tabs[0].refresh()  # the other tab sees the new file without listing again
    assert count(tabs[0]) == 2


def test_tabs_refreshing_at_once_beside_a_writer_never_fail(s3_root: str, s3_env: dict[str, str]) -> None:
    stop = threading.Event()
    errors: list[str] = []

    def tab() -> None:
        store = Store(s3_root)  # a fresh Store per thread, as each browser session has
        while not stop.is_set():
            try:
                store.refresh()
                store.sql("SELECT count(*) FROM metrics")
            except Exception as exc:  # any reader error fails the test
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=tab) for _ in range(3)]
    for thread in threads:
        thread.start()
    with Writer(s3_root, flush_interval=0.05) as writer:
        for step in range(200):
            writer.log_metrics("busy", step, {"loss": float(step)})
            time.sleep(0.005)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Store(s3_root).sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 200


@pytest.mark.parametrize("page", ["runs", "metrics", "drift", "tokens", "sql"])
def test_dashboard_pages_render_over_a_bucket(s3_root: str, s3_env: dict[str, str], page: str) -> None:
    from tests.app.test_pages import _open

    with Writer(s3_root) as writer:
        writer.append("runs", "s3-run", {"name": "s3-run"})
        for step in range(30):
            writer.log_metrics(
                "s3-run", step, {"mismatch/k3": 1e-6 if step < 20 else 0.3, "reward/mean": 0.5}
            )
            writer.append("tokens", "s3-run", {"step": step, "position": 0, "log_ratio": 0.01 * step})
    at = _open(s3_root, page)  # type: ignore[arg-type]  # the dashboard takes the URI as its root
    assert not at.sidebar.warning
    assert "1 of 1 runs shown" in [c.value for c in at.sidebar.caption]


def test_the_dashboard_says_when_the_bucket_cannot_be_listed(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.app.test_pages import _open

    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    at = _open("s3://logprobe-unreachable/p", "runs")  # type: ignore[arg-type]
    assert any("Cannot list the bucket" in w.value for w in at.sidebar.warning)
    assert any("No runs under" in i.value for i in at.info)
