"""The same store, read by Apache Spark: Hive partition discovery, typed columns, schema evolution.

When one machine's DuckDB is no longer enough, a team points Spark (or Trino, Athena) at the same
files. This test writes a run with 8 concurrent writer processes, adds a run whose id looks like a
number and files from an older and a newer schema, then reads the ``metrics`` table with pyspark in
local mode (a real JVM) and requires Spark and DuckDB to return the same rows, to the last one, and
the same per-run aggregates.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logprobe.storage import SCHEMAS, Store, Writer

pyspark = pytest.importorskip("pyspark", reason="pyspark is a test extra (requirements-test.txt)")
pytestmark = pytest.mark.multiprocess
CHILD = Path(__file__).with_name("writer_child.py")
WRITERS = 8
STEPS = 1500
# The recipe the README gives: run ids stay strings ("007"), timestamps read in UTC, files of
# different schema versions merged by name.
SPARK_CONF = {
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.sql.shuffle.partitions": "4",
}
COLUMNS = "run_id, step, policy_version, ts_us, source, rank, worker, name, value"


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    builder = pyspark.sql.SparkSession.builder.master("local[2]").appName("logprobe-test")
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


def _write_store(root: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(root), "shared", str(i), str(STEPS), "0.05"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WRITERS)
    ]
    with Writer(root, writer_id="numeric-id") as writer:
        for step in range(100):
            writer.log_metrics("007", step, {"reward/mean": step / 4}, policy_version=step // 10)
    # An older writer's file (no rank, worker or policy_version) and a newer one's (an extra column).
    legacy = root / "metrics" / "run_id=legacy"
    legacy.mkdir(parents=True)
    old = SCHEMAS["metrics"]
    n = 50
    base = {
        "step": pa.array(range(n), pa.int64()),
        "ts": pa.array([1_700_000_000_000_000 + i for i in range(n)], pa.int64()).cast(old.field("ts").type),
        "source": pa.array(["trainer"] * n),
        "name": pa.array(["loss"] * n),
        "value": pa.array([i / 8 for i in range(n)], pa.float64()),
    }
    pq.write_table(pa.table(base), legacy / "old-00000000.parquet")
    pq.write_table(
        pa.table({**base, "rank": pa.array([3] * n, pa.int32()), "shard": pa.array(["a"] * n)}),
        legacy / "new-00000000.parquet",
    )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


def test_spark_reads_the_store_as_duckdb_does(tmp_path: Path, spark: object) -> None:
    _write_store(tmp_path)
    with Store(tmp_path) as store:
        assert not store.bad_files
        duck_rows = store.sql(
            f"SELECT {COLUMNS.replace('ts_us', 'epoch_us(ts) AS ts_us')} FROM metrics"
        ).to_pylist()
        duck_aggs = store.sql(_AGGREGATES.format(source="metrics", ts="epoch_us(ts)")).to_pylist()

    frame = spark.read.option("mergeSchema", "true").parquet(str(tmp_path / "metrics"))
    types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    assert types["run_id"] == "string", "partition discovery must keep run ids as strings"
    assert {k: types[k] for k in ("step", "policy_version", "ts", "rank", "value", "name")} == {
        "step": "bigint",
        "policy_version": "bigint",
        "ts": "timestamp",
        "rank": "int",
        "value": "double",
        "name": "string",
    }
    assert "shard" in types, "schema evolution: a column only newer files have is merged in"
    frame.createOrReplaceTempView("metrics")
    spark_rows = [
        row.asDict()
        for row in spark.sql(
            f"SELECT {COLUMNS.replace('ts_us', 'unix_micros(ts) AS ts_us')} FROM metrics"
        ).collect()
    ]
    spark_aggs = [
        row.asDict()
        for row in spark.sql(_AGGREGATES.format(source="metrics", ts="unix_micros(ts)")).collect()
    ]

    assert len(duck_rows) == WRITERS * STEPS * 3 + 100 + 2 * 50
    assert Counter(tuple(r.values()) for r in spark_rows) == Counter(tuple(r.values()) for r in duck_rows)
    assert spark_aggs == duck_aggs
    assert {r["run_id"] for r in duck_aggs} == {"shared", "007", "legacy"}


# Per-run aggregates, written once for both engines. Sums are over integer-valued metrics only,
# where any summation order gives the exact same double.
_AGGREGATES = """
SELECT run_id,
       count(*) AS n,
       count(DISTINCT step) AS steps,
       max(step) AS last_step,
       count(rank) AS with_rank,
       count(DISTINCT name) AS names,
       sum(CASE WHEN name IN ('writer', 'step_copy') THEN value END) AS integer_sum,
       max(policy_version) AS last_version,
       min({ts}) AS first_ts
FROM {source}
GROUP BY run_id
ORDER BY run_id
"""
