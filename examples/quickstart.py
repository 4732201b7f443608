"""A minimal custom RL loop, logged with logprobe: the data behind ``make demo`` until the dashboard lands.

A tiny causal transformer learns to emit even token ids (reward = fraction of even tokens) with a
PPO-clipped objective. The "rollout engine" is a copy of the policy that is re-synced after every
optimizer step and samples at temperature 0.7; the trainer recomputes the logprobs of the same
tokens in fp32. Three runs differ only in how the engine reports logprobs, so every mismatch on
screen is produced by real arithmetic, not invented:

- ``fp32-processed``: fp32 engine, logprobs after temperature (what the trainer computes): healthy;
- ``bf16-engine``: the engine runs in bf16 (the bf16-vs-fp32 ``lm_head`` effect);
- ``raw-logprobs``: the engine returns raw logprobs (before temperature), as vLLM V1 does by default.

Run: ``python examples/quickstart.py [--steps 30] [--root DIR]``.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import logprobe

VOCAB, PROMPT, RESPONSE, BATCH, TEMPERATURE = 32, 4, 12, 32, 0.7
SCENARIOS = {
    "fp32-processed": {"engine_dtype": torch.float32, "logprobs_mode": "processed_logprobs"},
    "bf16-engine": {"engine_dtype": torch.bfloat16, "logprobs_mode": "processed_logprobs"},
    "raw-logprobs": {"engine_dtype": torch.float32, "logprobs_mode": "raw_logprobs"},
}


class TinyLM(nn.Module):
    def __init__(self, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(PROMPT + RESPONSE, width)
        block = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=4 * width, dropout=0.0, batch_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.lm_head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, dtype=self.embed.weight.dtype)
        hidden = self.embed(tokens) + self.pos(torch.arange(length))
        return self.lm_head(self.blocks(hidden, mask=causal, is_causal=True))


@torch.no_grad()
def rollout(engine: TinyLM, prompts: torch.Tensor, logprobs_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample RESPONSE tokens at TEMPERATURE; return them and the logprobs the engine reports."""
    tokens, reported = prompts, []
    for _ in range(RESPONSE):
        logits = engine(tokens)[:, -1].float()
        processed = torch.log_softmax(logits / TEMPERATURE, dim=-1)
        nxt = torch.multinomial(processed.exp(), 1)
        scores = processed if logprobs_mode == "processed_logprobs" else torch.log_softmax(logits, dim=-1)
        reported.append(scores.gather(1, nxt).squeeze(1))
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens, torch.stack(reported, dim=1)


def train(name: str, steps: int, root: str | None, seed: int = 0) -> None:
    setup = SCENARIOS[name]
    torch.manual_seed(seed)
    policy, reference = TinyLM(), None
    reference = copy.deepcopy(policy).eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    config = {"scenario": name, "lr": 3e-3, "batch": BATCH, "temperature": TEMPERATURE, "seed": seed}
    with logprobe.init(
        run_id=f"quickstart-{name}",
        root=root,
        name=name,
        project="quickstart",
        config=config,
        tags=["quickstart", name],
    ) as run:
        run.log_engine(
            {
                "engine": "torch-sampler",
                "logprobs_mode": setup["logprobs_mode"],
                "dtype": str(setup["engine_dtype"]).removeprefix("torch."),
                "lm_head_dtype": str(setup["engine_dtype"]).removeprefix("torch."),
                "enable_prefix_caching": False,
                "seed": seed,
            },
            step=0,
        )
        for step in range(steps):
            engine = copy.deepcopy(policy).to(setup["engine_dtype"]).eval()  # weight sync
            run.event("weight_update", step=step, weight_version=step, paused_generation=True)
            prompts = torch.randint(0, VOCAB, (BATCH, PROMPT))
            tokens, rollout_lp = rollout(engine, prompts, setup["logprobs_mode"])
            response = tokens[:, PROMPT:]
            rewards = (response % 2 == 0).float().mean(dim=1)
            advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)

            logits = policy(tokens[:, :-1])[:, PROMPT - 1 :].float() / TEMPERATURE
            trainer_lp = torch.log_softmax(logits, dim=-1).gather(2, response[..., None]).squeeze(-1)
            with torch.no_grad():
                ref_logits = reference(tokens[:, :-1])[:, PROMPT - 1 :] / TEMPERATURE
                ref_lp = torch.log_softmax(ref_logits, -1).gather(2, response[..., None]).squeeze(-1)
            ratio = torch.exp(trainer_lp - rollout_lp)
            surrogate = torch.minimum(
                ratio * advantages[:, None], ratio.clamp(0.8, 1.2) * advantages[:, None]
            )
            loss = -surrogate.mean()
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()

            run.log_mismatch(step, trainer_lp.detach(), rollout_lp, token_ids=response, policy_version=step)
            stats = logprobe.rl_stats(
                logprobs=trainer_lp.detach(),
                old_logprobs=rollout_lp,
                advantages=advantages,
                ref_logprobs=ref_lp,
                logits=logits.detach(),
                rewards=rewards,
            )
            run.log(
                step,
                {**stats, "train/loss": loss.item(), "train/grad_norm": grad_norm.item()},
                policy_version=step,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--root", default=None, help="data root (default $LOGPROBE_DIR or ./logprobe-data)")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.scenarios:
        train(name, args.steps, args.root)
        print(f"logged run quickstart-{name}")


if __name__ == "__main__":
    main()
