"""In-loop benchmark: what logprobe's mismatch metrics cost inside the trainer's step.

``Run.log_mismatch`` runs once per training step on the whole batch of response tokens, on the
trainer's critical path, so its cost is paid every step. This script measures it on padded
``[B, T]`` float32 logprobs with a bool mask (what a trainer holds after its logprob recompute) and
puts it next to two references computed on the same batch in the same process:

  (a) separate reductions: the same outputs (every ``mismatch/*`` stat, the log-ratio histogram and
      the worst tokens) computed the way RL frameworks compute their mismatch metrics today, one
      masked reduction per metric, each followed by ``.item()`` (a host sync per metric), in the
      dtype the tensors come in (float32); also in float64, which isolates the dtype from the syncs
      and is the variant whose outputs must agree with logprobe's;
  (b) a fused floor: the least work for the same outputs, one lean float64 expression graph whose
      reductions are stacked into one vector and moved to the host once, run eagerly and, when
      ``torch.compile`` works here, compiled (Inductor fuses the passes into a few C++ loops).

Before anything is timed, the float64 paths must agree with logprobe's ``compute_mismatch`` (stats
within ``REL_TOL`` relative, histogram counts and worst-token keys likewise), otherwise the script
raises: the comparison is only meaningful if every contender does the same work.

It then times ``Run.log_mismatch`` against the trainer's own no-grad logprob recompute (forward,
``log_softmax``, gather of the sampled tokens) for the tiny demo Llama and a mid-sized random Llama,
which says what fraction of a step the metrics add.

The machines this runs on are small and shared, so every number is the median of ``--repeats``
calls, the contenders alternate (in a rotating order) and the report lists every repeat.

Run it from the repository root:
``python -m bench.in_loop [--tokens 1000000,16000000] [--repeats N] [--out PATH] [--json PATH]
[--model-sizes tiny,medium] [--skip-models] [--no-compile]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench import _report
from bench._workload import timed
from logprobe import collectors
from logprobe.collectors._mismatch import DEFAULT_C, DEFAULT_EPS, DEFAULT_TOP_K, HIST_EDGES, MISMATCH_METRICS

DEFAULT_TOKENS = (1_000_000, 16_000_000)
DEFAULT_REPEATS = 3
DEFAULT_MODELS = ("tiny", "medium")
RUN_ID = "bench-in-loop"

# Realistic mismatch: most tokens differ by ~1e-2 in log space (kernel / precision noise), a few by
# much more (the tail that pushes ratios outside eps and C), so every stat is non-trivial.
NOISE_STD = 0.01
TAIL_FRACTION = 1e-3
TAIL_STD = 1.0
# Trainer logprobs: -exp(U(log 1e-4, log 10)), i.e. |logprob| log-uniform over 1e-4 .. 10.
LOG_ABS_LOGPROB_RANGE = (math.log(1e-4), math.log(10.0))

REL_TOL = 1e-6  # float64 paths must agree with logprobe this closely ...
ABS_TOL = 1e-12  # ... or this closely in absolute terms for stats near zero

MIN_SECONDS = 3.0  # timed seconds per contender to aim for on a batch size ...
MAX_REPEAT_FACTOR = 5  # ... with at most this many times --repeats calls

TARGET_VS_SEPARATE = 3.0  # logprobe at least this many times faster than (a)
TARGET_VS_FLOOR = 2.0  # and at most this many times slower than (b)
TARGET_SIGNATURES = 1.3  # log_mismatch with signatures and sequences, against without

N_BINS = len(HIST_EDGES) + 1


# ---------------------------------------------------------------------------------------- workload


@dataclasses.dataclass
class Batch:
    """One step's padded logprobs: what the trainer holds when it calls ``log_mismatch``."""

    trainer: torch.Tensor  # [B, T] float32
    rollout: torch.Tensor  # [B, T] float32
    mask: torch.Tensor  # [B, T] bool, response tokens (left-aligned, right padding)

    @property
    def valid_tokens(self) -> int:
        return int(self.mask.sum())


