"""A GRPOTrainer run with vLLM colocated, on CPU, with LogprobeCallback.attach (run by test_trl.py
in its own process: in-process vLLM engines share global state with the other vLLM tests)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default asks for most of the RAM

if __name__ == "__main__":
    import datasets
    import trl

    from logprobe.collectors.tiny_model import build_tiny_model
    from logprobe.collectors.trl import LogprobeCallback

    workdir, root = sys.argv[1], sys.argv[2]
    model_dir = build_tiny_model(os.path.join(workdir, "model"))
    prompts = datasets.Dataset.from_dict({"prompt": ["the sum of 1 and 2 is", "count to three:"] * 8})
    config = trl.GRPOConfig(
        output_dir=os.path.join(workdir, "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=128,
        seed=0,
    )
    trainer = trl.GRPOTrainer(
        model=str(model_dir),
        reward_funcs=lambda completions, **kwargs: [len(c) / 10 for c in completions],
        args=config,
        train_dataset=prompts,
    )
    llm = trainer.vllm_generation.llm

    def sync_weights_on_cpu() -> None:
        # The one stand-in, for what cannot run here: TRL's own sync calls model.load_weights, which
        # vLLM's CPU backend cannot serve (it prepacks linear weights; docs/vllm-cpu.md). This is the
        # same update through the worker's reload_weights, plus the prefix-cache reset TRL does.
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        worker = llm.llm_engine.model_executor.driver_worker
        worker.reload_weights(weights_iterator=list(state.items()), is_checkpoint_format=True)
        llm.reset_prefix_cache()

    trainer.vllm_generation.sync_weights = sync_weights_on_cpu
    LogprobeCallback.attach(trainer, root=root, run_id="grpo-vllm", project="trl-test")
    trainer.train()
