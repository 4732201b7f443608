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

from logprobe.collectors.demo._loop import DEFAULT_STEPS, SCENARIOS, SEED_SCENARIOS, Scenario, supported


def seed_releases(engine: str) -> list[str] | None:
    """``vllm==0.8.5,vllm==0.18.1`` → the releases (the seed's investigation); None for torch/vllm."""
    if "==" not in engine:
        return None
    releases = []
    for part in engine.split(","):
        name, _, release = part.strip().partition("==")
        if name != "vllm" or not release:
            raise SystemExit(f"--engine: {part!r} is not vllm==RELEASE")
        releases.append(release)
    known = {s.release for s in SEED_SCENARIOS.values()}
    unknown = sorted(set(releases) - known)
    if unknown:
        raise SystemExit(
            f"--engine: no seed runs for vllm {', '.join(unknown)} (the seed's: {', '.join(sorted(known))})"
        )
    return releases


def playable(engine: str) -> dict[str, Scenario]:
    releases = seed_releases(engine)
    if releases is not None:
        return {n: s for n, s in SEED_SCENARIOS.items() if s.release in releases}
    return {n: s for n, s in SCENARIOS.items() if supported(s, engine)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios", nargs="*", choices=[[], *SCENARIOS, *SEED_SCENARIOS], help="default: all"
    )
    parser.add_argument("--list", action="store_true", help="print the scenario names as JSON and exit")
    parser.add_argument(
        "--engine", default="torch", help="torch, vllm, or the seed's releases: vllm==0.8.5,vllm==0.18.1"
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.engine not in ("torch", "vllm"):
        seed_releases(args.engine)  # names a bad spec
    can = playable(args.engine)
    if args.list:  # the scenarios this engine can play
        print(json.dumps({n: s.description for n, s in can.items()}))
        return 0
    chosen = args.scenarios or list(can)
    refused = [n for n in chosen if n not in can]
    if refused:
        parser.error(f"--engine {args.engine} cannot play {', '.join(refused)}")
    if args.engine != "torch" and len(chosen) > 1:
        # One process per scenario: an in-process vLLM engine's shutdown tears down state that the
        # next engine in the same process would need.
        common = ["--engine", args.engine, "--steps", str(args.steps), "--seed", str(args.seed)]
        common += ["--root", args.root] if args.root else []
        for name in chosen:
            subprocess.run([sys.executable, "-m", "logprobe.collectors.demo", name, *common], check=True)
        return 0
    if args.engine == "vllm":
        # In process (seconds to start, not tens), and a KV cache that fits beside the trainer.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    from logprobe.collectors.demo import run_demo

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
