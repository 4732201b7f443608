"""TRL: a ``transformers.TrainerCallback`` that records what GRPOTrainer (or any HF trainer) logs.

    trainer = GRPOTrainer(..., callbacks=[LogprobeCallback(project="grpo", name="qwen-run-7")])

Every numeric value passed to ``on_log`` is written at ``state.global_step``, under logprobe's name
where TRL's means the same thing (``storage.TRL``: ``sampling/sampling_logp_difference/mean`` is
``mismatch/abs_logp_diff_mean``) and under TRL's own name otherwise (``clip_ratio/region_mean`` is
a clip fraction against the trainer's own recompute, not the engine gap, so it stays apart). The
mapping used is recorded once as a ``name_map`` event, so the original names stay traceable. The
run's config holds the trainer's arguments and the model's config.

Only the main process writes (TRL logs the gathered, cross-rank values there).

``LogprobeCallback.attach(trainer)`` goes further when the trainer samples with vLLM: it records
the engine's fingerprint (version, flags, ``logprobs_mode``, lm_head dtype) at train start, and it
wraps the trainer's rollout scoring so every batch's sampling logprobs and the trainer's recomputed
ones go through ``Run.log_mismatch``: the full ``mismatch/*`` set, the log-ratio histogram and the
worst tokens, not only TRL's two numbers.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from logprobe.collectors._run import Run, init
from logprobe.storage import map_name

__all__ = ["LogprobeCallback"]

log = logging.getLogger(__name__)


class LogprobeCallback(TrainerCallback):
    """Write the trainer's logs into a logprobe run (created at train start unless ``run`` is given)."""

    def __init__(self, run: Run | None = None, *, source: str = "trl", **init_kwargs: Any) -> None:
        self.run = run
        self.source = source
        self.init_kwargs = init_kwargs
        self._owns_run = run is None
        self._mapped: dict[str, str] = {}

    @classmethod
    def attach(cls, trainer: Any, run: Run | None = None, **init_kwargs: Any) -> LogprobeCallback:
        """Add a callback to ``trainer`` and hook its vLLM engine and rollout scoring (see module doc)."""
        callback = cls(run, **init_kwargs)
        callback.trainer = trainer
        trainer.add_callback(callback)
        score = trainer._generate_and_score_completions  # TRL's rollout + recompute, per batch

        def scored(*args: Any, **kwargs: Any) -> dict[str, Any]:
            output = score(*args, **kwargs)
            callback._log_mismatch(output)
            return output

        trainer._generate_and_score_completions = scored
        return callback

    trainer: Any = None
    _full_mismatch = False  # set once log_mismatch has run: TRL's own two gap numbers keep their names

    def _log_mismatch(self, output: dict[str, Any]) -> None:
        sampled, recomputed = output.get("sampling_per_token_logps"), output.get("old_per_token_logps")
        if self.run is None or sampled is None or recomputed is None:
            return  # without vLLM (or with TRL's IS correction off) there is no engine gap to measure
        try:
            # TRL reports a batch's numbers at the step its update produces: global_step + 1.
            self.run.log_mismatch(
                self.trainer.state.global_step + 1,
                recomputed,
                sampled,
                output["completion_mask"].bool(),
                token_ids=output["completion_ids"],
                tokenizer=getattr(self.trainer, "processing_class", None),
            )
            self._full_mismatch = True
        except (ValueError, TypeError) as exc:  # never take the training step down
            log.warning("logprobe: could not log this batch's mismatch: %s", exc)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        model = kwargs.get("model")
        config = {
            "trainer": type(args).__name__,
            "args": args.to_dict(),
            "model_config": model.config.to_dict() if getattr(model, "config", None) is not None else None,
        }
        if self.run is None:
            self.run = init(config=config, **{"name": args.run_name, **self.init_kwargs})
        else:
            self.run.event("trainer_config", step=state.global_step, **config)
        llm = getattr(getattr(self.trainer, "vllm_generation", None), "llm", None)  # colocate mode
        if llm is not None:
            import logprobe.collectors.vllm as lpv

            lpv.record_engine(self.run, llm, step=state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.run is None or not state.is_world_process_zero or not logs:
            return
        metrics: dict[str, float] = {}
        new: dict[str, str] = {}
        for name, value in logs.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue  # TRL also logs strings and tables; only scalars are metrics
            target = map_name(name, "trl")
            if self._full_mismatch and target.startswith("mismatch/"):
                target = name  # the full set is logged from the tensors; do not write a second value
            if target != name and name not in self._mapped:
                new[name] = target
            metrics[target] = float(value)
        if new:
            self._mapped.update(new)
            self.run.event("name_map", step=state.global_step, source=self.source, names=new)
        if metrics:
            self.run.log(state.global_step, metrics)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run is not None and self._owns_run and state.is_world_process_zero:
            self.run.close()
