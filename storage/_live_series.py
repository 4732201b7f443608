"""Chart data for live runs that stays cheap however long a run gets.

The first load is one downsampled query (``metric_series``). After that a refresh reads only the
Parquet files that appeared since the last one: every row lives in exactly one committed file, so
"new files" is exact, including late rows for old steps from a lagging rank (a step cursor would
miss those). When a file the series was built from disappears (a compaction merged it), the next
refresh reloads from scratch, since the merged file repeats rows already counted.

New points are appended as one-point buckets; when a series holds more than twice ``max_points``
buckets, neighbours are merged pairwise (min of mins, max of maxes, the later ``last``), so a spike
is never averaged away and the cost per refresh stays bounded by the new rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from logprobe.storage._partitions import files_of_runs
from logprobe.storage._queries import DEFAULT_MAX_POINTS, X_AXES, metric_series, series_rows
from logprobe.storage._store import Store

COLUMNS = ("x", "x_first", "x_last", "min", "max", "last", "sum", "count")


@dataclass
class _Buckets:
    cols: dict[str, np.ndarray] = field(default_factory=lambda: {c: np.empty(0) for c in COLUMNS})

    def __len__(self) -> int:
        return len(self.cols["x"])

    def extend(self, new: dict[str, np.ndarray]) -> None:
        cols = {c: np.concatenate([self.cols[c], new[c]]) for c in COLUMNS}
        if len(self) and len(new["x"]) and new["x"].min() < self.cols["x"][-1]:
            order = np.argsort(cols["x"], kind="stable")  # late rows of older steps
            cols = {c: v[order] for c, v in cols.items()}
        self.cols = cols

    def halve(self) -> None:
        c, k = self.cols, len(self) // 2 * 2
        a, b = slice(0, k, 2), slice(1, k, 2)
        merged = {
            "x": c["x"][b],
            "x_first": np.minimum(c["x_first"][a], c["x_first"][b]),
            "x_last": np.maximum(c["x_last"][a], c["x_last"][b]),
            "min": np.fmin(c["min"][a], c["min"][b]),
            "max": np.fmax(c["max"][a], c["max"][b]),
            "last": c["last"][b],
            "sum": c["sum"][a] + c["sum"][b],
            "count": c["count"][a] + c["count"][b],
        }
        self.cols = {name: np.concatenate([merged[name], c[name][k:]]) for name in COLUMNS}


class LiveSeries:
    """Downsampled series of ``names`` for ``run_ids``, refreshed by reading only new files."""

    def __init__(
        self,
        run_ids: Sequence[str],
        names: Sequence[str],
        *,
        x: str = "step",
        max_points: int = DEFAULT_MAX_POINTS,
    ) -> None:
        if x not in X_AXES:
            raise ValueError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")
        self.run_ids, self.names, self.x, self.max_points = list(run_ids), list(names), x, max_points
        self._files: set[str] | None = None
        self._series: dict[tuple[str, str], _Buckets] = {}
        self.full_loads = 0  # how often the cache had to start over (first load, compactions)
        self.rows_read = 0  # rows read by incremental refreshes

    def update(self, store: Store) -> bool:
        """Bring the series up to date with the store; True when anything changed."""
        store.refresh()
        runs, seen = set(self.run_ids), self._files
        current = set(files_of_runs(store.files("metrics"), runs))
        if current == seen:
            return False
        if seen is None or not seen <= current:  # first load, or a compaction merged files read
            self._load(store, current)
            return True
        picked: dict[str, set[str]] = {}

        def new_files(files: list[str]) -> list[str]:
            # Called again on a retry, over the files that exist then.
            picked["files"] = mine = set(files_of_runs(files, runs))
            return sorted(mine - seen) if seen <= mine else []

        rows = series_rows(store, new_files, self.names, self.x)
        files = picked["files"]
        if not seen <= files:  # a compaction landed between the listing and the query
            self._load(store, files)
            return True
        self._files = files
        self.rows_read += rows.num_rows
        if not rows.num_rows:
            return False
        xs = rows.column("x").to_numpy()
        values = rows.column("value").to_numpy(zero_copy_only=False)
        groups: dict[tuple[str, str], list[int]] = {}
        keys = zip(rows.column("run_id").to_pylist(), rows.column("name").to_pylist(), strict=True)
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        for (run_id, name), idx in groups.items():
            v, at = values[idx], xs[idx]
            series = self._series.setdefault((run_id, name), _Buckets())
            series.extend(
                {
                    "x": at,
                    "x_first": at,
                    "x_last": at,
                    "min": v,
                    "max": v,
                    "last": v,
                    "sum": v,
                    "count": np.ones(len(v)),
                }
            )
            while len(series) > 2 * self.max_points:
                series.halve()
        return True

    def _load(self, store: Store, files: set[str]) -> None:
        table = metric_series(store, self.run_ids, self.names, x=self.x, max_points=self.max_points)
        self._files, self._series = files, {}
        self.full_loads += 1
        d = table.to_pydict()
        rows: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(zip(d["run_id"], d["name"], strict=True)):
            rows.setdefault(key, []).append(i)
        for key, idx in rows.items():
            cols = {c: np.asarray([d[c][i] for i in idx], dtype=np.float64) for c in COLUMNS if c != "sum"}
            cols["sum"] = np.asarray([d["mean"][i] for i in idx]) * cols["count"]
            self._series[key] = _Buckets(cols)

    def table(self) -> pa.Table:
        """The series as ``metric_series`` returns them (run_id, name, x, ..., mean, count)."""
        parts = []
        for (run_id, name), s in sorted(self._series.items()):
            c = s.cols
            parts.append(
                pa.table(
                    {
                        "run_id": pa.array([run_id] * len(s), pa.string()),
                        "name": pa.array([name] * len(s), pa.string()),
                        **{k: c[k] for k in ("x", "x_first", "x_last", "min", "max", "last")},
                        "mean": c["sum"] / np.maximum(c["count"], 1),
                        "count": c["count"].astype(np.int64),
                    }
                )
            )
        return pa.concat_tables(parts) if parts else _EMPTY


_EMPTY = pa.schema(
    [("run_id", pa.string()), ("name", pa.string())]
    + [(c, pa.float64()) for c in ("x", "x_first", "x_last", "min", "max", "last", "mean")]
    + [("count", pa.int64())]
).empty_table()
