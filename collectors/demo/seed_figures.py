"""The seed doc's measurement, repeated on the seed's engines: ``python -m collectors.demo.seed_figures``.

``../shared/docs/vllm-versions.md`` measured, on a tiny Llama whose lm_head is scaled so the
next-token entropy is about 1 nat, 16 requests x 32 tokens sampled at T = 0.7 from prompts sharing a
136-token prefix, the mean and max |dlogp| of the sampled tokens against a float32 transformers pass
of the same weights, at T = 0.7 and at T = 1. The same protocol here, each engine sampling through
the demo's rollout worker in its own virtualenv (``make engines``), so the figures can be set beside
the doc's. The training runs of ``make seed`` show the same story over time, on the demo's model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from logprobe.collectors.demo._engines import EngineSettings

TEMPERATURE = 0.7
PREFIX, REQUESTS, TOKENS = 136, 16, 32
# (mean, max) against log_softmax(logits / 0.7), then against log_softmax(logits); None: not given.
DOC: dict[str, tuple[float | None, ...]] = {
    "v0": (1.3e-6, 1.2e-5, 0.185, 1.48),
    "v1-default": (0.176, 1.79, 8.5e-7, 8.3e-6),
    "v1-processed": (1.1e-6, 1.3e-5, 0.176, 1.79),
    "v1-no-prefix-cache": (0.176, 1.79, 8.5e-7, None),
}
CONFIGS: dict[str, tuple[str, EngineSettings]] = {
    "v0": ("0.8.5", EngineSettings()),
    "v1-default": ("0.18.1", EngineSettings(logprobs_mode="raw_logprobs", prefix_caching=True)),
    "v1-processed": ("0.18.1", EngineSettings(logprobs_mode="processed_logprobs", prefix_caching=True)),
    "v1-no-prefix-cache": ("0.18.1", EngineSettings(logprobs_mode="raw_logprobs", prefix_caching=False)),
}


def build_model(folder: Path) -> tuple[Path, float]:
    """The tiny Llama with its lm_head scaled until the mean next-token entropy over the prompts is
    1 nat (bisection on the scale); returns the folder and the entropy reached."""
    import torch
    from transformers import AutoModelForCausalLM

    from logprobe.collectors.tiny_model import build_tiny_model

    build_tiny_model(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
    prompts = torch.tensor(prompt_ids(model.config.vocab_size))
    with torch.no_grad():
        hidden = model.model(prompts).last_hidden_state
        weight = model.lm_head.weight.clone()

        def entropy(scale: float) -> float:
            logp = torch.log_softmax(hidden @ (weight * scale).T, -1)
            return float(-(logp.exp() * logp).sum(-1).mean())

        low, high = 0.1, 1000.0
        for _ in range(60):
            mid = (low * high) ** 0.5
            low, high = (mid, high) if entropy(mid) > 1.0 else (low, mid)
        model.lm_head.weight.copy_(weight * high)
    model.save_pretrained(folder)
    return folder, entropy(high)


def prompt_ids(vocab: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, vocab, (PREFIX,), generator=gen).tolist()
    return [prefix + torch.randint(3, vocab, (4,), generator=gen).tolist() for _ in range(REQUESTS)]


def measure(python: str, model: Path, settings: EngineSettings) -> dict[str, Any]:
    """Sample on the engine, score on the trainer; |dlogp| at both temperatures."""
    import torch
    from transformers import AutoModelForCausalLM

    from logprobe.collectors.replay import EngineWorker

    trainer = AutoModelForCausalLM.from_pretrained(model).float().eval()
    prompts = prompt_ids(trainer.config.vocab_size)
    with EngineWorker(python, args=["-m", "logprobe.collectors.demo._rollout_worker"]) as worker:
        worker.request("start", model=str(model), settings=asdict(settings), seed=0)
        reply = worker.request(
            "generate", prompts=prompts, n=1, max_tokens=TOKENS, temperature=TEMPERATURE, top_p=1.0, seed=0
        )
        release = worker.info["vllm"]
        worker.request("close")
    tokens = torch.tensor(reply["token_ids"])
    engine = torch.tensor(reply["logprobs"], dtype=torch.float64)
    full = torch.cat([torch.tensor(prompts), tokens], 1)
    with torch.no_grad():
        logits = trainer(full).logits[:, len(prompts[0]) - 1 : -1].double()
    out: dict[str, Any] = {"vllm": release}
    for label, t in (("t07", TEMPERATURE), ("t1", 1.0)):
        lp = torch.log_softmax(logits / t, -1).gather(-1, tokens[..., None])[..., 0]
        diff = (lp - engine).abs()
        out[f"{label}_mean"], out[f"{label}_max"] = float(diff.mean()), float(diff.max())
    return out


def table(results: dict[str, dict[str, Any]], entropy: float) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2g}"

    lines = [
        f"{REQUESTS} requests x {TOKENS} tokens at T = {TEMPERATURE}, prompts sharing a {PREFIX}-token "
        f"prefix, lm_head scaled to {entropy:.2f} nat of entropy.",
        "Mean / max |dlogp| against a float32 trainer.",
        "",
        "| run | engine | vs T = 0.7 (measured) | vs T = 0.7 (doc) | vs T = 1 (measured) | vs T = 1 (doc) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        doc = DOC[name]
        lines.append(
            f"| {name} | {r['vllm']} | {cell(r['t07_mean'])} / {cell(r['t07_max'])} | {cell(doc[0])} / "
            f"{cell(doc[1])} | {cell(r['t1_mean'])} / {cell(r['t1_max'])} | {cell(doc[2])} / {cell(doc[3])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from logprobe.collectors.replay import engine_python

    parser = argparse.ArgumentParser(
        prog="python -m collectors.demo.seed_figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="logprobe-seed-figures-") as tmp:
        model, entropy = build_model(Path(tmp) / "model")
        results = {
            name: measure(engine_python(f"vllm=={release}"), model, settings)
            for name, (release, settings) in CONFIGS.items()
        }
    print(table(results, entropy))
    if args.json:
        Path(args.json).write_text(json.dumps({"entropy": entropy, "results": results, "doc": DOC}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
