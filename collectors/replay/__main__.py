"""``python -m collectors.replay``: the process ``logprobe replay`` and the dashboard start.

It imports torch and transformers for the trainer's forward pass, so the CLI and the dashboard run
it as a child and stay free of both. Progress goes to stderr (or ``--progress FILE``) as one JSON
object per line; the report goes to stdout (or ``--output FILE``) as Markdown or JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from logprobe.collectors.replay._plan import CANDIDATES, ReplayError
from logprobe.collectors.replay._render import markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logprobe replay", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    progress_file = open(args.progress, "a", buffering=1) if args.progress else sys.stderr  # noqa: SIM115

    def progress(event: dict[str, Any]) -> None:
        progress_file.write(json.dumps(event) + "\n")
        progress_file.flush()

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from logprobe.collectors.replay._client import WorkerError
    from logprobe.collectors.replay._replay import replay

    try:
        report = replay(
            args.root,
            args.run,
            model=args.model,
            steps=args.step,
            vary=args.vary,
            python=args.python,
            reference_python=args.reference_python,
            reference=args.reference,
            trainer_dtype=args.trainer_dtype,
            write=not args.no_write,
            on_progress=progress,
        )
    except (ReplayError, WorkerError) as exc:
        progress({"phase": "error", "error": str(exc)})
        print(f"logprobe replay: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report.as_dict(), indent=2) if args.format == "json" else markdown(report)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The replay options, shared with ``logprobe replay`` (which passes them through)."""
    add = parser.add_argument
    add("--root", default=os.environ.get("LOGPROBE_DIR", "logprobe-data"))
    add("--run", required=True, help="the run to replay")
    add("--model", help="one checkpoint folder for every step (default: the run's checkpoint events)")
    add("--step", type=int, action="append", help="a logged step to replay (repeatable; default: the latest)")
    add("--vary", action="append", choices=list(CANDIDATES), help="a setting to change (repeatable)")
    add("--reference", help="the run whose level to reach (default: the recorded one); `floor`: the floor")
    add(
        "--python",
        help="the interpreter that hosts the engine (a virtualenv with another vLLM), or vllm==RELEASE",
    )
    add(
        "--reference-python",
        help="the interpreter for the reference run's engine, where it ran on another release",
    )
    add("--trainer-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add("--format", choices=["md", "json"], default="md")
    add("--output", help="write the report here instead of stdout")
    add("--progress", help="append progress (JSON lines) here instead of stderr")
    add("--no-write", action="store_true", help="do not store the variants as runs")


if __name__ == "__main__":
    sys.exit(main())