def response_mask(batch: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Right-padded responses with lengths uniform in [width/2, width] (every row non-empty)."""
    lens = torch.randint(max(1, width // 2), width + 1, (batch, 1), generator=generator)
    return torch.arange(width)[None, :] < lens


def rollout_like(trainer: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The rollout engine's logprobs for the same tokens: the trainer's plus small noise and a tail."""
    noise = NOISE_STD * torch.randn(trainer.shape, generator=generator)
    tail = torch.rand(trainer.shape, generator=generator) < TAIL_FRACTION
    noise = torch.where(tail, TAIL_STD * torch.randn(trainer.shape, generator=generator), noise)
    return (trainer + noise).clamp_max(0.0)  # still log-probabilities


def make_batch(tokens: int, seed: int = 0) -> Batch:
    """A ``B x T`` batch with ``B = T = isqrt(tokens)`` padded positions."""
    side = max(1, math.isqrt(tokens))
    gen = torch.Generator().manual_seed(seed)
    lo, hi = LOG_ABS_LOGPROB_RANGE
    trainer = -torch.exp(torch.empty(side, side).uniform_(lo, hi, generator=gen))
    return Batch(trainer, rollout_like(trainer, gen), response_mask(side, side, gen))


# ---------------------------------------------------------------------------------------- contenders


@dataclasses.dataclass
class Outputs:
    """What every contender produces, in a form that can be compared across them."""

    stats: dict[str, float]
    histogram: list[float]  # counts per log-ratio bin (HIST_EDGES), or [] where not produced
    worst_abs: list[float]  # |log ratio| of the worst tokens, largest first, or [] where not produced


def separate_reductions(
    trainer: torch.Tensor,
    rollout: torch.Tensor,
    mask: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    eps: float = DEFAULT_EPS,
    C: float = DEFAULT_C,  # noqa: N803
    top_k: int = DEFAULT_TOP_K,
) -> Outputs:
    """(a) The way RL frameworks compute these metrics today: one masked reduction per metric.

    It mirrors verl (``masked_mean`` per metric, ``masked_select`` for the probability diffs and
    ``torch.corrcoef`` for the Pearson correlation, as in its rollout/actor debug metrics; k1/k3/chi2/
    ESS and the outside-the-trust-region fractions as in its rollout-correction metrics) and TRL (which
    logs the importance-ratio mean/min/max the same way): each metric is its own chain of full-tensor
    ops ending in ``.item()``, a host sync (on a GPU, a pipeline stall), in the tensors' own dtype
    unless ``dtype`` is given. Like those frameworks it does not drop non-finite tokens from the
    stats (it only counts them), which is less work than logprobe does, so the comparison favours it.
    """
    t, r = (trainer, rollout) if dtype is None else (trainer.to(dtype), rollout.to(dtype))
    mf = mask.to(t.dtype)
    n = mf.sum()

    def masked_mean(x: torch.Tensor) -> float:
        return ((x * mf).sum() / n).item()

    def masked_max(x: torch.Tensor) -> float:
        return x.masked_fill(~mask, -math.inf).max().item()

    def masked_min(x: torch.Tensor) -> float:
        return x.masked_fill(~mask, math.inf).min().item()

    d = t - r
    rho = torch.exp(d)
    p_t, p_r = torch.exp(t), torch.exp(r)
    abs_dp = (p_t - p_r).abs()
    ratio_mean = masked_mean(rho)
    rho_sq_mean = masked_mean(rho * rho)
    seq_n = mf.sum(-1)
    seq_d = (d * mf).sum(-1)
    seq_k3 = ((rho - 1 - d) * mf).sum(-1)
    stats = {
        "mismatch/n_tokens": n.item(),
        "mismatch/n_nonfinite": (mask & ~(torch.isfinite(t) & torch.isfinite(r))).sum().item(),
        "mismatch/k1": masked_mean(-d),
        "mismatch/k2": masked_mean(0.5 * d * d),
        "mismatch/k3": masked_mean(rho - 1 - d),
        "mismatch/abs_logp_diff_mean": masked_mean(d.abs()),
        "mismatch/abs_logp_diff_max": masked_max(d.abs()),
        "mismatch/abs_prob_diff_mean": torch.masked_select(abs_dp, mask).mean().item(),
        "mismatch/abs_prob_diff_max": torch.masked_select(abs_dp, mask).max().item(),
        "mismatch/prob_pearson": torch.corrcoef(
            torch.stack([torch.masked_select(p_t, mask), torch.masked_select(p_r, mask)])
        )[0, 1].item(),
        "mismatch/ratio_mean": ratio_mean,
        "mismatch/ratio_std": math.sqrt(masked_mean((rho - ratio_mean) ** 2)),
        "mismatch/ratio_min": masked_min(rho),
        "mismatch/ratio_max": masked_max(rho),
        "mismatch/chi2": rho_sq_mean - 1.0,
        "mismatch/ess": ratio_mean * ratio_mean / rho_sq_mean,
        "mismatch/frac_outside_eps": masked_mean(((rho < 1 - eps) | (rho > 1 + eps)).to(t.dtype)),
        "mismatch/frac_outside_C": masked_mean(((rho < 1 / C) | (rho > C)).to(t.dtype)),
        "mismatch/seq_log_ratio_mean": seq_d[seq_n > 0].mean().item(),
        "mismatch/seq_log_ratio_abs_max": seq_d.abs().max().item(),
        "mismatch/seq_k3_max": (seq_k3 / seq_n.clamp_min(1.0)).max().item(),
    }
    edges = torch.tensor(HIST_EDGES, dtype=t.dtype)
    histogram = torch.bincount(torch.bucketize(d[mask], edges), minlength=N_BINS).tolist()
    k = min(top_k, d.numel())
    worst_abs, worst_idx = torch.topk(d.abs().masked_fill(~mask, -1.0).reshape(-1), k)
    t.reshape(-1)[worst_idx].tolist()  # the rows a worst-token table needs, one transfer each
    r.reshape(-1)[worst_idx].tolist()
    worst_idx.tolist()
    return Outputs(stats, [float(c) for c in histogram], [w for w in worst_abs.tolist() if w >= 0])


def fused_vector(
    trainer: torch.Tensor,
    rollout: torch.Tensor,
    mask: torch.Tensor,
    eps: float = DEFAULT_EPS,
    C: float = DEFAULT_C,  # noqa: N803
    top_k: int = DEFAULT_TOP_K,
) -> torch.Tensor:
    """(b) The floor: every output as one float64 vector, from as few full-tensor passes as possible.

    Same semantics as ``compute_mismatch`` on padded input (non-finite tokens excluded and counted),
    but leaner: sums of ``rho - 1`` (zero on excluded tokens) replace masked sums of ``rho``, the
    Pearson correlation and ratio variance come from raw moments, per-sequence sums are row sums of
    the ``[B, T]`` view instead of an ``index_add_`` over per-token sequence ids, and min/max of the
    ratio are ``exp`` of min/max of the log ratio. Layout: ``MISMATCH_METRICS``, then ``N_BINS``
    histogram counts, then the ``top_k`` worst |log ratio| keys (-1 past the valid tokens), then
    their flat indices, trainer and rollout logprobs.
    """
    f64 = torch.float64
    width = trainer.shape[-1]
    t = trainer.to(f64)
    r = rollout.to(f64)
    finite = torch.isfinite(t) & torch.isfinite(r)
    valid = mask & finite
    v = valid.to(f64)
    d = torch.where(valid, t - r, 0.0)
    rho_m1 = torch.expm1(d)  # rho - 1, exactly 0 on excluded tokens
    k3 = rho_m1 - d
    abs_d = d.abs()
    p_t = torch.where(valid, torch.exp(t), 0.0)
    p_r = torch.where(valid, torch.exp(r), 0.0)
    n = v.sum()
    inv_n = 1.0 / n.clamp_min(1.0)
    s1 = rho_m1.sum() * inv_n
    s2 = (rho_m1 * rho_m1).sum() * inv_n
    mean_t, mean_r = p_t.sum() * inv_n, p_r.sum() * inv_n
    cov = (p_t * p_r).sum() * inv_n - mean_t * mean_r
    var_t = (p_t * p_t).sum() * inv_n - mean_t * mean_t
    var_r = (p_r * p_r).sum() * inv_n - mean_r * mean_r
    rho = rho_m1 + 1.0
    seq_n = v.reshape(-1, width).sum(1)
    seq_d = d.reshape(-1, width).sum(1)
    seq_k3 = k3.reshape(-1, width).sum(1)
    stats = torch.stack(
        [
            n,
            (mask & ~finite).to(f64).sum(),
            -d.sum() * inv_n,
            0.5 * (d * d).sum() * inv_n,
            k3.sum() * inv_n,
            abs_d.sum() * inv_n,
            abs_d.max(),
            (p_t - p_r).abs().sum() * inv_n,
            (p_t - p_r).abs().max(),
            cov / torch.sqrt(var_t * var_r),
            1.0 + s1,
            torch.sqrt(s2 - s1 * s1),
            torch.exp(torch.where(valid, d, math.inf).min()),
            torch.exp(torch.where(valid, d, -math.inf).max()),
            s2 + 2.0 * s1,
            (1.0 + s1) * (1.0 + s1) / (1.0 + s2 + 2.0 * s1),
            ((rho < 1 - eps) | (rho > 1 + eps)).to(f64).sum() * inv_n,
            ((rho < 1 / C) | (rho > C)).to(f64).sum() * inv_n,
            seq_d.sum() / (seq_n > 0).to(f64).sum().clamp_min(1.0),
            seq_d.abs().max(),
            (seq_k3 / seq_n.clamp_min(1.0)).max(),
        ]
    )
    edges = torch.tensor(HIST_EDGES, dtype=f64)
    bins = torch.bucketize(d.reshape(-1), edges)
    counts = torch.zeros(N_BINS, dtype=f64).scatter_add_(0, bins, v.reshape(-1))
    worst, idx = torch.topk(torch.where(valid, abs_d, -1.0).reshape(-1), top_k)
    return torch.cat([stats, counts, worst, idx.to(f64), t.reshape(-1)[idx], r.reshape(-1)[idx]])


def unpack_fused(host: Sequence[float]) -> Outputs:
    """Split ``fused_vector``'s host copy back into named outputs."""
    n_stats = len(MISMATCH_METRICS)
    stats = dict(zip(MISMATCH_METRICS, host[:n_stats], strict=True))
    histogram = list(host[n_stats : n_stats + N_BINS])
    worst = host[n_stats + N_BINS : n_stats + N_BINS + DEFAULT_TOP_K]
    return Outputs(stats, histogram, [w for w in worst if w >= 0])


def _mismatch_only(stats: dict[str, float]) -> dict[str, float]:
    """The ``mismatch/*`` stats, which every contender computes (the signatures have no peer)."""
    return {k: v for k, v in stats.items() if k.startswith("mismatch/")}


def from_mismatch_result(result: collectors.MismatchResult) -> Outputs:
    return Outputs(
        dict(result.stats),
        [float(b["count"]) for b in result.histogram],
        [abs(w["log_ratio"]) for w in result.worst],
    )


# ---------------------------------------------------------------------------------------- agreement


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How far one contender's outputs are from logprobe's, and whether that is within tolerance."""

    contender: str
    tokens: int
    max_rel_diff: float  # over every stat, histogram count and worst-token key
    worst_output: str  # which one
    max_abs_diff: float
    outputs_compared: int
    checked: bool  # False: reported only (the float32 baseline cannot match float64 results)
    passed: bool


def _rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def _agrees(a: float, b: float) -> bool:
    return _rel_diff(a, b) <= REL_TOL or abs(a - b) <= ABS_TOL


def _paired(
    name: str, what: str, label: str, reference: Sequence[float], other: Sequence[float]
) -> list[tuple[str, float, float]]:
    """``other``'s outputs of one kind next to logprobe's, named ``label[i]``; none when ``other`` is
    empty (a contender that does not produce them), and an error when it has another count."""
    if not other:
        return []
    if len(other) != len(reference):
        raise _report.BenchmarkError(f"{name}: {len(other)} {what}, logprobe has {len(reference)}")
    return [(f"{label}[{i}]", a, b) for i, (a, b) in enumerate(zip(reference, other, strict=True))]


def compare(name: str, tokens: int, reference: Outputs, other: Outputs, *, check: bool) -> Agreement:
    """Compare every output ``other`` shares with ``reference``; raise on a miss when ``check``."""
    pairs: list[tuple[str, float, float]] = []
    missing = set(reference.stats) ^ set(other.stats)
    if missing:
        raise _report.BenchmarkError(f"{name}: stats differ in their names: {sorted(missing)}")
    pairs += [(key, reference.stats[key], other.stats[key]) for key in reference.stats]
    pairs += _paired(name, "histogram bins", "histogram", reference.histogram, other.histogram)
    pairs += _paired(name, "worst tokens", "worst", reference.worst_abs, other.worst_abs)
    worst_diff, worst_key = max((_rel_diff(a, b), key) for key, a, b in pairs)
    if worst_diff == 0:
        worst_key = "(all identical)"
    max_abs = max(abs(a - b) if math.isfinite(a - b) else math.inf for _, a, b in pairs)
    failed = [(key, a, b) for key, a, b in pairs if not _agrees(a, b)]
    if check and failed:
        detail = ", ".join(f"{key}: {a!r} vs {b!r}" for key, a, b in failed)
        raise _report.BenchmarkError(f"{name} disagrees with logprobe beyond {REL_TOL:g} relative: {detail}")
    return Agreement(name, tokens, worst_diff, worst_key, max_abs, len(pairs), check, not failed)


# ---------------------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call wall time of one contender on one batch size, every repeat kept."""

    contender: str
    tokens: int  # padded positions B * T
    valid_tokens: int
    samples_s: list[float]
    first_call_s: float  # the untimed warm-up call (includes compilation for the compiled floor)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``timed`` after a collection, so that no contender pays for garbage another one left."""
    gc.collect()
    return timed(fn)


# Contender names, in report order.
LOGPROBE = "logprobe `compute_mismatch`"
LOG_MISMATCH = "logprobe `Run.log_mismatch` (+ store rows)"
LOG_MISMATCH_BARE = "logprobe `Run.log_mismatch`, no signatures or sequences (as before)"
SEPARATE_F32 = "(a) separate reductions, float32 (as today)"
SEPARATE_F64 = "(a') separate reductions, float64"
FLOOR_EAGER = "(b) fused floor, eager"
FLOOR_COMPILED = "(b) fused floor, `torch.compile`"


@dataclasses.dataclass
class CompileInfo:
    """Whether ``torch.compile`` of the floor worked here, and what it cost."""

    enabled: bool
    error: str | None = None
    compile_s: dict[int, float] = dataclasses.field(default_factory=dict)  # tokens -> first-call time


def measure_size(
    tokens: int,
    repeats: int,
    run: collectors.Run,
    compiled: Callable[..., torch.Tensor] | None,
    info: CompileInfo,
) -> tuple[list[Timing], list[Agreement]]:
    """Time every contender on one batch; check the outputs agree first."""
    batch = make_batch(tokens)
    t, r, m = batch.trainer, batch.rollout, batch.mask
    step = iter(range(10**9))
    contenders: dict[str, Callable[[], Outputs]] = {
        # The floors do the mismatch stats only, so this contender does too (like for like).
        LOGPROBE: lambda: from_mismatch_result(
            collectors.compute_mismatch(t, r, m, signatures=False, samples=0)
        ),
        LOG_MISMATCH: lambda: Outputs(_mismatch_only(run.log_mismatch(next(step), t, r, m)), [], []),
        LOG_MISMATCH_BARE: lambda: Outputs(
            run.log_mismatch(next(step), t, r, m, signatures=False, samples=0), [], []
        ),
        SEPARATE_F32: lambda: separate_reductions(t, r, m),
        SEPARATE_F64: lambda: separate_reductions(t, r, m, dtype=torch.float64),
        FLOOR_EAGER: lambda: unpack_fused(fused_vector(t, r, m).cpu().tolist()),
    }
    if compiled is not None:
        contenders[FLOOR_COMPILED] = lambda: unpack_fused(compiled(t, r, m).cpu().tolist())

    first: dict[str, float] = {}
    outputs: dict[str, Outputs] = {}
    for name in list(contenders):
        try:
            first[name], outputs[name] = _timed(contenders[name])
        except Exception as exc:
            if name != FLOOR_COMPILED:
                raise
            info.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            del contenders[name]
    if FLOOR_COMPILED in first:
        info.compile_s[tokens] = first[FLOOR_COMPILED]

    reference = outputs[LOGPROBE]
    agreements = [
        compare(name, tokens, reference, out, check=name != SEPARATE_F32)
        for name, out in outputs.items()
        if name != LOGPROBE
    ]
    del outputs

    names = list(contenders)
    # Cheap batches get more calls (up to MAX_REPEAT_FACTOR x repeats, about MIN_SECONDS per contender):
    # on a shared machine a handful of sub-second calls gives a median at the mercy of the neighbours.
    eager_first = [first[name] for name in names if name != FLOOR_COMPILED]
    calls = min(repeats * MAX_REPEAT_FACTOR, max(repeats, math.ceil(MIN_SECONDS / max(eager_first))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(calls):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order
            elapsed, _ = _timed(contenders[name])
            samples[name].append(elapsed)
    valid = batch.valid_tokens  # the batch's tensors are freed when this returns
    return [Timing(name, tokens, valid, samples[name], first[name]) for name in names], agreements


# ---------------------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class ModelTiming:
    """The trainer's logprob recompute against ``log_mismatch`` on that batch's logprobs."""

    model: str
    params_m: float
    batch: int
    seq_len: int
    response_tokens: int
    forward_s: list[float]
    log_mismatch_s: list[float]

    @property
    def forward_median_s(self) -> float:
        return statistics.median(self.forward_s)

    @property
    def log_mismatch_median_s(self) -> float:
        return statistics.median(self.log_mismatch_s)

    @property
    def ratio(self) -> float:
        return self.log_mismatch_median_s / self.forward_median_s


def medium_llama() -> torch.nn.Module:
    """A random Llama of ~170M parameters built in memory (the shape of a small real model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def tiny_llama(directory: Path) -> torch.nn.Module:
    """The demo's tiny Llama, written by ``build_tiny_model`` and loaded back as a trainer would."""
    from transformers import AutoModelForCausalLM

    from logprobe.collectors.tiny_model import build_tiny_model

    return AutoModelForCausalLM.from_pretrained(build_tiny_model(directory / "tiny"))


# Model name -> default (batch, seq_len). The medium model's forward takes ~3 s per 1k tokens on a
# 2-core CPU, so its default batch is smaller than the tiny model's 8 x 512.
MODEL_BATCH = {"tiny": (8, 512), "medium": (2, 512)}


def recompute_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The trainer's logprob recompute: no-grad forward, float32 log_softmax, gather of the next tokens."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def measure_model(
    name: str, model: torch.nn.Module, batch: int, seq_len: int, repeats: int, run: collectors.Run
) -> ModelTiming:
    """Time the recompute and ``log_mismatch`` on the same batch, alternating, after one warm-up each."""
    model.eval()
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    trainer = recompute_logprobs(model, ids)
    rollout = rollout_like(trainer, gen)
    mask = response_mask(batch, seq_len - 1, gen)
    step = iter(range(10**6, 10**9))

    def log() -> dict[str, float]:
        return run.log_mismatch(next(step), trainer, rollout, mask, token_ids=ids[:, 1:])

    log()
    forward_s: list[float] = []
    log_s: list[float] = []
    for _ in range(repeats):
        forward_s.append(_timed(lambda: recompute_logprobs(model, ids))[0])
        log_s.append(_timed(log)[0])
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return ModelTiming(name, params, batch, seq_len, int(mask.sum()), forward_s, log_s)


# ---------------------------------------------------------------------------------------- report


@dataclasses.dataclass
class Report:
    tokens: list[int]
    repeats: int
    command: str
    machine: dict[str, str]
    compile: CompileInfo
    timings: list[Timing]
    agreements: list[Agreement]
    models: list[ModelTiming]

    def timing(self, contender: str, tokens: int) -> Timing | None:
        for timing in self.timings:
            if timing.contender == contender and timing.tokens == tokens:
                return timing
        return None

    def verdicts(self) -> list[_report.Verdict]:
        """(goal, limit, measured, met) per batch size; the floor goal against each floor measured."""
        rows = []
        for tokens in self.tokens:
            lp = self.timing(LOGPROBE, tokens)
            sep = self.timing(SEPARATE_F32, tokens)
            assert lp is not None and sep is not None
            speedup = sep.median_s / lp.median_s
            rows.append(
                (
                    f"{tokens:,} tokens: logprobe vs (a) float32",
                    f"(a) / logprobe >= {TARGET_VS_SEPARATE:g}",
                    f"{speedup:.2f}",
                    speedup >= TARGET_VS_SEPARATE,
                )
            )
            full, bare = self.timing(LOG_MISMATCH, tokens), self.timing(LOG_MISMATCH_BARE, tokens)
            if full is not None and bare is not None:
                cost = full.median_s / bare.median_s
                rows.append(
                    (
                        f"{tokens:,} tokens: `log_mismatch` with signatures and 2 sequences vs without",
                        f"with / without <= {TARGET_SIGNATURES:g}",
                        f"{cost:.2f}",
                        cost <= TARGET_SIGNATURES,
                    )
                )
            for floor in (FLOOR_EAGER, FLOOR_COMPILED):
                fl = self.timing(floor, tokens)
                if fl is None:
                    continue
                slowdown = lp.median_s / fl.median_s
                rows.append(
                    (
                        f"{tokens:,} tokens: logprobe vs {floor}",
                        f"logprobe / floor <= {TARGET_VS_FLOOR:g}",
                        f"{slowdown:.2f}",
                        slowdown <= TARGET_VS_FLOOR,
                    )
                )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            **_report.fields(self, "tokens", "repeats", "command", "machine"),
            "compile": {
                "enabled": self.compile.enabled,
                "error": self.compile.error,
                "first_call_s": {str(k): v for k, v in self.compile.compile_s.items()},
            },
            "timings": [
                {
                    "contender": t.contender,
                    "tokens": t.tokens,
                    "valid_tokens": t.valid_tokens,
                    "median_s": t.median_s,
                    "first_call_s": t.first_call_s,
                    "samples_s": t.samples_s,
                }
                for t in self.timings
            ],
            "agreement": {
                "passed": all(a.passed for a in self.agreements if a.checked),
                "rel_tol": REL_TOL,
                "contenders": [dataclasses.asdict(a) for a in self.agreements],
            },
            "models": [
                {
                    **dataclasses.asdict(m),
                    "forward_median_s": m.forward_median_s,
                    "log_mismatch_median_s": m.log_mismatch_median_s,
                    "ratio": m.ratio,
                }
                for m in self.models
            ],
            "goals": _report.goals_json(self.verdicts()),
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.3f} ms"


def render(report: Report) -> str:
    """The Markdown report (also what goes to stdout)."""
    comp = report.compile
    if not comp.enabled:
        compile_line = "`torch.compile` of the floor: not tried (`--no-compile`)."
    elif comp.error:
        compile_line = (
            f"`torch.compile` of the floor failed, so only the eager floor is shown: `{comp.error}`."
        )
    else:
        firsts = ", ".join(f"{k:,} tokens: {v:.1f} s" for k, v in comp.compile_s.items())
        compile_line = (
            f"`torch.compile` of the floor worked; its first call per batch shape (compilation, possibly "
            f"from Inductor's on-disk cache) took {firsts}."
        )
    out = [
        "# logprobe in-loop benchmark: mismatch metrics inside the training step",
        "",
        f"Padded `[B, T]` float32 trainer and rollout logprobs with a bool response mask (B = T; response "
        f"lengths uniform in [T/2, T]); trainer logprobs `-exp(U(log 1e-4, log 10))`, rollout = trainer + "
        f"N(0, {NOISE_STD:g}) noise, {TAIL_FRACTION:g} of the tokens N(0, {TAIL_STD:g}). Every contender "
        f"produces the 21 `mismatch/*` stats, the {N_BINS}-bin log-ratio histogram and the "
        f"{DEFAULT_TOP_K} worst tokens. Medians of at least {report.repeats} calls per contender (more "
        f"on cheap batches: about {MIN_SECONDS:g} s per contender, at most {MAX_REPEAT_FACTOR}x as many) "
        "after one untimed warm-up call; contenders alternate in a rotating order. CPU only.",
        "",
        *_report.command_section(report.command),
        *_report.machine_section(report.machine),
        *_report.goals_section(report.verdicts()),
        "## Metric cost per call",
        "",
        compile_line,
        "",
    ]
    for tokens in report.tokens:
        rows = [t for t in report.timings if t.tokens == tokens]
        lp = report.timing(LOGPROBE, tokens)
        assert lp is not None
        side = math.isqrt(tokens)
        out += [
            f"### {side:,} x {side:,} = {side * side:,} padded positions "
            f"({rows[0].valid_tokens:,} response tokens)",
            "",
            *_report.markdown_table(
                ["contender", "calls", "median", "min", "max", "first call", "median / logprobe"],
                [
                    [
                        t.contender,
                        str(len(t.samples_s)),
                        _ms(t.median_s),
                        _ms(min(t.samples_s)),
                        _ms(max(t.samples_s)),
                        _ms(t.first_call_s),
                        f"{t.median_s / lp.median_s:.2f}",
                    ]
                    for t in rows
                ],
            ),
            "",
        ]
    out += [
        "## Agreement (checked before timing)",
        "",
        "Every output (stats, histogram counts, worst-token |log ratio|) against logprobe's "
        f"`compute_mismatch`; each float64 path must agree on every output within {REL_TOL:g} relative "
        f"(or {ABS_TOL:g} absolute), else the script raises before timing anything. The float32 baseline "
        "is reported, not checked: float32 sums and float32 `exp(d) - 1 - d` cannot promise 1e-6, which is "
        "why logprobe upcasts (how far off it is depends on the data; see its row).",
        "",
        *_report.markdown_table(
            [
                "tokens",
                "contender",
                "outputs",
                "max relative difference",
                "where",
                "max abs difference",
                "verdict",
            ],
            [
                [
                    f"{a.tokens:,}",
                    a.contender,
                    str(a.outputs_compared),
                    f"{a.max_rel_diff:.2e}",
                    a.worst_output,
                    f"{a.max_abs_diff:.2e}",
                    ("PASS" if a.passed else "FAIL") if a.checked else "reported only",
                ]
                for a in report.agreements
            ],
        ),
        "",
    ]
    if report.models:
        out += [
            "## Cost relative to the trainer's logprob recompute",
            "",
            "Forward = no-grad forward + float32 `log_softmax` + gather of the sampled tokens (what a "
            "trainer runs to get its logprobs); `log_mismatch` = `Run.log_mismatch` on those logprobs, with "
            "rollout = trainer + noise, a response mask and token ids. Medians of "
            f"{report.repeats} alternating calls after one warm-up.",
            "",
            *_report.markdown_table(
                [
                    "model",
                    "params",
                    "batch",
                    "response tokens",
                    "forward",
                    "`log_mismatch`",
                    "log_mismatch / forward",
                ],
                [
                    [
                        m.model,
                        f"{m.params_m:.1f} M",
                        f"{m.batch} x {m.seq_len}",
                        f"{m.response_tokens:,}",
                        _ms(m.forward_median_s),
                        _ms(m.log_mismatch_median_s),
                        f"{m.ratio:.2%}",
                    ]
                    for m in report.models
                ],
            ),
            "",
        ]
    out += [
        "## Every repeat",
        "",
        *_report.markdown_table(
            ["tokens", "contender", "per-call times"],
            [[f"{t.tokens:,}", t.contender, ", ".join(_ms(s) for s in t.samples_s)] for t in report.timings]
            + [
                [
                    f"{m.response_tokens:,}",
                    f"{m.model}: forward / log_mismatch",
                    ", ".join(_ms(s) for s in m.forward_s)
                    + " / "
                    + ", ".join(_ms(s) for s in m.log_mismatch_s),
                ]
                for m in report.models
            ],
        ),
        "",
        "## How to read this",
        "",
        "- All contenders run on the CPU, where a host sync (`.item()`) is nearly free; on a GPU each of "
        "(a)'s syncs (21 `.item()` calls plus the histogram's and worst tokens' transfers) also stalls the "
        "pipeline, so (a)'s cost relative to logprobe here is a lower bound for GPUs.",
        "- The machine is shared: compare the min and max columns and the load averages in Machine before "
        "trusting a ratio; OpenMP-parallel kernels (the compiled floor above all) suffer most when "
        "another process holds a core.",
        "- `Run.log_mismatch` = `compute_mismatch` + queueing the stats, histogram and worst-token rows "
        "for the store's background writer (which flushes to Parquet concurrently).",
        "- (a) float32 does less work than logprobe (no float64 upcast, no exclusion of non-finite "
        "tokens) and its results drift from the float64 ones (see Agreement); (a') is the same code in "
        "float64, which separates the cost of the dtype from the cost of computing metric by metric.",
        "- The floor computes the same outputs as logprobe with fewer passes (see `fused_vector`); the "
        "compiled floor is what a fused kernel achieves, the eager floor what plain torch ops achieve.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- driver


def run_benchmark(
    tokens: Sequence[int],
    repeats: int,
    models: Sequence[str],
    model_batch: tuple[int, int] | None,
    use_compile: bool,
    command: str,
) -> Report:
    """Measure every batch size, then every model, logging into a throwaway store."""
    machine = _report.machine_info()
    machine["torch"] = f"{torch.__version__} ({torch.get_num_threads()} intra-op threads, "
    machine["torch"] += f"{torch.get_num_interop_threads()} inter-op)"
    info = CompileInfo(enabled=use_compile)
    compiled = torch.compile(fused_vector, dynamic=False) if use_compile else None
    timings: list[Timing] = []
    agreements: list[Agreement] = []
    model_timings: list[ModelTiming] = []
    with tempfile.TemporaryDirectory(prefix="logprobe-bench-in-loop-") as tmp:
        run = collectors.init(run_id=RUN_ID, root=Path(tmp) / "store", config={"bench": "in_loop"})
        try:
            for size in tokens:
                size_timings, size_agreements = measure_size(size, repeats, run, compiled, info)
                gc.collect()  # free this size's batch before the next one is built
                if info.error:
                    compiled = None
                timings += size_timings
                agreements += size_agreements
            for name in models:
                model = tiny_llama(Path(tmp)) if name == "tiny" else medium_llama()
                batch, seq_len = model_batch or MODEL_BATCH[name]
                model_timings.append(measure_model(name, model, batch, seq_len, repeats, run))
                del model
                gc.collect()
        finally:
            run.close()
    machine["load average (1, 5, 15 min) at end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if "transformers" in sys.modules:
        machine["transformers"] = sys.modules["transformers"].__version__
    return Report(list(tokens), repeats, command, machine, info, timings, agreements, model_timings)


def _batch_shape(text: str) -> tuple[int, int]:
    try:
        batch, seq_len = (_report.positive_int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected BxT such as 8x512, got {text!r}") from exc
    if seq_len < 2:
        raise argparse.ArgumentTypeError("T must be >= 2 (logprobs are for tokens 1..T-1)")
    return batch, seq_len


def _model(name: str) -> str:
    if name not in MODEL_BATCH:
        raise argparse.ArgumentTypeError(f"unknown model {name!r}; choose from {sorted(MODEL_BATCH)}")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("in_loop", __doc__)
    _report.add_list(parser, "--tokens", _report.positive_int, DEFAULT_TOKENS, "padded positions per batch")
    _report.add_count(parser, "--repeats", DEFAULT_REPEATS, "timed calls per contender")
    _report.add_list(parser, "--model-sizes", _model, DEFAULT_MODELS, "models to time")
    parser.add_argument("--skip-models", action="store_true", help="skip the forward-pass comparison")
    parser.add_argument(
        "--model-batch",
        type=_batch_shape,
        default=None,
        help="BxT for every model's batch (default tiny 8x512, medium 2x512)",
    )
    parser.add_argument(
        "--threads",
        type=_report.positive_int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    parser.add_argument("--no-compile", action="store_true", help="do not try torch.compile for the floor")
    args, command = _report.parse_command(parser, argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = [] if args.skip_models else args.model_sizes
    report = run_benchmark(args.tokens, args.repeats, models, args.model_batch, not args.no_compile, command)
    return _report.finish(args, render(report), report.to_json())


if __name__ == "__main__":
    sys.exit(main())
