"""Bad input, fuzzed: what a trainer, a config loader or a disk hands logprobe on a bad day.

logprobe runs inside someone else's training loop, so a NaN, a bf16 tensor left on the ``meta``
device, a metric keyed by an int, a config that contains itself or a half-written Parquet file must
each end in one of two ways: the call works (a bad value is skipped and counted), or it raises one
ValueError/TypeError whose message names the argument that was wrong. Never another exception type
from deep inside torch or pyarrow, never a crash of the writer's thread, and never the loss of rows
logged before the bad call: every collector test logs sentinel rows first (and one more queued in
the same batch as each fuzzed call), then reads the store back with DuckDB.

Hypothesis draws the inputs from a model that knows the right answer for each (which arguments are
wrong, how many values must be skipped), derandomized so CI sees the same cases every run. Bugs
these tests found in ``storage/`` (a batch lost to one unwritable value, unchecked names on the
writer's fast path, wrong-schema files joining the views, damaged files that aborted or broke the
reader) were fixed there and keep a regression test each here (``test_an_unwritable_metric_*``,
``test_one_changed_byte_*``, ...).
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logprobe import collectors, monitor
from logprobe.collectors import MISMATCH_METRICS, SIGNATURE_METRICS
from logprobe.collectors._values import to_json
from logprobe.collectors.vllm import fingerprint
from logprobe.storage import SCHEMAS, Store, flatten_flags
from tests.collectors.test_rl_stats import RL_KEYS
from tests.conftest import LOGPROBE, REPO
from tests.reliability.conftest import scale

EXAMPLES = int(scale(150, 2000))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
SENTINEL = "sentinel/initial"  # logged and flushed before any fuzzing
QUEUED = "sentinel/queued"  # queued in the same batch as each fuzzed call
I64 = 2**63


# ----------------------------------------------------------------------------------- shared checks


def assert_names(exc: BaseException, *names: str) -> None:
    """``exc`` is a plain ValueError/TypeError whose message names one of ``names`` as a word."""
    assert type(exc) in (ValueError, TypeError), f"{type(exc).__name__} escaped: {exc}"
    message = str(exc)
    assert any(re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message) for name in names), (
        f"{message!r} names none of {names}"
    )


def assert_settled(run: collectors.Run) -> None:
    """Flush now, in this thread (so a flush that fails raises here), and nothing may be left over."""
    run.writer.flush()
    stats = run.writer.stats()
    assert (stats.rows_pending, stats.rows_dropped, stats.write_errors) == (0, 0, 0), stats


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("logprobe-writer")}


class Sentinels:
    """Rows that must come back exactly once, whatever was fuzzed between them."""

    def __init__(self, run: collectors.Run) -> None:
        self.run = run
        self.rows: list[tuple[str, int, float]] = []
        for step in range(16):
            self.run.log(step, {SENTINEL: step / 4})
            self.rows.append((SENTINEL, step, step / 4))
        assert_settled(run)

    def queue_one(self) -> None:
        step = 10**12 + len(self.rows)
        self.run.log(step, {QUEUED: float(step)})
        self.rows.append((QUEUED, step, float(step)))

    def check(self, store: Store) -> None:
        got = store.sql(
            "SELECT name, step, value FROM metrics WHERE run_id = ? AND starts_with(name, 'sentinel/')",
            [self.run.run_id],
        ).to_pylist()
        assert sorted((r["name"], r["step"], r["value"]) for r in got) == sorted(self.rows)


def read_back(root: Path) -> Store:
    store = Store(root)
    assert store.bad_files == {}, store.bad_files
    return store


# ----------------------------------------------------------------------------------- strategies

WILD_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -5e-324, 2.2250738585072014e-308, -0.0]
    ),
)
LOGPROBS = st.one_of(st.floats(-30.0, 0.0), WILD_FLOATS)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)  # no lone surrogates
SURROGATES = st.sampled_from(["\ud800", "a\udc80b", "\udfff" * 3])
REAL_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.int64]
NUMPY_DTYPES = {torch.float64, torch.float32, torch.float16, torch.int32, torch.int64}


def labelled(strategy: st.SearchStrategy[Any], ok: bool) -> st.SearchStrategy[tuple[Any, bool]]:
    return strategy.map(lambda value: (value, ok))


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args)

    return call


def _tensor(values: list[float], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)


def either(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int) -> st.SearchStrategy[Any]:
    """(value, True) from ``good``, or one time in ``odds`` (value, False) from ``bad``."""
    return st.integers(1, odds).flatmap(lambda i: labelled(bad, False) if i == 1 else labelled(good, True))


# Metric values the writer must keep, and ones it must skip and count.
GOOD_VALUES = st.one_of(
    WILD_FLOATS,
    st.integers(-(2**1000), 2**1000),
    st.booleans(),
    st.tuples(WILD_FLOATS, st.sampled_from([np.float16, np.float32, np.float64])).map(
        _quiet(lambda a: a[1](a[0]))
    ),
    st.integers(-I64, I64 - 1).map(np.int64),
    st.integers(0, 2**64 - 1).map(np.uint64),
    st.tuples(
        WILD_FLOATS, st.sampled_from([*REAL_DTYPES, torch.bool]), st.sampled_from([(), (1,), (1, 1)])
    ).map(lambda a: _tensor([a[0]], a[2], a[1])),
    WILD_FLOATS.map(lambda f: np.array([f])),
)
BAD_VALUES = st.one_of(
    st.builds(lambda: torch.ones((), dtype=torch.complex64)),
    st.builds(lambda: torch.ones(1, device="meta")),
    st.integers(2, 4).map(torch.zeros),
    st.builds(lambda: torch.zeros(0)),
    st.sampled_from([None, "1.0", b"1", [1.0], {"v": 1.0}, Decimal("1.5"), 1 + 2j, object()]),
    st.integers(min_value=2**1024, max_value=2**1100),  # beyond float range: skipped at flush
    st.integers(max_value=-(2**1024), min_value=-(2**1100)),
    st.builds(lambda: np.complex128(1 + 2j)),
)
# Metric names: non-empty str of at most 1000 characters, else skipped and counted.
GOOD_NAMES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=1000).filter(
        lambda name: not name.startswith("sentinel/")
    ),
    st.sampled_from([*MISMATCH_METRICS, "n" * 1000, "ünï/ｃｏｄｅ/🙂", "a\x00b", " "]),
)
BAD_NAMES = st.one_of(
    st.integers(),
    st.none(),
    st.booleans(),
    st.tuples(st.integers(), TEXT),
    st.binary(max_size=10),
    st.floats(allow_nan=True),
    st.just(""),
    st.integers(1001, 5000).map(lambda n: "n" * n),
    st.sampled_from(["\udc80", "ok-then-\ud800"]),  # lone surrogates: not storable as UTF-8
)
# Steps and policy versions: accepted, or refused with an error naming the argument.
GOOD_STEPS = st.one_of(
    st.integers(-I64, I64 - 1),
    st.integers(-(2**53), 2**53).map(float),
    st.integers(-I64, I64 - 1).map(np.int64),
    st.integers(-(2**31), 2**31).map(torch.tensor),
)
BAD_STEPS = st.one_of(
    st.integers(min_value=I64),
    st.integers(max_value=-I64 - 1),
    st.sampled_from([math.nan, math.inf, -math.inf, 1.5, -0.5, 1e300, 2.0**63, True, False, None]),
    st.sampled_from(["5", b"5", [5], Decimal("1.5"), Decimal("NaN"), 1j]),
    st.builds(lambda: torch.tensor(3, device="meta")),
    st.builds(lambda: torch.tensor([1, 2])),
    TEXT,
)
BAD_VERSIONS = BAD_STEPS.filter(lambda value: value is not None)


@st.composite
def log_calls(draw: st.DrawFn) -> tuple[Any, Any, Any, str | None, int]:
    """(step, metrics, policy_version, the argument that must be named or None, values to skip)."""
    step, step_ok = draw(either(GOOD_STEPS, BAD_STEPS, 8))
    version, version_ok = draw(either(st.none() | GOOD_STEPS, BAD_VERSIONS, 8))
    if draw(st.integers(0, 9)) == 0:
        metrics: Any = draw(st.sampled_from([None, "loss", 5, [("loss", 1.0)], {1.0}]))
        metrics_ok = False
        invalid = 0
    else:
        pairs = draw(
            st.lists(
                st.tuples(either(GOOD_NAMES, BAD_NAMES, 4), either(GOOD_VALUES, BAD_VALUES, 4)), max_size=8
            )
        )
        metrics = {name: value for (name, _), (value, _) in pairs}
        keep = {name: name_ok and value_ok for (name, name_ok), (_, value_ok) in pairs}
        metrics_ok = True
        invalid = sum(not ok for ok in keep.values())
    wrong = (
        "step" if not step_ok else "policy_version" if not version_ok else None if metrics_ok else "metrics"
    )
    return step, metrics, version, wrong, invalid


# ----------------------------------------------------------------------------------- Run.log


def test_log_survives_fuzzed_steps_names_and_values(
    tmp_path: Path, figures: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    run = collectors.init(run_id="fuzz-log", root=tmp_path, alerts=True, flush_interval=3600)
    sentinels = Sentinels(run)
    tried = kept = skipped = 0

    @FUZZ
    @given(call=log_calls())
    def fuzz(call: tuple[Any, Any, Any, str | None, int]) -> None:
        nonlocal tried, kept, skipped
        tried += 1
        step, metrics, version, wrong, invalid = call
        sentinels.queue_one()
        before = run.writer.stats()
        try:
            run.log(step, metrics, version)
        except Exception as exc:
            assert wrong is not None, f"rejected a good call: {exc!r}"
            assert_names(exc, wrong)
        else:
            assert wrong is None, f"accepted a bad {wrong}"
            kept += len(metrics) - invalid
            skipped += invalid
        assert_settled(run)
        assert run.writer.stats().values_invalid - before.values_invalid == (0 if wrong else invalid)

    fuzz()
    run.close()
    assert run.writer.stats().rows_dropped == 0
    # The alert rules judge every logged step; one odd value must not stop them for the others.
    assert not [r.message for r in caplog.records if "alert evaluation failed" in r.getMessage()]
    with read_back(tmp_path) as store:
        sentinels.check(store)
        fuzzed = store.sql(
            "SELECT count(*) AS n FROM metrics "
            "WHERE run_id = 'fuzz-log' AND NOT starts_with(name, 'sentinel/')"
        ).to_pylist()[0]["n"]
        assert fuzzed == kept
    figures(cases=tried, values_kept=kept, values_skipped=skipped)


def test_an_unwritable_metric_never_takes_its_batch_with_it(tmp_path: Path) -> None:
    """An int beyond float range or a name with a lone surrogate passes the writer's fast path and
    fails only when the batch is built: it once took every metric queued in that interval (here
    the sentinel) with it, and ``close()`` raised into the training loop. Now each is skipped and
    counted and the rest of the batch is written."""
    run = collectors.init(run_id="poison", root=tmp_path, flush_interval=3600)
    try:
        run.log(0, {QUEUED: 1.0})
        run.log(1, {"too-big": 10**400})
        run.log(2, {"\udc80": 1.0})
        assert_settled(run)
        assert run.writer.stats().values_invalid == 2
    finally:
        run.close()


def test_metric_names_are_checked_on_the_fast_path_too(tmp_path: Path) -> None:
    """Empty and over-long names are skipped and counted when another value in the dict is not a
    Python float/int, and written as-is otherwise."""
    run = collectors.init(run_id="names", root=tmp_path)
    run.log(0, {"": 1.0, "n" * 1001: 2.0})
    run.close()
    assert run.writer.stats().values_invalid == 2


# ----------------------------------------------------------------------------------- log_mismatch


class Tokenizer:
    """A stand-in for a Hugging Face tokenizer: only ``decode`` is used, and its answer varies."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def decode(self, ids: list[int]) -> Any:
        if self.kind == "raises":
            raise KeyError(ids[0])
        return {"text": f"<{ids[0]}>", "int": ids[0], "surrogate": "\udc80", "huge": "x" * 10_000}[self.kind]

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind!r})"


