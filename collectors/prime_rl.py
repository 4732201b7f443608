"""prime-rl's per-token export into a logprobe run: ``python -m collectors.prime_rl DIR``
(``logprobe import prime-rl DIR``).

With ``trainer.enable_token_export = true`` prime-rl writes ``token_exports/step_<N>/rank_<R>.jsonl``
(``src/prime_rl/trainer/rl/token_export.py``, schema version 1; docs/frameworks.md): one JSON object
per packed sequence, prompt included, with per-token lists of equal length: ``token_ids``,
``loss_mask``, ``inference_logprobs``, ``trainer_logprobs`` and more (non-finite floats as null), and
an empty ``STABLE`` file in the step folder once every rank has written. Each step's sequences go
through :meth:`Run.log_mismatch` as if the trainer had logged them, so every ``mismatch/*`` and
``signature/*`` metric, the worst tokens and the sampled sequences exist, and ``logprobe diagnose``
works on the run. A step folder without ``STABLE`` is still being written and is skipped (counted);
a line that is not the schema's names the file, the line and what is wrong.

It lives in ``collectors`` because it computes with torch, as the trainer does; the CLI runs it in a
child process.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STEP = re.compile(r"^step_(\d+)$")
_LISTS = ("token_ids", "loss_mask", "inference_logprobs", "trainer_logprobs")


@dataclass
class ExportImport:
    run_id: str
    steps: list[int] = field(default_factory=list)
    sequences: int = 0
    skipped_steps: list[int] = field(default_factory=list)  # no STABLE marker yet


def import_token_export(
    directory: str | Path, root: str | Path | None = None, *, run_id: str | None = None, samples: int = 16
) -> ExportImport:
    """Import every finished step under ``directory`` (the run's output dir, its ``token_exports``,
    or one ``step_<N>`` folder) into ``run_id`` (default ``prime-rl-<folder name>``)."""
    from logprobe import collectors

    base = Path(directory)
    if not base.exists():
        raise FileNotFoundError(f"{base}: no such prime-rl output directory")
    if (base / "token_exports").is_dir():
        base = base / "token_exports"
    step_dirs = [base] if _STEP.match(base.name) else [p for p in base.iterdir() if _STEP.match(p.name)]
    if not step_dirs:
        raise ValueError(
            f"{base}: no step_<N> folders of a prime-rl token export (trainer.enable_token_export)"
        )
    name = base.parent.name if base.name == "token_exports" else base.name
    result = ExportImport(run_id or f"prime-rl-{name}")
    with collectors.init(
        run_id=result.run_id, root=root, name=name, tags=["imported", "prime-rl"], source="trainer"
    ) as run:
        for folder in sorted(step_dirs, key=lambda p: int(_STEP.match(p.name).group(1))):
            step = int(_STEP.match(folder.name).group(1))
            if not (folder / "STABLE").exists():
                result.skipped_steps.append(step)
                continue
            rows = [row for f in sorted(folder.glob("rank_*.jsonl")) for row in _rows(f)]
            if not rows:
                continue
            _log_step(run, step, rows, samples)
            result.steps.append(step)
            result.sequences += len(rows)
        run.event("imported", source="prime-rl", path=str(base), steps=len(result.steps))
    return result


def _rows(path: Path) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        missing = [k for k in _LISTS if not isinstance(row.get(k), list)]
        if missing:
            raise ValueError(
                f"{path}:{number}: no {', '.join(missing)} list (not a prime-rl token export line)"
            )
        lengths = {len(row[k]) for k in _LISTS}
        if len(lengths) != 1:
            raise ValueError(f"{path}:{number}: per-token lists of different lengths {sorted(lengths)}")
        out.append(row)
    return out


def _log_step(run: Any, step: int, rows: list[dict[str, Any]], samples: int) -> None:
    """One step as padded [B, T] grids of each sequence's loss-mask tokens (the completion), which is
    what a trainer passes to ``log_mismatch``; the tokens before the first of them are the prompt.
    A multi-turn sequence (the mask in several blocks) keeps no prompt: replay cannot rebuild it."""
    import torch

    kept, prompts = [], []
    for r in rows:
        flags = [bool(v) for v in r["loss_mask"]]
        positions = [i for i, m in enumerate(flags) if m]
        kept.append(positions)
        first = positions[0] if positions else len(flags)
        one_block = not positions or positions == list(range(first, first + len(positions)))
        prompts.append([int(t) for t in r["token_ids"][:first]] if one_block else [])
    width = max(1, max(len(p) for p in kept))
    nan = float("nan")

    def grid(key: str, fill: float, kind: type = float) -> list[list[Any]]:
        return [
            [fill if r[key][i] is None else kind(r[key][i]) for i in positions]
            + [fill] * (width - len(positions))
            for r, positions in zip(rows, kept, strict=True)
        ]

    run.log_mismatch(
        step,
        torch.tensor(grid("trainer_logprobs", nan), dtype=torch.float64),
        torch.tensor(grid("inference_logprobs", nan), dtype=torch.float64),
        torch.tensor([[True] * len(p) + [False] * (width - len(p)) for p in kept]),
        token_ids=torch.tensor(grid("token_ids", 0, int)),
        prompt_ids=prompts,
        samples=samples,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collectors.prime_rl", description=__doc__.splitlines()[0]
    )
    parser.add_argument("directory")
    parser.add_argument("--root", default=None)
    parser.add_argument("--run", default=None, help="run id (default: prime-rl-<folder name>)")
    args = parser.parse_args(argv)
    try:
        result = import_token_export(args.directory, args.root, run_id=args.run)
    except (ValueError, FileNotFoundError) as exc:
        print(f"logprobe import prime-rl: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "steps": result.steps,
                "sequences": result.sequences,
                "skipped_steps": result.skipped_steps,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
