"""Two rollout engines behind one small interface: real vLLM, and a compact PyTorch sampler.

The PyTorch sampler runs the same Hugging Face model as the trainer, with a KV cache and a
prefix cache, and honours the knobs behind the V0-to-V1 failure modes: which logprobs it reports
(raw or processed), whether its prefix cache survives a weight update, whether an update waits
for the batch in flight, and the dtype of the final projection. It says what it is in its
fingerprint; it never claims to be vLLM.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from logprobe.collectors._run import Run


@dataclass(frozen=True)
class EngineSettings:
    logprobs_mode: str = "processed_logprobs"  # or "raw_logprobs"
    prefix_caching: bool = False
    reset_prefix_cache_on_update: bool = True
    pause_generation_for_updates: bool = True  # False: an update lands mid-batch
    lm_head_dtype: str = "float32"  # or "bfloat16"
    temperature: float = 0.7
    top_p: float = 1.0  # < 1: sample from the nucleus; processed logprobs are renormalised over it


@dataclass
class Rollout:
    tokens: torch.Tensor  # [N, T] sampled response ids
    logprobs: torch.Tensor  # [N, T] what the engine reported for them
    cached_tokens: int  # prompt tokens served from the prefix cache (over the batch)


class RolloutEngine(Protocol):
    settings: EngineSettings
    version: int  # the policy version of the weights it serves

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int) -> Rollout: ...
    def push_weights(self, state: dict[str, torch.Tensor], version: int) -> None: ...
    def record(self, run: Run, step: int) -> None: ...
    def set_step(self, step: int) -> None: ...
    def drain_events(self) -> list[tuple[str, dict[str, Any]]]: ...
    def close(self) -> None: ...


class TorchSampler:
    """A batch sampler over a Hugging Face causal LM with KV and prefix caching."""

    name = "torch-sampler"

    def __init__(self, model: Any, settings: EngineSettings) -> None:
        self.model = copy.deepcopy(model).eval()
        self.settings = settings
        self.version = 0
        self._prefix_cache: dict[tuple[int, ...], tuple[Any, int]] = {}
        self._pending: tuple[dict[str, torch.Tensor], int] | None = None
        self._events: list[tuple[str, dict[str, Any]]] = []

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int) -> Rollout:
        lengths = {len(p) for p in prompts}
        if len(lengths) != 1:
            raise ValueError("the demo's prompts must share one length (no padding in this sampler)")
        prefix = _common_prefix(prompts)
        ids = torch.tensor([p for p in prompts for _ in range(n)])
        cache, cached_tokens = self._prefix_kv(prefix)
        cache.batch_repeat_interleave(ids.shape[0])
        temperature = self.settings.temperature
        tokens, reported = [], []
        with torch.no_grad():
            hidden = self.model.model(ids[:, len(prefix) :], past_key_values=cache, use_cache=True)
            last = hidden.last_hidden_state[:, -1]
            for position in range(max_tokens):
                if position == max_tokens // 2 and self._pending is not None:
                    self._apply(
                        *self._pending, in_flight=True
                    )  # new weights, old KV: one response, two policies
                    self._pending = None
                logits = self._head(last)
                processed = _nucleus(torch.log_softmax(logits / temperature, dim=-1), self.settings.top_p)
                nxt = torch.multinomial(processed.exp(), 1)
                scores = (
                    processed
                    if self.settings.logprobs_mode == "processed_logprobs"
                    else torch.log_softmax(logits, dim=-1)
                )
                tokens.append(nxt[:, 0])
                reported.append(scores.gather(1, nxt)[:, 0])
                if position + 1 < max_tokens:
                    out = self.model.model(nxt, past_key_values=cache, use_cache=True)
                    last = out.last_hidden_state[:, -1]
        return Rollout(
            torch.stack(tokens, 1), torch.stack(reported, 1).double(), cached_tokens * len(prompts)
        )

    def push_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        if self.settings.pause_generation_for_updates:
            self._apply(state, version, in_flight=False)
        else:
            self._pending = ({k: v.detach().clone() for k, v in state.items()}, version)

    def record(self, run: Run, step: int) -> None:
        s = self.settings
        run.log_engine(
            {
                "engine": self.name,
                "engine_generation": None,
                "logprobs_mode": s.logprobs_mode,
                "enable_prefix_caching": s.prefix_caching,
                "async_scheduling": not s.pause_generation_for_updates,
                "dtype": "float32",
                "lm_head_dtype": s.lm_head_dtype,
                "lm_head_weight_dtype": "float32",
                "seed": None,
                "device": "cpu",
                "torch_version": torch.__version__,
                "flags": {
                    "engine": self.name,
                    "logprobs_mode": s.logprobs_mode,
                    "prefix_caching": s.prefix_caching,
                    "reset_prefix_cache_on_update": s.reset_prefix_cache_on_update,
                    "pause_generation_for_updates": s.pause_generation_for_updates,
                    "lm_head_dtype": s.lm_head_dtype,
                    "temperature": s.temperature,
                    "top_p": s.top_p,
                },
            },
            step=step,
        )

    def set_step(self, step: int) -> None:
        """Nothing to do: the loop drains this engine's events and stamps them with the step."""

    def drain_events(self) -> list[tuple[str, dict[str, Any]]]:
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        self._prefix_cache.clear()

    def _apply(self, state: dict[str, torch.Tensor], version: int, *, in_flight: bool) -> None:
        self.model.load_state_dict(state)
        self.version = version
        reset = self.settings.reset_prefix_cache_on_update or not self.settings.prefix_caching
        if reset:
            self._prefix_cache.clear()
        self._events.append(
            (
                "weight_update",
                {
                    "method": "load_state_dict",
                    "weight_version": version,
                    "generation_in_flight": in_flight,
                    "paused_generation": not in_flight,
                    "prefix_caching": self.settings.prefix_caching,
                    "prefix_cache_reset": reset if self.settings.prefix_caching else None,
                },
            )
        )
        if self.settings.prefix_caching and not reset:
            self._events.append(
                (
                    "stale_prefix_cache",
                    {
                        "weight_version": version,
                        "message": "no prefix-cache reset after a weight update: prompts sharing a "
                        "cached prefix reuse KV computed with the old weights",
                    },
                )
            )

    def _prefix_kv(self, prefix: list[int]) -> tuple[Any, int]:
        key = tuple(prefix)
        if self.settings.prefix_caching and key in self._prefix_cache:
            return copy.deepcopy(self._prefix_cache[key][0]), len(prefix)
        with torch.no_grad():
            cache = self.model.model(torch.tensor([prefix]), use_cache=True).past_key_values
        if self.settings.prefix_caching:
            self._prefix_cache[key] = (copy.deepcopy(cache), self.version)
        return cache, 0

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.lm_head.weight
        if self.settings.lm_head_dtype == "bfloat16":
            return torch.nn.functional.linear(hidden.bfloat16(), weight.bfloat16()).float()
        return torch.nn.functional.linear(hidden.float(), weight.float())


