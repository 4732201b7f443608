"""Store-size benchmark: bytes on disk per million steps of an RL run, before and after compaction
and token retention, and what compaction does to opening the store.

One run of ``--steps`` steps is logged through ``storage.Writer``, as the collectors log it:

  - 16 scalar metrics per step (``mismatch/*`` from ``collectors.MISMATCH_METRICS`` and the RL
    health metrics of ``collectors.rl_stats``), with ``policy_version`` = step;
  - one log-ratio histogram every 10 steps: ``len(collectors.HIST_EDGES) + 1`` = 27 bin rows, the
    long format ``Run.log_mismatch`` writes;
  - per-token rows every step, in two profiles, each its own store:
      * ``batch``: every response token of a batch of ``--seqs`` x ``--seq-len`` (default 8 x 256
        = 2,048 rows per step): someone who keeps every token for drill-down;
      * ``worst``: the ``--top-k`` (default 16) worst tokens per step, what ``Run.log_mismatch``
        writes by default;
  - one ``weight_update`` event per step, plus the run's ``runs`` and ``engines`` rows and its
    ``run_start`` / ``run_end`` events.

Values are drawn from distributions shaped like real ones (log-normal metric noise, token ids
from a 32,000-word vocabulary with a Zipf-like skew and their decoded text, logprobs and small
log-ratios), so zstd cannot squeeze them away. ``Writer.flush()`` is called after every step: an RL
step takes seconds to minutes, longer than the default 1 s ``flush_interval``, so a live run writes
one file per table per step, which is the store this measures.

Each store is measured three times: as written; after ``storage.compact`` (one file per table);
after ``storage.apply_retention`` with ``{"tokens": 7}`` (the run is dated 30 days back, so every
token row is older than the cutoff and the token files go). Bytes per million steps are the bytes
measured at ``--steps`` steps scaled linearly to 1,000,000 steps; Parquet's per-file overhead
makes the uncompacted figure a little pessimistic at small ``--steps`` and the compacted one a
little optimistic (one footer for the whole run), so the extrapolation is a guide, not a promise.

``storage.Store(root)`` construction (a footer read per file) and ``storage.list_runs`` are timed
on each store (medians of ``--repeats``, warm page cache).

Row counts are checked after every stage against what was logged, and ``list_runs`` must report
every metric row; a mismatch raises and voids the report.

Run it from the repository root: ``python -m bench.store_size [--steps S] [--out PATH]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import _report
from bench._workload import timed
from logprobe import collectors, storage

DEFAULT_STEPS = 2_000
DEFAULT_SEQS = 8
DEFAULT_SEQ_LEN = 256
DEFAULT_TOP_K = 16
DEFAULT_REPEATS = 5
RUN_ID = "bench-store-size"
SEED = 20240611
STEP_S = 30.0  # seconds between steps: a small RL step
AGE_DAYS = 30.0  # the run ended this long before the benchmark ran
KEEP = {"tokens": 7.0}
HIST_EVERY = 10
VOCAB = 32_000
PER_MILLION = 1_000_000

# 16 metrics per step, named as the collectors name them.
METRICS = (
    "mismatch/k1",
    "mismatch/k2",
    "mismatch/k3",
    "mismatch/abs_logp_diff_mean",
    "mismatch/abs_prob_diff_mean",
    "mismatch/ratio_mean",
    "mismatch/ess",
    "mismatch/frac_outside_eps",
    "mismatch/n_tokens",
    "train/clip_frac",
    "train/kl_ref",
    "train/entropy",
    "train/grad_norm",
    "reward/mean",
    "reward/std",
    "response/length_mean",
)
TABLE_ORDER = ("metrics", "histograms", "tokens", "events", "runs", "engines")
FIXED_TABLES = ("runs", "engines")  # a row or two per run, not per step: not scaled with steps
STAGES = ("written", "compacted", "retention")
STAGE_LABELS = {
    "written": "as written (one file per table per step)",
    "compacted": "after `storage.compact`",
    "retention": f"after `apply_retention({KEEP})` on the compacted store",
}


# ---------------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Profile:
    """Which token rows a step writes: every token of a ``seqs`` x ``seq_len`` batch, or its
    ``top_k`` worst."""

    name: str
    seqs: int
    seq_len: int
    top_k: int | None
    what: str

    @property
    def tokens_per_step(self) -> int:
        return self.seqs * self.seq_len if self.top_k is None else self.top_k

    def where(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(seq_index, position) of each token row of one step."""
        if self.top_k is None:
            return np.repeat(np.arange(self.seqs), self.seq_len), np.tile(np.arange(self.seq_len), self.seqs)
        return rng.integers(0, self.seqs, self.top_k), rng.integers(0, self.seq_len, self.top_k)


