"""Smoke run of ``python -m bench.object_store --smoke``: local disk against moto's S3 server.

No speed is asserted (shared CI machines are noisy, and moto is not AWS); what is asserted is that
the script runs end to end, starting and stopping its own S3 server, that its own checks passed (it
writes ``checks_passed`` only after every read matched what was written, the pyarrow-dataset chart
matched ``metric_series`` and no writer reported an error), that the report has every row, and that
every number is finite and positive, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench._harness import assert_numbers, run_benchmark

pytest.importorskip(
    "moto", reason="the object-store benchmark needs moto's S3 server (requirements-test.txt)"
)

ROWS = (
    "`writer.flush()`, median",
    "`writer.flush()`, p95",
    "whole run: first `log()` to `close()` returned",
    "files written",
    "`Store(root)` (S3: listing + download",
    "`list_runs`",
    "`metric_series`, 1 run x 20 metrics",
    "all three: open to first chart",
    "| nothing new |",
    "one new file (one step) from a live writer",
    "`Store`: `refresh()` + `metric_series`",
    "pyarrow dataset: discovery",
    "pyarrow dataset: filtered `to_table`",
    "DuckDB bucketing of the Arrow table",
    "pyarrow dataset: the whole query",
    "live `refresh()`, hot/cold listing policy",
    "live `refresh(full=True)`, every partition re-listed",
)


def test_object_store_benchmark_smoke(tmp_path: Path) -> None:
    report, result = run_benchmark(
        "object_store", ["--smoke"], tmp_path, title="# logprobe object-store benchmark", records="--smoke"
    )
    for row in ROWS:
        assert row in report, row
    # Every timing row has a disk time, an S3 time and their ratio, all positive numbers.
    timed = re.findall(
        r"^\| [^|]+ \| ([\d,.]+) (?:ms|s) \| ([\d,.]+) (?:ms|s) \| ([\d,.]+)x \|", report, re.M
    )
    assert len(timed) >= 15
    for cells in timed:
        assert all(float(c.replace(",", "")) > 0 for c in cells), cells
    assert "duckdb-extension-httpfs" in report and "moto is a Python server" in report
    assert "## What this means" in report

    assert result["checks_passed"] is True
    sizes = result["sizes"]
    assert len(result["repeats"]) == sizes["repeats"]
    disk, s3 = result["medians"]["disk"], result["medians"]["s3"]
    assert disk["files_written"] == s3["files_written"]  # the same run, file for file
    assert "open_listings" in s3 and "open_listings" not in disk  # only S3 lists
    scale = result["listing_scale"]["s3"]
    assert scale["refresh_policy_listings"] < scale["refresh_full_listings"]
    assert_numbers(result)
