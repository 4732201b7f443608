"""A complete custom RL loop with vLLM rollouts and a PyTorch trainer, logged with logprobe.

Nothing here is logprobe-specific except the five marked calls, which is the point: this is the
loop a team writes by hand, and logprobe slots into it.

- vLLM (``vllm.LLM``, in process) samples completions and reports each token's logprob;
- the trainer (transformers, fp32) recomputes the logprobs of the same tokens, takes a GRPO step
  (group-normalised advantages, PPO clip) and pushes the new weights into vLLM with
  ``reload_weights``, then resets vLLM's prefix cache (stale KV from old weights is one of the V1
  failure modes);
- logprobe records the engine's exact configuration, the full mismatch set between the two sets of
  logprobs, the RL statistics, and every weight update.

The model is the tiny local Llama from ``collectors.tiny_model`` (no hub needed), so this runs on a
laptop CPU in about a minute: ``python examples/vllm_loop.py [--steps 6] [--root DIR]``; then
``logprobe ui --root DIR``. Pass ``--logprobs-mode raw_logprobs`` to watch the mismatch jump.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import logprobe
import logprobe.vllm as lpv
from logprobe.collectors.tiny_model import build_tiny_model

PROMPTS = ["sum the digits of 12 and answer", "count from one to", "the trainer recomputes"]
GROUP, MAX_TOKENS, TEMPERATURE, LR, CLIP_EPS = 4, 12, 0.7, 2e-3, 0.2


def reward(text: str) -> float:
    """A toy verifiable reward: the share of digit characters in the completion."""
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def trainer_logprobs(
    model: torch.nn.Module, prompt_ids: list[list[int]], batch: lpv.RolloutBatch
) -> torch.Tensor:
    """The trainer's logprob of each sampled token, [N, T] like the batch (padding is masked out)."""
    rows = []
    for prompt, tokens, length in zip(prompt_ids, batch.token_ids, batch.lengths.tolist(), strict=True):
        ids = torch.tensor(prompt + tokens[:length].tolist()).unsqueeze(0)
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / TEMPERATURE
        lp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt) :, None]).squeeze(1)
        rows.append(torch.nn.functional.pad(lp, (0, batch.token_ids.shape[1] - length)))
    return torch.stack(rows)


def main(steps: int, root: str | None, logprobs_mode: str) -> str:
    # The engine core in this process (so the trainer can reach the worker to push weights), and a
    # 1 GiB KV cache (vLLM's CPU default asks for most of the RAM).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import vllm

    workdir = Path(tempfile.mkdtemp(prefix="logprobe-example-"))
    model_dir = build_tiny_model(workdir / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    llm = vllm.LLM(
        model=str(model_dir),
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        distributed_executor_backend="uni",
        seed=0,
        logprobs_mode=logprobs_mode,
        enable_prefix_caching=True,
        worker_extension_cls=lpv.WORKER_EXTENSION,  # lets logprobe ask the workers what they run
    )
    config = {"lr": LR, "group": GROUP, "max_tokens": MAX_TOKENS, "logprobs_mode": logprobs_mode}
    run = logprobe.init(  # 1
        project="examples", name=f"vllm-loop-{logprobs_mode}", root=root, config=config
    )
    lpv.record_engine(run, llm, step=0)  # 2: vLLM version, flags and fingerprint
    watcher = lpv.watch(run, llm)  # 3: weight updates and prefix-cache resets
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
    params = vllm.SamplingParams(
        n=GROUP, temperature=TEMPERATURE, max_tokens=MAX_TOKENS, logprobs=0, ignore_eos=True
    )
    for step in range(steps):
        watcher.step = step
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        batch = lpv.rollout_batch(outputs)
        repeated = [p for p in prompt_ids for _ in range(GROUP)]
        texts = [
            tokenizer.decode(t[:n].tolist())
            for t, n in zip(batch.token_ids, batch.lengths.tolist(), strict=True)
        ]
        rewards = torch.tensor([reward(t) for t in texts])
        grouped = rewards.view(-1, GROUP)
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(
            -1
        )

        with torch.no_grad():
            old = trainer_logprobs(model, repeated, batch)
        stats = run.log_mismatch(
            step, old, batch.logprobs, batch.mask, token_ids=batch.token_ids, tokenizer=tokenizer
        )  # 4
        new = trainer_logprobs(model, repeated, batch)
        ratio = torch.exp(new - old)
        per_token = -torch.minimum(
            ratio * advantages[:, None], ratio.clamp(1 - CLIP_EPS, 1 + CLIP_EPS) * advantages[:, None]
        )
        loss = (per_token * batch.mask).sum() / batch.mask.sum()
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        run.log(  # 5: the trainer's own view, next to the mismatch
            step,
            {
                **logprobe.rl_stats(
                    logprobs=new.detach(),
                    old_logprobs=old,
                    advantages=advantages,
                    mask=batch.mask,
                    rewards=rewards,
                ),
                "train/loss": loss.item(),
                "train/grad_norm": grad_norm.item(),
                **batch.metrics(),
            },
            policy_version=step,
        )

        watcher.weight_version = step + 1
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        llm.llm_engine.model_executor.driver_worker.reload_weights(
            weights_iterator=list(state.items()), is_checkpoint_format=True
        )
        llm.reset_prefix_cache()
        dlogp, k3 = stats["mismatch/abs_logp_diff_mean"], stats["mismatch/k3"]
        print(f"step {step}: reward {rewards.mean():.3f}  |dlogp| {dlogp:.2e}  k3 {k3:.2e}")
    watcher.close()
    run.close()
    return run.run_id


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--root", default=None)
    parser.add_argument(
        "--logprobs-mode", default="processed_logprobs", choices=["processed_logprobs", "raw_logprobs"]
    )
    args = parser.parse_args()
    print(f"run: {main(args.steps, args.root, args.logprobs_mode)}")