def _vocabulary(rng: np.random.Generator) -> list[str]:
    """Decoded text of each token id: short word pieces, as a BPE tokenizer's would be."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(1, 9, size=VOCAB)
    pieces = ["".join(rng.choice(letters, size=n)) for n in lengths]
    return [(" " if i % 3 == 0 else "") + p for i, p in enumerate(pieces)]


def log_run(root: Path, steps: int, profile: Profile, start_ts: float) -> dict[str, int]:
    """Log one run through ``storage.Writer``, flushing after every step; returns rows per table."""
    rng = np.random.default_rng(SEED)
    vocab = _vocabulary(rng)
    bins = len(collectors.HIST_EDGES) + 1
    bounds = (-float("inf"), *collectors.HIST_EDGES, float("inf"))
    level = rng.uniform(1e-3, 1e2, size=len(METRICS))
    origin = {"source": "trainer", "rank": 0, "worker": None}
    rows = dict.fromkeys(TABLE_ORDER, 0)
    writer = storage.Writer(root, writer_id="bench-trainer-0", flush_interval=3600.0)
    try:
        writer.append(
            "runs",
            RUN_ID,
            {"name": RUN_ID, "project": "bench", "created_at": start_ts, "config": "{}", **origin},
        )
        writer.append(
            "engines",
            RUN_ID,
            {"ts": start_ts, "step_first": 0, "engine": "vllm", "vllm_version": "0.18.1", **origin},
        )
        writer.append("events", RUN_ID, {"step": None, "ts": start_ts, "kind": "run_start", **origin})
        rows["runs"] += 1
        rows["engines"] += 1
        rows["events"] += 1
        k = profile.tokens_per_step
        for step in range(steps):
            ts = start_ts + step * STEP_S
            values = level * np.exp(0.1 * rng.standard_normal(len(METRICS)))
            writer.log_metrics(
                RUN_ID,
                step,
                dict(zip(METRICS, values.tolist(), strict=True)),
                policy_version=step,
                ts=ts,
            )
            rows["metrics"] += len(METRICS)
            base = {"step": step, "policy_version": step, "ts": ts, **origin}
            if step % HIST_EVERY == 0:
                counts = rng.multinomial(k, np.full(bins, 1 / bins)).tolist()
                for b in range(bins):
                    writer.append(
                        "histograms",
                        RUN_ID,
                        {**base, "name": "log_ratio", "bin": b, "lo": bounds[b], "hi": bounds[b + 1],
                         "count": counts[b]},
                    )  # fmt: skip
                rows["histograms"] += bins
            ids = ((rng.zipf(1.3, size=k) - 1) % VOCAB).tolist()
            seq_index, position = (a.tolist() for a in profile.where(rng))
            rollout = (-rng.exponential(1.5, size=k)).tolist()
            ratio = (1e-3 * rng.standard_normal(k)).tolist()
            for i in range(k):
                writer.append(
                    "tokens",
                    RUN_ID,
                    {**base, "seq_index": seq_index[i], "position": position[i], "token_id": ids[i],
                     "token_text": vocab[ids[i]], "trainer_logprob": rollout[i] + ratio[i],
                     "rollout_logprob": rollout[i], "log_ratio": ratio[i]},
                )  # fmt: skip
            rows["tokens"] += k
            payload = json.dumps({"version": step, "duration_s": round(float(rng.uniform(0.5, 2.0)), 3)})
            writer.append(
                "events", RUN_ID, {"step": step, "ts": ts, "kind": "weight_update", "payload": payload}
            )
            rows["events"] += 1
            writer.flush()  # a real step outlasts the 1 s flush interval: one file per table per step
        end_ts = start_ts + steps * STEP_S
        writer.append("events", RUN_ID, {"step": None, "ts": end_ts, "kind": "run_end", **origin})
        rows["events"] += 1
    finally:
        stats = writer.close()
    if stats.rows_dropped or stats.rows_pending or stats.values_invalid:
        raise _report.BenchmarkError(f"the writer did not write every row: {stats}")
    return rows


# ---------------------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class TableSize:
    files: int
    bytes: int  # file sizes (what a copy or an object store bills)
    allocated: int  # blocks the filesystem allocated (small files round up to a block each)


def sizes(root: Path) -> dict[str, TableSize]:
    out: dict[str, TableSize] = {}
    for table in TABLE_ORDER:
        files = nbytes = allocated = 0
        for directory, _, names in os.walk(root / table):
            for name in names:
                if not name.endswith(".parquet"):
                    continue
                st = os.stat(os.path.join(directory, name))
                files += 1
                nbytes += st.st_size
                allocated += st.st_blocks * 512
        out[table] = TableSize(files, nbytes, allocated)
    return out


def check_rows(root: Path, expected: dict[str, int]) -> None:
    with storage.Store(root) as store:
        for table, n in expected.items():
            got = store.sql(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py()
            if got != n:
                raise _report.BenchmarkError(f"{table} holds {got} rows, expected {n}")
            if table == "metrics":
                runs = storage.list_runs(store).to_pylist()
                if [(r["run_id"], r["points"], r["status"]) for r in runs] != [(RUN_ID, n, "finished")]:
                    raise _report.BenchmarkError(f"list_runs returned {runs}")


def time_open(root: Path, repeats: int) -> dict[str, list[float]]:
    """``Store(root)`` then ``list_runs``, each repeat in a fresh Store (so the footers are read)."""
    samples: dict[str, list[float]] = {"store_open": [], "list_runs": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        store = storage.Store(root)
        t1 = time.perf_counter()
        with store:
            storage.list_runs(store)
        t2 = time.perf_counter()
        samples["store_open"].append(t1 - t0)
        samples["list_runs"].append(t2 - t1)
    return samples


@dataclasses.dataclass
class Stage:
    sizes: dict[str, TableSize]
    rows: dict[str, int]
    samples_s: dict[str, list[float]]

    @property
    def bytes_total(self) -> int:
        return sum(s.bytes for s in self.sizes.values())

    @property
    def files_total(self) -> int:
        return sum(s.files for s in self.sizes.values())

    def median(self, what: str) -> float:
        return statistics.median(self.samples_s[what])


@dataclasses.dataclass
class ProfileResult:
    profile: Profile
    steps: int
    write_s: float
    stages: dict[str, Stage]
    compact_s: float
    retention_s: float
    retention: storage.RetentionReport


def measure_profile(profile: Profile, steps: int, repeats: int, tmp: Path) -> ProfileResult:
    root = tmp / profile.name
    now = time.time()
    start_ts = now - AGE_DAYS * 86_400 - steps * STEP_S
    write_s, rows = timed(lambda: log_run(root, steps, profile, start_ts))
    print(f"[{profile.name}] logged {steps:,} steps in {write_s:.1f} s", file=sys.stderr)
    stages: dict[str, Stage] = {}

    def snapshot(name: str, expected: dict[str, int]) -> None:
        check_rows(root, expected)
        stages[name] = Stage(sizes(root), dict(expected), time_open(root, repeats))
        print(f"[{profile.name}] measured {name}", file=sys.stderr)

    snapshot("written", rows)
    compact_s, report = timed(lambda: storage.compact(root))
    if report.bad_files or report.skipped_locked:
        raise _report.BenchmarkError(f"compaction skipped something: {report}")
    snapshot("compacted", rows)
    retention_s, kept = timed(lambda: storage.apply_retention(root, KEEP, now=now))
    if kept.rows_deleted != rows["tokens"] or kept.skipped_locked or kept.kept_no_stats:
        raise _report.BenchmarkError(
            f"retention removed {kept.rows_deleted} rows, expected {rows['tokens']}: {kept}"
        )
    snapshot("retention", {**rows, "tokens": 0})
    if stages["retention"].sizes["tokens"].files:
        raise _report.BenchmarkError("token files are left after retention")
    return ProfileResult(profile, steps, write_s, stages, compact_s, retention_s, kept)


# ---------------------------------------------------------------------------------------- report


def per_million(nbytes: float, steps: int) -> float:
    """Bytes scaled linearly from ``steps`` steps to a million."""
    return nbytes * PER_MILLION / steps


def stage_per_million(stage: Stage, steps: int) -> float:
    """A run of a million steps: the per-step tables scaled linearly, plus the run's fixed rows
    (``runs``, ``engines``: one each per run, however long), which do not grow with steps."""
    scaled = sum(s.bytes for t, s in stage.sizes.items() if t not in FIXED_TABLES)
    return per_million(scaled, steps) + sum(stage.sizes[t].bytes for t in FIXED_TABLES)


def _size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes:,.0f} B"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _profile_section(r: ProfileResult) -> list[str]:
    p = r.profile
    out = [
        f"## Profile `{p.name}`: {p.what}",
        "",
        f"{r.steps:,} steps logged in {r.write_s:.1f} s; `storage.compact` took {r.compact_s:.2f} s, "
        f"`apply_retention` {r.retention_s:.3f} s ({r.retention.files_deleted} file(s), "
        f"{r.retention.rows_deleted:,} rows, {_size(r.retention.bytes_freed)} freed).",
        "",
        "Bytes per million steps (measured bytes x 1,000,000 / steps, a linear extrapolation; "
        "`runs` and `engines` hold one row per run and are shown as they are):",
        "",
    ]
    header = [
        "table",
        "rows per step",
        *(f"{s}: files" for s in STAGES),
        *(f"{s}: per 1M steps" for s in STAGES),
    ]
    rows = []
    for table in TABLE_ORDER:
        written = r.stages["written"].rows[table]
        fixed = table in FIXED_TABLES
        rows.append(
            [
                f"`{table}`",
                f"{written} per run" if fixed else f"{written / r.steps:,.2f}",
                *(f"{r.stages[s].sizes[table].files:,}" for s in STAGES),
                *(
                    f"{_size(r.stages[s].sizes[table].bytes)} per run"
                    if fixed
                    else _size(per_million(r.stages[s].sizes[table].bytes, r.steps))
                    for s in STAGES
                ),
            ]
        )
    rows.append(
        [
            "**all**",
            "",
            *(f"{r.stages[s].files_total:,}" for s in STAGES),
            *(f"**{_size(stage_per_million(r.stages[s], r.steps))}**" for s in STAGES),
        ]
    )
    out += _report.markdown_table(header, rows)
    written, compacted = r.stages["written"], r.stages["compacted"]
    alloc_w = sum(s.allocated for s in written.sizes.values())
    alloc_c = sum(s.allocated for s in compacted.sizes.values())
    tokens = compacted.sizes["tokens"].bytes
    out += [
        "",
        f"Measured at {r.steps:,} steps: {_size(written.bytes_total)} as written "
        f"({_size(alloc_w)} allocated on this filesystem, which rounds each small file up to whole "
        f"blocks), {_size(compacted.bytes_total)} compacted ({_size(alloc_c)} allocated), "
        f"{_size(r.stages['retention'].bytes_total)} after retention. Compacted, `tokens` is "
        f"{100 * tokens / compacted.bytes_total:.0f}% of the store, "
        f"{tokens / max(1, compacted.rows['tokens']):.1f} bytes per token row.",
        "",
        "Opening the store (medians of repeats, warm page cache):",
        "",
        *_report.markdown_table(
            ["", *STAGES],
            [
                ["files", *(f"{r.stages[s].files_total:,}" for s in STAGES)],
                ["`storage.Store(root)`", *(_ms(r.stages[s].median("store_open")) for s in STAGES)],
                ["`storage.list_runs`", *(_ms(r.stages[s].median("list_runs")) for s in STAGES)],
            ],
        ),
        "",
    ]
    return out


@dataclasses.dataclass
class Report:
    steps: int
    repeats: int
    command: str
    machine: dict[str, str]
    results: list[ProfileResult]

    def to_json(self) -> dict[str, Any]:
        return {
            **_report.fields(self, "steps", "repeats", "command", "machine"),
            "profiles": [
                {
                    "name": r.profile.name,
                    "tokens_per_step": r.profile.tokens_per_step,
                    "write_s": r.write_s,
                    "compact_s": r.compact_s,
                    "retention_s": r.retention_s,
                    "retention": {
                        "files_deleted": r.retention.files_deleted,
                        "rows_deleted": r.retention.rows_deleted,
                        "bytes_freed": r.retention.bytes_freed,
                    },
                    "stages": {
                        name: {
                            "rows": stage.rows,
                            "files": stage.files_total,
                            "bytes": stage.bytes_total,
                            "bytes_per_million_steps": stage_per_million(stage, r.steps),
                            "tables": {t: dataclasses.asdict(s) for t, s in stage.sizes.items()},
                            "samples_s": stage.samples_s,
                            "median_s": {q: stage.median(q) for q in stage.samples_s},
                        }
                        for name, stage in r.stages.items()
                    },
                }
                for r in self.results
            ],
            "checks_passed": True,
        }


def render(report: Report) -> str:
    summary = []
    for r in report.results:
        w, c, k = (r.stages[s] for s in STAGES)
        summary.append(
            [
                f"`{r.profile.name}` ({r.profile.tokens_per_step:,} token rows per step)",
                _size(stage_per_million(w, r.steps)),
                _size(stage_per_million(c, r.steps)),
                _size(stage_per_million(k, r.steps)),
                f"{_ms(w.median('store_open'))} / {_ms(c.median('store_open'))}",
                f"{_ms(w.median('list_runs'))} / {_ms(c.median('list_runs'))}",
            ]
        )
    out = [
        "# logprobe store-size benchmark",
        "",
        f"One RL run of {report.steps:,} steps logged through `storage.Writer`, flushed after every step "
        f"(one file per table per step, as a live run with steps longer than the 1 s flush interval "
        f"writes): {len(METRICS)} metrics per step, a {len(collectors.HIST_EDGES) + 1}-bin log-ratio "
        f"histogram every {HIST_EVERY} steps, one `weight_update` event per step, and per-token rows "
        "in two profiles. Then `storage.compact`, then retention of `tokens` for 7 days (the run is "
        f"dated {AGE_DAYS:.0f} days back, so every token file goes). Sizes are Parquet file bytes "
        "(zstd, the Writer's default), scaled linearly to a million steps (the run's one `runs` and "
        "`engines` row are added as they are, not scaled).",
        "",
        *_report.command_section(report.command),
        "## Summary: bytes per million steps",
        "",
        *_report.markdown_table(
            [
                "profile",
                "as written",
                "compacted",
                "compacted + tokens retention",
                "`Store(root)` written / compacted",
                "`list_runs` written / compacted",
            ],
            summary,
        ),
        "",
    ]
    for r in report.results:
        out += _profile_section(r)
    out += [
        "## Checks (all passed, or there would be no report)",
        "",
        "- The Writer dropped, kept pending or refused no row.",
        "- After each stage, `count(*)` of every table equals the rows logged (tokens: 0 after "
        "retention), and `list_runs` reports the run as finished with every metric row.",
        "- Retention deleted exactly the rows of the `tokens` table, and no token file is left.",
        "",
        *_report.machine_section(report.machine),
        "## How to read this",
        "",
        "- Uncompacted, each of the run's per-step files carries its own Parquet footer and column "
        "metadata, which for a 16-row metrics file is most of the file; compaction removes that "
        "overhead and lets zstd and dictionary encoding see the whole column at once.",
        "- `Store(root)` reads every file's footer, so its time follows the file count: compaction "
        "is what keeps a store of many long runs quick to open.",
        "- Retention works on whole files. Here it runs on the compacted store, where the run's "
        "tokens are one file: the file goes only once its newest row is past the cutoff. "
        "`logprobe compact --keep` deletes before it merges, so per-step files of a live run expire "
        "step by step.",
        "- Extrapolation is linear in steps. Real runs differ in metric count, token rows per step "
        "and text; scale the per-row figures above rather than the totals.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("store_size", __doc__)
    _report.add_count(parser, "--steps", DEFAULT_STEPS, "steps")
    _report.add_count(parser, "--seqs", DEFAULT_SEQS, "sequences per batch")
    _report.add_count(parser, "--seq-len", DEFAULT_SEQ_LEN, "tokens per sequence")
    _report.add_count(parser, "--top-k", DEFAULT_TOP_K, "worst tokens per step")
    _report.add_count(parser, "--repeats", DEFAULT_REPEATS, "timed repeats")
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where to build the stores (default: a temp dir)"
    )
    args, command = _report.parse_command(parser, argv)

    profiles = [
        Profile(
            "batch",
            args.seqs,
            args.seq_len,
            None,
            f"every token of {args.seqs} sequences x {args.seq_len} tokens per step",
        ),
        Profile(
            "worst",
            args.seqs,
            args.seq_len,
            args.top_k,
            f"the {args.top_k} worst tokens per step (`Run.log_mismatch`'s default)",
        ),
    ]
    machine = _report.machine_info()
    with tempfile.TemporaryDirectory(prefix="logprobe-store-size-", dir=args.tmp) as tmp:
        results = [measure_profile(p, args.steps, args.repeats, Path(tmp)) for p in profiles]
    report = Report(args.steps, args.repeats, command, machine, results)
    return _report.finish(args, render(report), report.to_json())


if __name__ == "__main__":
    sys.exit(main())