def _listable(shape: tuple[int, ...]) -> bool:
    """Whether nested lists keep this shape: ``[]`` is (0,), never (0, 5) or (2, 0, 3)."""
    return all(size > 0 for size in shape[:-1])


def _container(draw: st.DrawFn, tensor: torch.Tensor) -> Any:
    kinds = ["tensor"] + (["list"] if _listable(tuple(tensor.shape)) else [])
    kinds += ["numpy"] if tensor.dtype in NUMPY_DTYPES else []
    kind = draw(st.sampled_from(kinds))
    return tensor if kind == "tensor" else tensor.tolist() if kind == "list" else tensor.numpy()


def _values(
    draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype, floats: Any = LOGPROBS
) -> torch.Tensor:
    n = math.prod(shape)
    if not dtype.is_floating_point:
        floats = st.integers(-50, 0).map(float)
    return _tensor(draw(st.lists(floats, min_size=n, max_size=n)), shape, dtype)


def _mask(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, torch.Tensor]:
    """A mask in one of the forms trainers pass, and the tokens it selects."""
    n = math.prod(shape)
    bits = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1.0, 1.0, math.nan]), min_size=n, max_size=n)))
    bits = bits.reshape(shape)
    kind = draw(st.sampled_from(["bool", "int", "float", "numpy"] + (["list"] if _listable(shape) else [])))
    selected = bits != 0  # NaN counts as selected, like any non-zero
    if kind == "float":
        return bits, selected
    whole = selected.to(torch.int64)
    given = {"bool": selected, "int": whole, "list": whole.tolist(), "numpy": selected.numpy()}[kind]
    return given, selected


