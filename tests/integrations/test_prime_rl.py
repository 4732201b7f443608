"""prime-rl's per-token export into logprobe, then the diagnosis on it.

prime-rl needs GPUs and is not on PyPI, so its writer cannot run here: the files are written here
line for line in its schema (``src/prime_rl/trainer/rl/token_export.py``, schema version 1, every
key it writes, null for non-finite values, ``STABLE`` once all ranks are done, the prompt inside the
packed sequence with ``loss_mask`` false). The numbers are real: a tiny Llama samples the tokens at
T = 0.7, the trainer's logprobs are its float32 log-softmax at T = 0.7, and the inference logprobs
at T = 1, the raw-logprobs fault, which the diagnosis must name.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from logprobe.storage import Store
from tests.conftest import LOGPROBE, logprobe_cli

torch = pytest.importorskip("torch")
STEPS, PER_RANK, RANKS, PROMPT, RESPONSE = 3, 4, 2, 10, 12


def _export(out: Path) -> dict[int, list[dict]]:
    from transformers import AutoModelForCausalLM

    from logprobe.collectors.tiny_model import build_tiny_model

    folder = build_tiny_model(out / "model")
    model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(15)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    written: dict[int, list[dict]] = {}
    for step in range(STEPS + 1):
        folder = out / "run-a" / "token_exports" / f"step_{step}"
        folder.mkdir(parents=True)
        written[step] = []
        for rank in range(RANKS):
            lines = []
            for i in range(PER_RANK):
                ids = torch.randint(3, vocab, (1, PROMPT), generator=gen)
                with torch.no_grad():
                    for _ in range(RESPONSE):
                        probs = torch.softmax(model(ids).logits[0, -1] / 0.7, -1)
                        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)[None]], 1)
                    logits = model(ids).logits[0].double()
                n = ids.shape[1]
                token = ids[0]
                # trainer_logprobs[i] = log p(token_i | <i); position 0 is padded with log(1/V).
                at = {
                    t: torch.log_softmax(logits[:-1] / t, -1).gather(1, token[1:, None])[:, 0]
                    for t in (0.7, 1.0)
                }
                pad = -math.log(vocab)
                trainer = [pad, *at[0.7].tolist()]
                inference = [pad, *at[1.0].tolist()]
                loss_mask = [False] * PROMPT + [True] * RESPONSE
                d = [a - b for a, b in zip(trainer, inference, strict=True)]
                line = {
                    "schema_version": 1,
                    "step": step,
                    "rank": rank,
                    "micro_step": 0,
                    "micro_sequence_idx": i,
                    "export_sequence_idx": i,
                    "env_name": "sum-digits",
                    "token_ids": token.tolist(),
                    "position_ids": list(range(n)),
                    "loss_mask": loss_mask,
                    "advantages": [0.0] * n,
                    "inference_logprobs": inference,
                    "trainer_logprobs": trainer,
                    "entropy": [math.log(vocab)] + [0.5] * (n - 1),
                    "mismatch_kl": [math.exp(x) - x - 1 for x in d],
                    "log_importance_ratio": d,
                    "importance_ratio": [math.exp(x) for x in d],
                    "prob_delta": [
                        math.exp(a) - math.exp(b) for a, b in zip(trainer, inference, strict=True)
                    ],
                    "is_masked": [None] * n,
                    "is_masked_high": [None] * n,
                    "is_masked_low": [None] * n,
                    "rl_weights": [None] * n,
                    "ce_weights": [None] * n,
                    "ref_kl_weights": [None] * n,
                }
                lines.append(line)
                written[step].append(line)
            (folder / f"rank_{rank}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        if step < STEPS:  # the last step is still being written: no STABLE yet
            (folder / "STABLE").write_text("")
    return written


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("prime-rl")
    written = _export(tmp)
    root = tmp / "store"
    proc = logprobe_cli("import", "prime-rl", tmp / "run-a", "--root", root, timeout=300)
    assert proc.stdout.strip() == "prime-rl-run-a"
    assert f"still being written (no STABLE): [{STEPS}]" in " ".join(proc.stderr.split())  # rich wraps
    return {"root": root, "written": written}


def test_every_finished_step_becomes_logprobe_metrics_exactly(imported: dict) -> None:
    store = Store(imported["root"])
    rows = store.sql(
        "SELECT step, value FROM metrics WHERE run_id = 'prime-rl-run-a' "
        "AND name = 'mismatch/abs_logp_diff_mean'"
    ).to_pylist()
    got = {r["step"]: r["value"] for r in rows}
    assert sorted(got) == list(range(STEPS))  # step 3 had no STABLE
    for step in range(STEPS):
        diffs = [
            abs(t - i)
            for line in imported["written"][step]
            for t, i, m in zip(
                line["trainer_logprobs"], line["inference_logprobs"], line["loss_mask"], strict=True
            )
            if m
        ]
        assert got[step] == pytest.approx(sum(diffs) / len(diffs), rel=1e-12)
    kept = store.sql(
        "SELECT prompt_ids, token_ids, trainer_logprobs FROM sequences "
        "WHERE run_id = 'prime-rl-run-a' AND step = 0"
    ).to_pylist()
    lines = {tuple(x["token_ids"]): x for x in imported["written"][0]}
    assert kept
    for seq in kept:  # prompt and response split where the loss mask begins, as replay needs them
        line = lines[tuple(seq["prompt_ids"] + seq["token_ids"])]
        assert len(seq["prompt_ids"]) == PROMPT and len(seq["token_ids"]) == RESPONSE
        assert seq["trainer_logprobs"] == pytest.approx(line["trainer_logprobs"][PROMPT:], rel=1e-12)


def test_the_diagnosis_names_the_logprob_semantics(imported: dict) -> None:
    proc = subprocess.run(
        [
            LOGPROBE,
            "diagnose",
            "--root",
            str(imported["root"]),
            "--run",
            "prime-rl-run-a",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["cause"] == "logprobs_semantics"


def test_a_line_outside_the_schema_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "token_exports" / "step_0"
    folder.mkdir(parents=True)
    (folder / "STABLE").write_text("")
    (folder / "rank_0.jsonl").write_text(json.dumps({"token_ids": [1, 2], "loss_mask": [True]}) + "\n")
    proc = subprocess.run(
        [LOGPROBE, "import", "prime-rl", str(tmp_path), "--root", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "rank_0.jsonl:1: no inference_logprobs, trainer_logprobs list" in proc.stderr