class VllmEngine:
    """The real vLLM ``LLM``, in process, weights pushed with the worker's ``reload_weights``."""

    name = "vllm"

    def __init__(self, model_dir: Path, settings: EngineSettings, seed: int = 0) -> None:
        import vllm

        if not settings.pause_generation_for_updates:
            raise ValueError(
                "the offline vLLM engine generates a batch in one blocking call, so an update "
                "cannot land mid-batch here; that scenario needs AsyncLLM (use --engine torch)"
            )
        overrides = {"head_dtype": "float32"} if settings.lm_head_dtype == "float32" else {}
        self.settings = settings
        self.llm = vllm.LLM(
            model=str(model_dir),
            dtype="bfloat16",
            max_model_len=512,
            enforce_eager=True,
            distributed_executor_backend="uni",
            seed=seed,
            logprobs_mode=settings.logprobs_mode,
            enable_prefix_caching=settings.prefix_caching,
            hf_overrides=overrides,
            worker_extension_cls="logprobe.collectors.vllm.LogprobeWorkerExtension",
            disable_log_stats=False,
        )
        self._sampling = vllm.SamplingParams
        self._watcher: Any = None
        self.version = 0

    def attach(self, run: Run) -> None:
        import logprobe.collectors.vllm as lpv

        self._watcher = lpv.watch(run, self.llm)

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int) -> Rollout:
        import logprobe.collectors.vllm as lpv

        params = self._sampling(
            n=n,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            max_tokens=max_tokens,
            logprobs=0,
            ignore_eos=True,
        )
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        batch = lpv.rollout_batch(outputs)
        cached = sum(o.num_cached_tokens or 0 for o in outputs)
        return Rollout(batch.token_ids, batch.logprobs, cached)

    def push_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        self.version = version
        if self._watcher is not None:
            self._watcher.weight_version = version
        worker = self.llm.llm_engine.model_executor.driver_worker
        worker.reload_weights(weights_iterator=list(state.items()), is_checkpoint_format=True)
        if self.settings.reset_prefix_cache_on_update and self.settings.prefix_caching:
            self.llm.reset_prefix_cache()

    def record(self, run: Run, step: int) -> None:
        import logprobe.collectors.vllm as lpv

        lpv.record_engine(run, self.llm, step=step)
        if self._watcher is not None:
            self._watcher.step = step

    def set_step(self, step: int) -> None:
        if self._watcher is not None:
            self._watcher.step = step

    def drain_events(self) -> list[tuple[str, dict[str, Any]]]:
        return []  # the watcher writes vLLM's weight-update events itself

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()


