"""``python -m collectors.demo``: train demo scenarios, one JSON progress line per step on stdout.

The ``logprobe demo`` command runs this in a child process per scenario, so the CLI never imports
torch or vLLM, and each real vLLM engine lives and dies with its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from collectors.demo._loop import DEFAULT_STEPS, SCENARIOS, supported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.demo", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], help="default: all")
    parser.add_argument("--list", action="store_true", help="print the scenario names as JSON and exit")
    parser.add_argument("--engine", choices=["torch", "vllm"], default="torch")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.list:  # the scenarios this engine can play
        print(json.dumps({n: s.description for n, s in SCENARIOS.items() if supported(s, args.engine)}))
        return 0
    chosen = args.scenarios or [n for n, s in SCENARIOS.items() if supported(s, args.engine)]
    if args.engine == "vllm" and len(chosen) > 1:
        # One process per scenario: an in-process vLLM engine's shutdown tears down state that the
        # next engine in the same process would need.
        common = ["--engine", "vllm", "--steps", str(args.steps), "--seed", str(args.seed)]
        common += ["--root", args.root] if args.root else []
        for name in chosen:
            subprocess.run([sys.executable, "-m", "collectors.demo", name, *common], check=True)
        return 0
    if args.engine == "vllm":
        # In process (seconds to start, not tens), and a KV cache that fits beside the trainer.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    from collectors.demo import run_demo

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    def progress(name: str, step: int, steps: int, reward: float) -> None:
        print(json.dumps({"scenario": name, "step": step, "steps": steps, "reward": reward}), flush=True)

    run_demo(
        args.root,
        engine=args.engine,
        steps=args.steps,
        scenarios=chosen,
        seed=args.seed,
        on_step=progress,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