@dataclasses.dataclass
class MismatchCase:
    kwargs: dict[str, Any]
    wrong: str | None  # the argument the error must name; None when the call must work
    tokens: int = 0  # expected mismatch/n_tokens and n_nonfinite when it works
    nonfinite: int = 0


@st.composite
def mismatch_cases(draw: st.DrawFn) -> MismatchCase:
    """A valid ``log_mismatch`` call, then at most one defect that must be named."""
    packed = draw(st.booleans())
    lens = draw(st.lists(st.integers(0, 5), max_size=4)) if packed else None
    shape = (sum(lens),) if lens is not None else (draw(st.integers(0, 4)), draw(st.integers(0, 6)))
    trainer = _values(draw, shape, draw(st.sampled_from(REAL_DTYPES)))
    rollout = _values(draw, shape, draw(st.sampled_from(REAL_DTYPES)))
    kwargs: dict[str, Any] = {
        "step": draw(st.integers(0, 10**9)),
        "trainer_logprobs": _container(draw, trainer),
        "rollout_logprobs": _container(draw, rollout),
        "policy_version": draw(st.none() | st.integers(0, 10**6)),
        "tokenizer": draw(
            st.sampled_from([None, *map(Tokenizer, ["text", "int", "surrogate", "huge", "raises"])])
        ),
    }
    selected = torch.ones(shape, dtype=torch.bool)
    if draw(st.booleans()):
        kwargs["mask"], selected = _mask(draw, shape)
    if draw(st.booleans()):
        n = math.prod(shape)
        ids = torch.tensor(draw(st.lists(st.integers(0, 2**31), min_size=n, max_size=n)), dtype=torch.int64)
        kwargs["token_ids"] = _container(draw, ids.reshape(shape))
    if lens is not None and draw(st.booleans()):
        kwargs["seq_lens"] = draw(
            st.sampled_from([lens, torch.tensor(lens, dtype=torch.int64), np.array(lens, dtype=np.int32)])
        )
    if draw(st.booleans()):
        kwargs["eps"] = draw(st.floats(0.001, 0.999))
        kwargs["C"] = draw(st.floats(1.001, 100.0))
        kwargs["top_k"] = draw(st.integers(-3, 40))
    finite = torch.isfinite(trainer.double()) & torch.isfinite(rollout.double())
    case = MismatchCase(kwargs, None, int((selected & finite).sum()), int((selected & ~finite).sum()))

    wider = (*shape[:-1], shape[-1] + 1)
    defects: dict[str, Callable[[], Any]] = {
        "trainer_logprobs": lambda: draw(
            st.sampled_from(
                [
                    torch.empty(shape, device="meta"),
                    torch.zeros(shape, dtype=torch.bool),
                    "abc",
                    None,
                    object(),
                    {"a": 1},
                ]
            )
        ),
        "rollout_logprobs": lambda: draw(
            st.sampled_from(
                [
                    torch.empty(shape, device="meta"),
                    torch.zeros(wider),
                    torch.zeros(shape, dtype=torch.complex64),
                ]
            )
        ),
        "mask": lambda: draw(st.sampled_from([torch.ones(shape, device="meta"), torch.ones(wider), "mask"])),
        "token_ids": lambda: draw(
            st.sampled_from(
                [
                    torch.zeros(shape, dtype=torch.int64, device="meta"),
                    torch.zeros(wider, dtype=torch.int64),
                    torch.full(shape, math.nan),
                ]
            )
        ),
        "eps": lambda: draw(st.sampled_from([0.0, 1.0, -0.1, math.nan, math.inf, "0.2", None, True])),
        "C": lambda: draw(st.sampled_from([1.0, 0.5, math.nan, math.inf, "2", None])),
        "top_k": lambda: draw(st.sampled_from([1.5, "a", None, math.inf, math.nan, True])),
        "step": lambda: draw(BAD_STEPS),
        "policy_version": lambda: draw(BAD_VERSIONS),
    }
    if packed:
        total = shape[0]
        defects["seq_lens"] = lambda: draw(
            st.sampled_from(
                [
                    [*lens, 1],
                    [-1, total + 1],
                    torch.tensor(lens, dtype=torch.float32),
                    [[total]],
                    torch.tensor(lens, device="meta"),
                ]
            )
        )
    else:
        defects["seq_lens"] = lambda: [shape[1]] * shape[0]  # packed-only argument on padded input
    wrong = draw(st.none() | st.sampled_from(sorted(defects)))
    if wrong is None:
        return case
    case.wrong = wrong
    kwargs[wrong] = defects[wrong]()
    if wrong == "trainer_logprobs" and isinstance(kwargs[wrong], str) and draw(st.booleans()):
        # the other layouts that cannot work: ragged rows, and a third dimension
        kwargs.update(
            draw(
                st.sampled_from(
                    [
                        {
                            "trainer_logprobs": [[-0.1, -0.2], [-0.3]],
                            "rollout_logprobs": [[-0.1, -0.2], [-0.3]],
                        },
                        {"trainer_logprobs": torch.zeros(1, 2, 3), "rollout_logprobs": torch.zeros(1, 2, 3)},
                    ]
                )
            )
        )
        for other in ("mask", "token_ids", "seq_lens"):
            kwargs.pop(other, None)
    return case


def test_log_mismatch_survives_fuzzed_tensors(tmp_path: Path, figures: Callable[..., None]) -> None:
    run = collectors.init(run_id="fuzz-mismatch", root=tmp_path, flush_interval=3600)
    sentinels = Sentinels(run)
    tried = worked = 0
    logged_stats = 0

    @FUZZ
    @given(case=mismatch_cases())
    def fuzz(case: MismatchCase) -> None:
        nonlocal tried, worked, logged_stats
        tried += 1
        sentinels.queue_one()
        before = run.writer.stats().rows_accepted
        try:
            stats = run.log_mismatch(**case.kwargs)
        except Exception as exc:
            assert case.wrong is not None, f"rejected a good call: {exc!r}"
            assert_names(exc, case.wrong)
            assert run.writer.stats().rows_accepted == before, "logged something before raising"
        else:
            assert case.wrong is None, f"accepted a bad {case.wrong}"
            assert all(type(v) is float for v in stats.values()), stats
            assert set(stats) <= set(MISMATCH_METRICS) | set(SIGNATURE_METRICS)
            assert (stats["mismatch/n_tokens"], stats["mismatch/n_nonfinite"]) == (
                case.tokens,
                case.nonfinite,
            )
            if case.tokens:
                assert 0.0 <= stats["mismatch/frac_outside_eps"] <= 1.0
            worked += 1
            logged_stats += len(stats)
        assert_settled(run)

    fuzz()
    run.close()
    with read_back(tmp_path) as store:
        sentinels.check(store)
        logged = store.sql(
            "SELECT count(*) AS n FROM metrics "
            "WHERE run_id = 'fuzz-mismatch' "
            "AND (starts_with(name, 'mismatch/') OR starts_with(name, 'signature/'))"
        ).to_pylist()[0]["n"]
        assert logged == logged_stats
    figures(cases=tried, calls_that_worked=worked)