class RemoteVllmEngine:
    """vLLM in another interpreter (another virtualenv, another release), driven over the rollout
    worker's protocol (``_rollout_worker.py``); the worker logs the engine side into the same run.

    Weights travel as a safetensors file in ``workdir``: the demo's model is tiny, and a file is
    what any two interpreters can share."""

    name = "vllm"

    def __init__(
        self, python: str, model_dir: Path, settings: EngineSettings, run: Run, workdir: Path, seed: int = 0
    ) -> None:
        from logprobe.collectors.replay import EngineWorker

        if not settings.pause_generation_for_updates:
            raise ValueError("the offline vLLM engine cannot take a weight update mid-batch")
        self.settings = settings
        self.version = 0
        self._step = 0
        self.workdir = workdir
        self.worker = EngineWorker(python, args=["-m", "logprobe.collectors.demo._rollout_worker"])
        self.release = str(self.worker.info["vllm"])
        self.worker.request(
            "start",
            model=str(model_dir),
            settings=asdict(settings),
            seed=seed,
            root=str(run.writer.root),
            run_id=run.run_id,
        )

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int) -> Rollout:
        reply = self.worker.request(
            "generate",
            prompts=prompts,
            n=n,
            max_tokens=max_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            step=self._step,
        )
        tokens = torch.tensor(reply["token_ids"], dtype=torch.long)
        return Rollout(tokens, torch.tensor(reply["logprobs"], dtype=torch.float64), int(reply["cached"]))

    def push_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        from safetensors.torch import save_file

        path = self.workdir / "weights.safetensors"
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
        self.version = version
        self.worker.request("push", path=str(path), version=version)

    def record(self, run: Run, step: int) -> None:
        self._step = step
        self.worker.request("record", step=step)

    def set_step(self, step: int) -> None:
        self._step = step

    def drain_events(self) -> list[tuple[str, dict[str, Any]]]:
        return []  # the worker's watcher writes the engine's events itself

    def close(self) -> None:
        try:
            self.worker.request("close")
        finally:
            self.worker.close()


def _nucleus(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logprobs`` restricted to the smallest set of tokens holding ``top_p`` of the mass and
    renormalised over it, as vLLM's processed logprobs are (the token that crosses ``top_p`` is kept)."""
    if top_p >= 1.0:
        return logprobs
    sorted_lp, order = logprobs.sort(dim=-1, descending=True)
    mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.log_softmax(logprobs.masked_fill(drop, -torch.inf), dim=-1)


def _common_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest prefix all prompts share, leaving at least one token to run the model on."""
    first = prompts[0]
    length = len(first) - 1
    for other in prompts[1:]:
        differs = next((i for i, (a, b) in enumerate(zip(first, other, strict=True)) if a != b), length)
        length = min(length, differs)
    return first[:length]
