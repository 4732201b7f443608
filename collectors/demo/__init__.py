"""``logprobe demo``: a real mini GRPO run per V0-to-V1 failure mode, logged through the collectors.

Every number the dashboard shows for these runs was computed: a tiny Llama trained on CPU, a
rollout engine (real vLLM or a PyTorch sampler) producing the logprobs, the trainer recomputing
them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from logprobe.collectors.demo._engines import EngineSettings, TorchSampler, VllmEngine
from logprobe.collectors.demo._loop import (
    DEFAULT_STEPS,
    PROJECT,
    SCENARIOS,
    SEED_SCENARIOS,
    Scenario,
    StepCallback,
    run_scenario,
)


def run_demo(
    root: str | Path | None,
    *,
    engine: str = "torch",
    steps: int = DEFAULT_STEPS,
    scenarios: Sequence[str] | None = None,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> list[str]:
    """Train each scenario (default: all the demo's) into ``root``; return the run ids. The seed's
    runs (``SEED_SCENARIOS``) bring their own engine release and ignore ``engine``."""
    known = {**SCENARIOS, **SEED_SCENARIOS}
    chosen = list(scenarios or SCENARIOS)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    with tempfile.TemporaryDirectory(prefix="logprobe-demo-") as workdir:
        return [
            run_scenario(
                known[name],
                root=root,
                workdir=Path(workdir),
                engine_kind=engine,
                steps=steps,
                seed=seed,
                on_step=on_step,
            )
            for name in chosen
        ]


__all__ = [
    "DEFAULT_STEPS",
    "PROJECT",
    "SCENARIOS",
    "SEED_SCENARIOS",
    "EngineSettings",
    "Scenario",
    "TorchSampler",
    "VllmEngine",
    "run_demo",
]
