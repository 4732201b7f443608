"""The rollout side of the seed demo, in the engine's own interpreter: ``python -m
collectors.demo._rollout_worker``, one JSON request per line on stdin, one reply per line on stdout.

This is how an RL system is laid out: the trainer in one process, vLLM in another (here another
virtualenv, with another vLLM release), both logging into one run. The worker joins the trainer's
run (``source="rollout"``, ``worker="vllm-<release>"``) and logs what the collectors log beside a
real engine: ``record_engine`` and ``watch``. The trainer only sends prompts and weights.

Requests (every reply carries ``ok``, and ``error`` when it is false):

- ``hello`` → ``{vllm, python}``
- ``start {model, settings, seed, root?, run_id?}``: the engine, with the demo's
  :class:`EngineSettings` as far as the release has them (V0 has no ``logprobs_mode``: it returns
  processed logprobs; prefix caching needs IPEX on V0's CPU backend, so it stays off there)
- ``record {step}`` → the engines row's ``fingerprint``, ``engine_generation``, ``logprobs_mode``
- ``generate {prompts, n, max_tokens, temperature, top_p, step}`` → ``{token_ids, logprobs, cached}``
- ``push {path, version}``: weights from a safetensors file, by the path the release offers, then a
  prefix-cache reset if the settings say so
- ``close``, ``exit``
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from logprobe.collectors.replay.worker import serve

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class RolloutWorker:
    def __init__(self) -> None:
        self.llm: Any = None
        self.run: Any = None
        self.watcher: Any = None
        self.settings: dict[str, Any] = {}
        self.v0 = False

    def hello(self) -> dict[str, Any]:
        import vllm

        return {"vllm": vllm.__version__, "python": sys.executable}

    def start(
        self,
        model: str,
        settings: dict[str, Any],
        seed: int,
        root: str | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        import vllm

        import logprobe.collectors.vllm as lpv
        from logprobe import collectors

        self.settings = settings
        release = tuple(int(p) for p in vllm.__version__.split(".")[:2])
        self.v0 = release < (0, 10)
        args: dict[str, Any] = dict(
            model=model,
            dtype="float32",
            max_model_len=512,
            enforce_eager=True,
            seed=seed,
            skip_tokenizer_init=True,  # token ids in and out; and 0.8.5 cannot read a newer tokenizer
            enable_prefix_caching=bool(settings["prefix_caching"]) and not self.v0,
            worker_extension_cls=lpv.WORKER_EXTENSION,
            disable_log_stats=False,
        )
        if not self.v0:
            args["logprobs_mode"] = settings["logprobs_mode"]
        self.llm = vllm.LLM(**args)
        if root is not None and run_id is not None:  # without them: an engine that only samples
            release = vllm.__version__
            self.run = collectors.init(run_id=run_id, root=root, source="rollout", worker=f"vllm-{release}")
            self.watcher = lpv.watch(self.run, self.llm)
        return {"v0": self.v0}

    def record(self, step: int) -> dict[str, Any]:
        import logprobe.collectors.vllm as lpv

        if self.run is None:
            raise RuntimeError("started without a run: nothing to record into")
        self.watcher.step = step
        row = lpv.record_engine(self.run, self.llm, step=step)
        return {k: row[k] for k in ("fingerprint", "engine_generation", "logprobs_mode", "vllm_version")}

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        step: int = 0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        import vllm

        import logprobe.collectors.vllm as lpv

        if self.watcher is not None:
            self.watcher.step = step
        params = vllm.SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            logprobs=0,
            ignore_eos=True,
            detokenize=False,
            seed=seed,
        )
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        batch = lpv.rollout_batch(outputs)
        cached = sum(getattr(o, "num_cached_tokens", None) or 0 for o in outputs)
        return {"token_ids": batch.token_ids.tolist(), "logprobs": batch.logprobs.tolist(), "cached": cached}

    def push(self, path: str, version: int) -> dict[str, Any]:
        from safetensors.torch import load_file

        weights = list(load_file(path).items())
        if self.watcher is not None:
            self.watcher.weight_version = version
        worker = self.llm.llm_engine.model_executor.driver_worker
        if self.v0:  # V0-era trainers loaded into the model in place (no reload_weights before 0.11)
            inner = getattr(worker, "worker", worker)
            inner.model_runner.model.load_weights(weights=weights)
        else:
            worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        if self.settings.get("reset_prefix_cache_on_update") and self.settings.get("prefix_caching"):
            self.llm.reset_prefix_cache()
        return {}

    def close(self) -> dict[str, Any]:
        if self.watcher is not None:
            self.watcher.close()
        if self.run is not None:
            self.run.close()
        self.watcher = self.run = None
        return {}


def main() -> int:
    worker = RolloutWorker()

    def handler_for(op: str) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        if op == "exit":
            return lambda request: {}
        method = None if op.startswith("_") else getattr(worker, op, None)
        if not callable(method):
            return None
        return lambda request: method(**{k: v for k, v in request.items() if k != "op"})

    return serve(handler_for, worker.close)


if __name__ == "__main__":
    sys.exit(main())