# ----------------------------------------------------------------------------------- rl_stats

FLOAT_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@st.composite
def rl_cases(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    """Valid ``rl_stats`` arguments, then at most one defect that must be named."""
    packed = draw(st.booleans())
    shape = (draw(st.integers(0, 6)),) if packed else (draw(st.integers(0, 3)), draw(st.integers(0, 5)))

    def tokens(at: tuple[int, ...] = shape, floats: Any = LOGPROBS) -> Any:
        return _container(draw, _values(draw, at, draw(st.sampled_from(FLOAT_DTYPES)), floats))

    kwargs: dict[str, Any] = {}
    if draw(st.booleans()):
        kwargs["logprobs"] = tokens()
        if draw(st.booleans()):
            kwargs["old_logprobs"] = tokens()
            per_sequence = not packed and draw(st.booleans())
            kwargs["advantages"] = tokens(shape[:1] if per_sequence else shape, WILD_FLOATS)
        if draw(st.booleans()):
            kwargs["ref_logprobs"] = tokens()
    source = draw(st.sampled_from(["none", "logits", "entropy"]))
    if source == "logits":
        kwargs["logits"] = tokens((*shape, draw(st.integers(1, 5))), WILD_FLOATS)
    elif source == "entropy":
        kwargs["entropy"] = tokens(shape, WILD_FLOATS)
    has_tokens = "logprobs" in kwargs or source != "none"
    if has_tokens and draw(st.booleans()):
        kwargs["mask"] = _mask(draw, shape)[0]
    if draw(st.booleans()):
        kwargs["rewards"] = tokens((draw(st.integers(0, 5)),), WILD_FLOATS)
    if draw(st.booleans()):
        kwargs["response_lengths"] = draw(st.lists(st.integers(0, 4096), max_size=5))
    if draw(st.booleans()):
        kwargs["clip_eps"] = draw(st.floats(0.0, 0.5))
        kwargs["clip_eps_high"] = draw(st.none() | st.floats(0.0, 0.5))
        kwargs["entropy_chunk"] = draw(st.integers(1, 10**6))

    wider = (*shape[:-1], shape[-1] + 1)
    defects: dict[str, Callable[[], Any]] = {
        "clip_eps": lambda: draw(st.sampled_from([math.nan, -0.1, "a", None, math.inf, True])),
        "clip_eps_high": lambda: draw(st.sampled_from([math.nan, -1.0, "x", math.inf])),
        "entropy_chunk": lambda: draw(st.sampled_from([0, -1, 1.5, "a", None, math.inf])),
        "rewards": lambda: draw(
            st.sampled_from(["abc", [[1.0], [1.0, 2.0]], object(), torch.ones(2, device="meta")])
        ),
        "response_lengths": lambda: draw(st.sampled_from(["x", torch.ones(2, dtype=torch.complex64)])),
    }
    for name in ("logprobs", "old_logprobs", "advantages", "ref_logprobs", "entropy", "mask"):
        if name in kwargs:
            defects[name] = lambda: draw(
                st.sampled_from([torch.zeros(shape, device="meta"), torch.zeros(wider)])
            )
    if "logprobs" in kwargs and "logits" in kwargs:
        defects["logprobs"] = lambda: torch.zeros(shape, device="meta")
    if "advantages" in kwargs:
        defects["advantages"] = lambda: torch.zeros(shape[0] + 1)
    if "logprobs" in kwargs and not {"old_logprobs", "ref_logprobs", "logits"} & set(kwargs):
        defects["logprobs"] = lambda: draw(
            st.sampled_from([torch.zeros(shape, device="meta"), torch.zeros(shape, dtype=torch.bool)])
        )
    if "entropy" in kwargs and "logprobs" not in kwargs:
        defects["entropy"] = lambda: torch.zeros(shape, device="meta")
    if "mask" not in kwargs and has_tokens:
        defects["mask"] = lambda: torch.ones(wider)
    if "logits" in kwargs:
        vocab = (*shape, 3)
        choices = [
            torch.zeros(vocab, device="meta"),
            torch.zeros((*shape, 0)),
            torch.zeros(4),
            torch.zeros(vocab, dtype=torch.complex64),
        ]
        if "logprobs" in kwargs:
            choices.append(torch.zeros((*wider, 3)))
        defects["logits"] = lambda: draw(st.sampled_from(choices))
    wrong = draw(st.none() | st.sampled_from(sorted(defects)))
    if wrong is not None:
        kwargs[wrong] = defects[wrong]()
    return kwargs, wrong


def test_rl_stats_survives_fuzzed_tensors(figures: Callable[..., None]) -> None:
    tried = worked = 0

    @FUZZ
    @given(case=rl_cases())
    def fuzz(case: tuple[dict[str, Any], str | None]) -> None:
        nonlocal tried, worked
        tried += 1
        kwargs, wrong = case
        try:
            stats = collectors.rl_stats(**kwargs)
        except Exception as exc:
            assert wrong is not None, f"rejected a good call: {exc!r}"
            assert_names(exc, wrong)
            return
        assert wrong is None, f"accepted a bad {wrong}"
        worked += 1
        assert set(stats) <= RL_KEYS and all(type(v) is float for v in stats.values()), stats
        rewards = kwargs.get("rewards")
        assert ("reward/mean" in stats) == (rewards is not None and len(rewards) > 0)

    fuzz()
    figures(cases=tried, calls_that_worked=worked)


# ----------------------------------------------------------------------------------- configs


class Opaque:
    """No JSON form, and a repr with an address in it."""


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class BadToDict:
    def to_dict(self) -> dict[str, Any]:
        raise ValueError("to_dict exploded")


class SelfToDict:
    def to_dict(self) -> dict[str, Any]:
        return {"me": self}


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Pair:
    left: Any
    right: Any


def _circular(value: Any) -> Any:
    box: dict[str, Any] = {"value": value}
    box["self"] = box
    loop: list[Any] = [box]
    loop.append(loop)
    return loop


def _deep(depth: int) -> Any:
    nested: Any = 0.5
    for _ in range(depth):
        nested = [nested]
    return {"deep": nested}


ATOMS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**64, max_value=2**300),
    WILD_FLOATS,
    TEXT,
    SURROGATES,
    st.binary(max_size=8),
    st.builds(Opaque),
    st.builds(BadRepr),
    st.builds(BadToDict),
    st.builds(SelfToDict),
    st.sampled_from(
        [
            object(),
            Color.RED,
            Decimal("1.5"),
            Decimal("NaN"),
            1 + 2j,
            torch.float32,
            torch.zeros(2),
            torch.zeros(2, device="meta"),
            np.arange(3),
            np.float32("nan"),
            frozenset({1, 2}),
            {1, "a"},
        ]
    ),
)
KEYS = st.one_of(
    TEXT,
    SURROGATES,
    st.integers(),
    st.none(),
    st.booleans(),
    st.tuples(st.integers()),
    st.binary(max_size=4),
    WILD_FLOATS,
)
CONFIGS = st.one_of(
    st.recursive(
        ATOMS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.tuples(children, children),
            st.dictionaries(KEYS, children, max_size=4),
            st.builds(Pair, children, children),
        ),
        max_leaves=12,
    ),
    st.builds(_circular, ATOMS),
    st.integers(60, 3000).map(_deep),
)


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@st.composite
def init_calls(draw: st.DrawFn, missing_rules: Path) -> tuple[dict[str, Any], set[str]]:
    """``init`` keyword arguments and the names of those that are wrong (empty: it must work)."""
    wrong: set[str] = set()

    def pick(name: str, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        value, ok = draw(either(good, bad, 30))
        if not ok:
            wrong.add(name)
        return value

    kwargs = {
        "name": pick("name", st.none() | TEXT, st.one_of(st.integers(), st.binary(max_size=3), SURROGATES)),
        "project": pick("project", st.none() | TEXT, st.one_of(st.integers(), SURROGATES)),
        "config": draw(CONFIGS),
        "tags": pick(
            "tags", st.none() | st.lists(TEXT, max_size=3), st.sampled_from(["abc", [1], [None], ["\udc80"]])
        ),
        "source": pick("source", TEXT.filter(bool), st.sampled_from(["", 5, None, "\ud800"])),
        "rank": pick(
            "rank", st.integers(-(2**31), 2**31 - 1), st.sampled_from([2**40, "0", 1.5, True, None])
        ),
        "worker": pick("worker", st.none() | TEXT, st.sampled_from([5, b"w", "\udc80"])),
        "flush_interval": pick(
            "flush_interval", st.floats(0.05, 10.0), st.sampled_from([0, -1.0, math.nan, math.inf, "1", None])
        ),
        "alerts": pick(
            "alerts", st.sampled_from([None, False, True]), st.sampled_from([5, [], missing_rules])
        ),
        "on_alert": pick(
            "on_alert",
            st.sampled_from(["log", "raise"]),
            st.sampled_from(["LOG", None, 1, np.array(["log"])]),
        ),
    }
    return kwargs, wrong


def test_init_survives_fuzzed_configs_and_names(tmp_path: Path, figures: Callable[..., None]) -> None:
    root = tmp_path / "store"
    missing_rules = tmp_path / "no-such-rules.toml"
    expected: dict[str, tuple[str, str | None]] = {}
    tried = 0

    @FUZZ
    @given(
        call=init_calls(missing_rules),
        bad_run_id=either(
            st.none(), st.sampled_from(["ünï", "../up", "a" * 201, 5, ".hidden", "x.tmp", "a/b"]), 6
        ),
        bad_root=either(st.none(), st.sampled_from([5, b"/tmp", ["/tmp"]]), 30),
    )
    def fuzz(
        call: tuple[dict[str, Any], set[str]], bad_run_id: tuple[Any, bool], bad_root: tuple[Any, bool]
    ) -> None:
        nonlocal tried
        tried += 1
        kwargs, wrong = call
        bad_run_id, bad_root = bad_run_id[0], bad_root[0]
        if bad_root is not None:
            wrong = wrong | {"root"}
        run_id = f"init-{tried}" if bad_run_id is None else bad_run_id
        if bad_run_id is not None:
            wrong = wrong | {"run_id"}
        threads = writer_threads()
        try:
            run = collectors.init(run_id=run_id, root=root if bad_root is None else bad_root, **kwargs)
        except monitor.RuleError as exc:
            assert kwargs["alerts"] == missing_rules and str(missing_rules) in str(exc)
            assert not writer_threads() - threads, "a rejected init left its writer thread running"
        except Exception as exc:
            assert wrong, f"rejected a good call: {exc!r}"
            assert_names(exc, *wrong)
            assert not writer_threads() - threads, "a rejected init left its writer thread running"
        else:
            assert not wrong, f"accepted a bad {wrong}"
            run.close()
            assert run.writer.stats().rows_dropped == 0
            config = kwargs["config"]
            expected[run_id] = (kwargs["name"] or run_id, None if config is None else to_json(config))

    fuzz()
    with read_back(root) as store:
        rows = store.sql("SELECT run_id, name, config, json_valid(config) AS ok FROM runs").to_pylist()
    assert sorted(r["run_id"] for r in rows) == sorted(expected)
    for row in rows:
        assert (row["name"], row["config"]) == expected[row["run_id"]]
        if row["config"] is not None:
            assert row["ok"], row["config"]
            _strict_json(row["config"])
    figures(cases=tried, runs_started=len(expected))


ENGINE_TYPES = {f.name: f.type for f in SCHEMAS["engines"]}
ENGINE_COLUMNS = sorted(
    set(ENGINE_TYPES) - {"ts", "source", "rank", "worker", "flags", "fingerprint", "step_first"}
)


def _column_value(kind: pa.DataType) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """(good, wrong) values for an ``engines`` column of this Arrow type."""
    if pa.types.is_string(kind):
        wrong = st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
        return st.none() | TEXT, wrong | st.lists(st.integers(), max_size=2)
    if pa.types.is_boolean(kind):
        return st.none() | st.booleans(), st.one_of(st.sampled_from([0, 1, "yes", "true"]), st.floats())
    bits = kind.bit_width
    good = st.none() | st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return good, st.one_of(
        st.sampled_from(["2", True, 1.5, 2.0**bits]), st.integers(min_value=2 ** (bits - 1))
    )


@st.composite
def engine_configs(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    config: dict[str, Any] = {}
    wrong: set[str] = set()
    for column in draw(st.lists(st.sampled_from(ENGINE_COLUMNS), max_size=6, unique=True)):
        good, bad = _column_value(ENGINE_TYPES[column])
        if draw(st.integers(0, 7)) == 0:
            config[column] = draw(bad)
            wrong.add(column)
        else:
            config[column] = draw(good)
    if draw(st.booleans()):
        config["flags"] = draw(CONFIGS)
    given_fp = draw(st.sampled_from(["absent", "absent", "empty", "text", "wrong"]))
    if given_fp == "text":
        config["fingerprint"] = draw(TEXT.filter(bool))
    elif given_fp == "empty":
        config["fingerprint"] = ""
    elif given_fp == "wrong":
        config["fingerprint"] = draw(st.sampled_from([5, b"ab", ["a"], 1.5, np.array(["a", "b"])]))
        wrong = {"fingerprint"}  # checked first
    config.update(draw(st.dictionaries(TEXT.filter(lambda k: k not in ENGINE_TYPES), CONFIGS, max_size=3)))
    return config, wrong


def _reversed(value: Any) -> Any:
    return {k: _reversed(v) for k, v in reversed(value.items())} if isinstance(value, dict) else value


def test_engine_fingerprints_survive_fuzzed_configs(tmp_path: Path, figures: Callable[..., None]) -> None:
    run = collectors.init(run_id="fuzz-engine", root=tmp_path, flush_interval=3600)
    sentinels = Sentinels(run)
    tried = 0
    logged: list[str] = []

    @FUZZ
    @given(case=engine_configs(), step=st.none() | st.integers(0, 10**6))
    def fuzz(case: tuple[dict[str, Any], set[str]], step: int | None) -> None:
        nonlocal tried
        tried += 1
        config, wrong = case
        sentinels.queue_one()
        try:
            first = run.log_engine(config, step=step)
        except Exception as exc:
            assert wrong, f"rejected a good config: {exc!r}"
            assert_names(exc, *wrong)
        else:
            assert not wrong, f"accepted a bad {wrong}"
            given_fp = config.get("fingerprint")
            assert (first == given_fp) if given_fp else re.fullmatch(r"[0-9a-f]{16}", first)
            logged.append(first)
            # The same settings in another order are the same engine (unless two keys only JSON
            # tells apart, like 1 and "1", collide: then the order decides which one is kept).
            if to_json(_reversed(config)) == to_json(config):
                assert run.log_engine(_reversed(config), step=step) == first
                logged.append(first)
        assert_settled(run)

    fuzz()
    run.close()
    with read_back(tmp_path) as store:
        sentinels.check(store)
        rows = store.sql("SELECT fingerprint, json_valid(flags) AS ok FROM engines").to_pylist()
    assert sorted(r["fingerprint"] for r in rows) == sorted(logged)
    assert all(r["ok"] for r in rows)
    figures(cases=tried, engine_rows=len(logged))


def _self_containing() -> dict[str, Any]:
    flags: dict[str, Any] = {"dtype": "bfloat16"}
    flags["model_config"] = flags
    return flags


def _leaves(value: Any) -> int:
    return sum(_leaves(v) for v in value.values()) if isinstance(value, dict) and value else 1


def test_vllm_fingerprint_is_a_stable_hash_or_a_named_error(figures: Callable[..., None]) -> None:
    tried = 0

    @FUZZ
    @given(
        flags=st.dictionaries(KEYS, CONFIGS, max_size=6) | st.builds(_self_containing),
        volatile=TEXT,
    )
    def fuzz(flags: dict[Any, Any], volatile: str) -> None:
        nonlocal tried
        tried += 1
        try:
            first = fingerprint(flags)
        except Exception as exc:
            assert flags.get("model_config") is flags, f"rejected good flags: {exc!r}"
            assert_names(exc, "flags")
            return
        assert re.fullmatch(r"[0-9a-f]{16}", first)
        if len(flatten_flags(flags)) == _leaves(flags):  # no two keys collide once flattened
            assert fingerprint(_reversed(flags)) == first
        moved = fingerprint({**flags, "instance_id": volatile, "env": {"VLLM_PORT": volatile}})
        assert moved == fingerprint({**flags, "instance_id": "x", "env": {"VLLM_PORT": "1"}})

    fuzz()
    figures(cases=tried)


def test_vllm_fingerprint_does_not_depend_on_the_hash_seed() -> None:
    """``str`` of a set follows ``PYTHONHASHSEED``; the same engine must hash alike in two processes."""
    # The module alone, without the collectors package (which imports torch: seconds per process).
    code = (
        "import importlib.util\n"
        "spec = importlib.util.spec_from_file_location('config', 'collectors/vllm/_config.py')\n"
        "config = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(config)\n"
        "ops = {'rms_norm', 'silu_and_mul', 'rotary', 'gelu'}\n"
        "print(config.fingerprint({'model_config': {'ops': ops}}))\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2", "3")
    ]
    hashes = {child.communicate(timeout=120)[0] for child in children}
    assert all(child.returncode == 0 for child in children)
    assert len(hashes) == 1, hashes


# ----------------------------------------------------------------------------------- alert rules

VALID_RULES = """\
[[rule]]
name = "k3-bad"
metric = "mismatch/k3"
above = 1e-2
for_steps = 2
severity = "bad"
cooldown_s = 300
notify = ["log", "hook"]

[[rule]]
name = "ess-low"
metric = "mismatch/ess"
below = 0.3

[notifier.hook]
kind = "webhook"
format = "slack"
url_env = "LOGPROBE_FUZZ_URL"
timeout_s = 2.0
"""
# What a schema error may point at: a field, a section, or the [[rule]] array itself.
SCHEMA_WORDS = re.compile(
    r"field '\w+'|unknown field|unknown top-level key|'rule' must be|\[notifier\]|\[\[rule\]\]"
    r"|'above' or 'below'"
)


def assert_rule_error(exc: BaseException, path: Path, text: str) -> None:
    assert isinstance(exc, monitor.RuleError), f"{type(exc).__name__} escaped: {exc}"
    message = str(exc)
    assert str(path) in message, message
    line = re.match(re.escape(str(path)) + r":(\d+): not valid TOML", message)
    if line:
        assert 1 <= int(line.group(1)) <= max(1, text.count("\n") + 1), message
    else:
        assert SCHEMA_WORDS.search(message), f"names no field: {message}"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[[rule]]\nname = "a"\nmetric = \n', ":3: not valid TOML"),
        ('[[rule]]\nname = "a\nmetric = "m"\n', ":2: not valid TOML"),
        ("[[rule]\n", ":1: not valid TOML"),
        ('\n\n[[rule]]\nname = "a"\nname = "b"\n', ":5: not valid TOML"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = [1, 2', ":4: not valid TOML"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1e\n', ":4: not valid TOML"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = true\n', "field 'above'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = nan\n', "field 'above'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nbelow = -inf\n', "field 'below'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\nfor_steps = true\n', "field 'for_steps'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\nfor_steps = 1.5\n', "field 'for_steps'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\ncooldown_s = -1\n', "field 'cooldown_s'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\ncooldown_s = "5m"\n', "field 'cooldown_s'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\nseverity = 5\n', "field 'severity'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\nnotify = "log"\n', "field 'notify'"),
        ('[[rule]]\nname = 5\nmetric = "m"\nabove = 1\n', "field 'name'"),
        ('[[rule]]\nname = "a"\nmetric = ""\nabove = 1\n', "field 'metric'"),
        (
            '[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\n[[rule]]\nname = "a"\nmetric = "m"\nbelow = 1\n',
            "field 'name'",
        ),
        ('[[rules]]\nname = "a"\nmetric = "m"\nabove = 1\n', "unknown top-level key(s) 'rules'"),
        ("rule = 5\n", "'rule' must be an array of tables"),
        ('[rule]\nname = "a"\nmetric = "m"\nabove = 1\n', "'rule' must be an array of tables"),
        ("notifier = 1\n", "[notifier]"),
        ('[notifier.x]\nurl_env = "X"\n', "field 'kind'"),
        ('[notifier.x]\nkind = "webhook"\nurl_env = 5\n', "field 'url_env'"),
        ('[notifier.x]\nkind = "webhook"\nurl_env = "X"\nformat = "teams"\n', "field 'format'"),
        ('[notifier.x]\nkind = "webhook"\nurl_env = "X"\ntimeout_s = "2s"\n', "field 'timeout_s'"),
        ('[notifier.x]\nkind = "webhook"\nurl_env = "X"\nurll = "http://x"\n', "unknown field(s) urll"),
    ],
)
def test_malformed_rule_files_name_the_file_and_the_line_or_field(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(monitor.RuleError) as info:
        monitor.load_rules(path)
    assert where in str(info.value)
    assert_rule_error(info.value, path, text)


def test_rule_files_that_are_not_text_or_not_files(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'[[rule]]\nname = "a"\nmetric = "\xff\xfe"\n')
    with pytest.raises(monitor.RuleError, match=re.escape(f"{binary}:3: not valid TOML")):
        monitor.load_rules(binary)
    with pytest.raises(monitor.RuleError, match=re.escape(f"{tmp_path}: cannot read")):
        monitor.load_rules(tmp_path)  # a directory
    with pytest.raises(monitor.RuleError, match="no such rule file"):
        monitor.load_rules(tmp_path / "missing.toml")


TOML_VALUES = [
    "true",
    "nan",
    "inf",
    "-1",
    "0",
    '"x"',
    '""',
    "[1, 2]",
    '["log", 5]',
    "{a = 1}",
    "1979-05-27",
    "1e400",
    "-0.0",
    '"warn"',
]
TOML_NOISE = st.text(st.sampled_from(list("[]=\"#,{}.\n \t\\'abc1-+_\x00é🙂")), min_size=1, max_size=6)


@st.composite
def mutated_rule_files(draw: st.DrawFn) -> tuple[str, str | None]:
    """A valid rule file with one field's value replaced (that field, if an error, must be named), or
    with random characters inserted or deleted somewhere."""
    text = VALID_RULES
    if draw(st.booleans()):
        lines = text.split("\n")
        candidates = [i for i, line in enumerate(lines) if " = " in line]
        i = draw(st.sampled_from(candidates))
        field = lines[i].split(" = ")[0]
        lines[i] = f"{field} = {draw(st.sampled_from(TOML_VALUES))}"
        return "\n".join(lines), field
    at = draw(st.integers(0, len(text)))
    if draw(st.booleans()):
        return text[:at] + draw(TOML_NOISE) + text[at:], None
    return text[:at] + text[at + draw(st.integers(1, 40)) :], None


def test_mutated_rule_files_load_or_name_what_is_wrong(tmp_path: Path, figures: Callable[..., None]) -> None:
    path = tmp_path / "rules.toml"
    tried = rejected = 0

    @FUZZ
    @given(case=mutated_rule_files())
    def fuzz(case: tuple[str, str | None]) -> None:
        nonlocal tried, rejected
        tried += 1
        text, field = case
        path.write_text(text, encoding="utf-8")
        try:
            rules, notifiers = monitor.load_rules(path)
        except Exception as exc:
            rejected += 1
            assert_rule_error(exc, path, text)
            if field is not None and "not valid TOML" not in str(exc):
                assert f"'{field}'" in str(exc) or "exactly one of" in str(exc), str(exc)
            return
        for rule in rules:  # what loads must be usable as loaded
            assert rule.for_steps >= 1 and math.isfinite(rule.threshold) and rule.cooldown_s >= 0
            assert set(rule.notify) <= {"log", *notifiers}

    fuzz()
    figures(cases=tried, files_rejected=rejected)


# ----------------------------------------------------------------------------------- Parquet files


def fixed_metrics_file() -> bytes:
    """A valid ``metrics`` file whose bytes are the same on every run (the byte-level cases below
    point into it)."""
    n = 64
    schema = SCHEMAS["metrics"]
    table = pa.table(
        {
            "step": pa.array(range(n), pa.int64()),
            "policy_version": pa.nulls(n, pa.int64()),
            "ts": pa.array([1_700_000_000_000_000 + i for i in range(n)], pa.int64()).cast(
                schema.field("ts").type
            ),
            "source": pa.array(["trainer"] * n),
            "rank": pa.array([0] * n, pa.int32()),
            "worker": pa.nulls(n, pa.string()),
            "name": pa.array(["fixed/a", "fixed/b"] * (n // 2)),
            "value": pa.array([i * 0.25 for i in range(n)], pa.float64()),
        },
        schema=schema,
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


@pytest.fixture
def sentinel_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    with collectors.init(run_id="sentinel", root=root) as run:
        for step in range(10):
            run.log(step, {SENTINEL: float(step)})
    return root


def _sentinel_count(store: Store) -> int:
    return store.sql("SELECT count(*) AS n FROM metrics WHERE run_id = 'sentinel'").to_pylist()[0]["n"]


def _query(root: Path, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOGPROBE, "query", "--root", str(root), sql], capture_output=True, text=True, timeout=120
    )


def test_corrupt_parquet_files_are_skipped_named_and_reported(
    sentinel_store: Path, figures: Callable[..., None]
) -> None:
    good = fixed_metrics_file()
    corrupt = {
        "zero-bytes": b"",
        "magic-only": b"PAR1",
        "truncated-half": good[: len(good) // 2],
        "truncated-by-one": good[:-1],
        "header-and-magic": b"PAR1" + b"\x00" * 64 + b"PAR1",
        "lying-footer-length": good[:-8] + (2**31 - 1).to_bytes(4, "little") + b"PAR1",
        "random-bytes": random.Random(9).randbytes(4096),
        "text": b"step,name,value\n1,loss,0.5\n",
    }
    placed: list[Path] = []
    for i, (name, data) in enumerate(corrupt.items()):
        table = ["metrics", "events", "engines", "runs"][i % 4]
        folder = sentinel_store / table / "run_id=broken"
        folder.mkdir(parents=True, exist_ok=True)
        placed.append(folder / f"{name}-00000001.parquet")
        placed[-1].write_bytes(data)
    placed.append(sentinel_store / "metrics" / "run_id=broken" / "a-directory-00000001.parquet")
    placed[-1].mkdir()

    with Store(sentinel_store) as store:
        assert set(store.bad_files) == set(placed)
        assert all(reason.strip() for reason in store.bad_files.values())
        assert _sentinel_count(store) == 10
        listed = store.sql("SELECT path FROM bad_files").column(0).to_pylist()
        assert sorted(listed) == sorted(map(str, placed))
    proc = _query(sentinel_store, "SELECT count(*) AS n FROM metrics WHERE run_id = 'sentinel'")
    assert proc.returncode == 0, proc.stderr
    assert "10" in proc.stdout
    for path in placed:
        assert path.name in proc.stderr, f"{path.name} not named in: {proc.stderr}"
    figures(cases=len(placed))


CORRUPTIONS = st.one_of(
    st.integers(0, 10_000).map(lambda cut: ("truncated", cut)),
    st.binary(max_size=4096).filter(lambda b: not b.endswith(b"PAR1")).map(lambda b: ("junk", b)),
    st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=64))
    .filter(lambda a: not a[1].endswith(b"PAR1"))
    .map(lambda a: ("prefix-and-junk", a)),
)


def test_truncated_and_junk_files_never_break_the_store(
    sentinel_store: Path, figures: Callable[..., None]
) -> None:
    good = fixed_metrics_file()
    folder = sentinel_store / "metrics" / "run_id=broken"
    folder.mkdir(parents=True)
    tried = 0

    @settings(FUZZ, max_examples=int(scale(60, 1000)))
    @given(corruption=CORRUPTIONS)
    def fuzz(corruption: tuple[str, Any]) -> None:
        nonlocal tried
        tried += 1
        kind, arg = corruption
        data = {
            "truncated": lambda: good[: min(arg, len(good) - 1)],
            "junk": lambda: arg,
            "prefix-and-junk": lambda: good[: min(arg[0], len(good) - 1)] + arg[1],
        }[kind]()
        if data.endswith(b"PAR1") and len(data) > 4:
            data = data[:-1]  # a footer of arbitrary bytes is test_one_changed_byte_*'s case
        path = folder / f"case{tried}-00000001.parquet"
        path.write_bytes(data)
        try:
            with Store(sentinel_store) as store:
                assert list(store.bad_files) == [path] and store.bad_files[path]
                assert _sentinel_count(store) == 10
        finally:
            path.unlink()

    fuzz()
    figures(cases=tried)


def test_a_wrong_schema_file_is_set_aside(sentinel_store: Path) -> None:
    """A readable file whose ``step`` is strings (or ``value`` is strings) passes the footer check,
    and DuckDB's ``union_by_name`` then widens the whole column to VARCHAR: ``max(step) + 1`` and
    ``avg(value)`` fail for every run, and ``logprobe query`` reports a Binder Error naming no file."""
    folder = sentinel_store / "metrics" / "run_id=wrong"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"step": ["1", "2"], "name": ["x", "y"], "value": [1.0, 2.0]}),
        folder / "steps-00000001.parquet",
    )
    pq.write_table(
        pa.table({"step": [1, 2], "name": ["x", "y"], "value": ["1", "b"]}),
        folder / "values-00000001.parquet",
    )
    with Store(sentinel_store) as store:
        assert {p.name for p in store.bad_files} == {"steps-00000001.parquet", "values-00000001.parquet"}
        store.sql("SELECT max(step) + 1, avg(value) FROM metrics")
    proc = _query(sentinel_store, "SELECT max(step) + 1 AS next, avg(value) AS mean FROM metrics")
    assert proc.returncode == 0 and "steps-00000001.parquet" in proc.stderr, proc.stderr


