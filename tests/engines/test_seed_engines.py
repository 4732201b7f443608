"""The replay worker on the seed's own engines: vLLM 0.8.5 (V0) and 0.18.1 (V1), each in its own
virtualenv (``make engines``), driven from this interpreter over the JSON-lines protocol.

The sequences are sampled here from a tiny Llama with transformers at T = 0.7; each engine scores
them again and is compared with the trainer's float32 log-softmax at T = 0.7 and at T = 1. What the
seed found, measured on the real releases (``../shared/docs/vllm-versions.md``): V0 returns
logprobs at the sampling temperature (~1e-6 from the trainer's), V1 by default at T = 1 (~0.1-0.2
away), and V1 with ``processed_logprobs`` returns V0's semantics again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINES = REPO / ".engines"
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _python(version: str) -> Path:
    python = ENGINES / f"vllm-{version}" / "bin" / "logprobe-python"
    if not (ENGINES / f"vllm-{version}" / ".complete").exists():
        pytest.skip(f"vLLM {version} is not installed here: `make engines` installs it under .engines/")
    return python


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from logprobe.collectors.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("model"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():  # a peaked model, so temperature visibly changes the logprobs
        model.lm_head.weight.mul_(15)
    model.save_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    sequences, by_t = [], {0.7: [], 1.0: []}
    with torch.no_grad():
        for i in range(8):
            prompt = torch.randint(3, vocab, (12 + i,), generator=gen).tolist()
            ids = torch.tensor([prompt])
            for _ in range(16):
                probs = torch.softmax(model(ids).logits[0, -1] / 0.7, -1)
                ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)[None]], 1)
            response = ids[0, len(prompt) :].tolist()
            logits = model(ids).logits[0, len(prompt) - 1 : -1]
            for t in by_t:
                lp = torch.log_softmax(logits / t, -1).gather(1, torch.tensor(response)[:, None])[:, 0]
                by_t[t].append(lp.tolist())
            sequences.append({"prompt_ids": prompt, "token_ids": response})
    return {"model": str(folder), "sequences": sequences, "trainer": by_t}


def _gap(scores: list[list[float]], trainer: list[list[float]]) -> float:
    diffs = [abs(a - b) for s, t in zip(scores, trainer, strict=True) for a, b in zip(s, t, strict=True)]
    return sum(diffs) / len(diffs)


def _score(version: str, sampled: dict, mode: str) -> list[list[float]]:
    from logprobe.collectors.replay import EngineWorker

    with EngineWorker(str(_python(version))) as worker:
        assert worker.info["vllm"].startswith(version)
        worker.request("start", model=sampled["model"], settings={"dtype": "float32", "logprobs_mode": mode})
        reply = worker.request("score", sequences=sampled["sequences"], sampling={"temperature": 0.7})
        return reply["logprobs"]


def test_v0_returns_logprobs_at_the_sampling_temperature(sampled: dict) -> None:
    from logprobe.collectors.replay import EngineWorker, WorkerError

    scores = _score("0.8.5", sampled, "processed_logprobs")
    assert _gap(scores, sampled["trainer"][0.7]) < 1e-4
    assert _gap(scores, sampled["trainer"][1.0]) > 0.03
    with EngineWorker(str(_python("0.8.5"))) as worker, pytest.raises(WorkerError, match="no raw logprobs"):
        worker.request(
            "start", model=sampled["model"], settings={"dtype": "float32", "logprobs_mode": "raw_logprobs"}
        )


def test_v1_defaults_to_raw_and_processed_restores_v0(sampled: dict) -> None:
    raw = _score("0.18.1", sampled, "raw_logprobs")
    assert _gap(raw, sampled["trainer"][1.0]) < 1e-4  # V1's default: logprobs at T = 1
    assert _gap(raw, sampled["trainer"][0.7]) > 0.03
    processed = _score("0.18.1", sampled, "processed_logprobs")
    assert _gap(processed, sampled["trainer"][0.7]) < 1e-4
    v0 = _score("0.8.5", sampled, "processed_logprobs")
    assert _gap(processed, v0) < 1e-4  # V1 with processed logprobs agrees with V0


def test_replay_runs_its_engine_under_another_release(demo_root: Path, tmp_path: Path) -> None:
    """A whole replay with the engine in 0.18.1's interpreter, on the torch demo's raw-logprobs run."""
    import json
    import shutil
    import subprocess

    python = _python("0.18.1")
    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    args = ["--root", str(root), "--run", "demo-torch-raw-logprobs", "--python", str(python)]
    args += ["--format", "json", "--no-write", "--vary", "logprobs_mode"]
    proc = subprocess.run(
        [sys.executable, "-m", "logprobe.collectors.replay", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["worker"]["vllm"] == "0.18.1"
    assert report["verdict"]["changes"] == {"logprobs_mode": "processed_logprobs"}, report["verdict"]