_FLIP_CHILD = """
import json, sys
from pathlib import Path
import duckdb
from logprobe.storage import Store
root, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
good = (root / "fixed.bin").read_bytes()
folder = root / "metrics" / "run_id=broken"
folder.mkdir(parents=True, exist_ok=True)
for i, (pos, delta) in enumerate(cases):
    data = bytearray(good)
    data[pos] = (data[pos] + delta) % 256
    path = folder / f"flip{i}-00000001.parquet"
    path.write_bytes(bytes(data))
    print(json.dumps({"case": i, "pos": pos, "delta": delta, "started": True}), flush=True)
    out = {"case": i}
    try:
        store = Store(root)
    except Exception as exc:
        out["store_raised"] = f"{type(exc).__name__}: {exc}"[:300]
    else:
        try:
            out["sentinel"] = store.sql(
                "SELECT count(*) AS n FROM metrics WHERE run_id = 'sentinel'"
            ).to_pylist()[0]["n"]
        except duckdb.Error as exc:
            out["sentinel"] = f"{type(exc).__name__}: {exc}"[:300]
        out["bad"] = path in store.bad_files
        if not out["bad"]:
            try:
                store.sql("SELECT sum(value), max(step) FROM metrics")
            except duckdb.Error as exc:
                out["query_error_names_file"] = path.name in str(exc)
        store.close()
    path.unlink()
    print(json.dumps(out), flush=True)
"""
# Changed bytes in fixed_metrics_file() (position, added value) found by trying every position
# once: each shows one of the bugs below, whatever the random cases happen to hit.
QUERY_FAILS_NAMING_NO_FILE = (4, 1)  # a data page: "TProtocolException: Invalid data"
STORE_RAISES = (1288, 1)  # a footer pyarrow reads and DuckDB refuses while building the views
READER_ABORTS = (1304, 1)  # pyarrow 26.0.1: std::terminate, "Definition level histogram size mismatch"


def test_one_changed_byte_never_breaks_the_store(sentinel_store: Path, figures: Callable[..., None]) -> None:
    """Store(root) must open, skip or name the damaged file, and keep the other runs readable, for
    any one changed byte. Before the fix some footers that pyarrow accepts made DuckDB raise while the
    views were built (Store raised, naming no file); some damaged data pages failed every query over
    the table naming no file; and some footers aborted the process inside pyarrow
    (``FileMetaData.row_group(i).column(j)``), taking ``logprobe query`` and the dashboard down."""
    good = fixed_metrics_file()
    (sentinel_store / "fixed.bin").write_bytes(good)
    rng = random.Random(20)
    cases = [(rng.randrange(len(good) - 8), rng.randrange(1, 256)) for _ in range(int(scale(40, 400)))]
    cases += [QUERY_FAILS_NAMING_NO_FILE, STORE_RAISES, READER_ABORTS]  # the abort ends the run: last
    proc = subprocess.run(
        [sys.executable, "-c", _FLIP_CHILD, str(sentinel_store), json.dumps(cases)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    figures(cases=sum("started" in r for r in results))
    problems = []
    for result in results:
        if "started" in result:
            continue
        flip = cases[result["case"]]
        if "store_raised" in result:
            problems.append(f"{flip}: Store(root) raised {result['store_raised']}")
        elif result["sentinel"] != 10:
            problems.append(f"{flip}: the healthy run reads {result['sentinel']}")
        elif not result.get("query_error_names_file", True):
            problems.append(f"{flip}: a query over the table failed without naming the file")
    if proc.returncode != 0:
        last = [r for r in results if "started" in r][-1]
        problems.append(f"the reader died ({proc.returncode}) on {last}: {proc.stderr[-200:]}")
    assert not problems, "\n".join(problems)
