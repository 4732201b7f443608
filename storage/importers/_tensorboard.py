"""TensorBoard event files (written by tensorboardX, torch.utils.tensorboard or TF) into logprobe runs."""

from __future__ import annotations

import os
from pathlib import Path

from logprobe.storage._writer import Writer
from logprobe.storage.importers._common import ImportResult, safe_run_id, write_run


def import_tensorboard(
    logdir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *, prefix: str = "tb"
) -> ImportResult:
    """Every directory under ``logdir`` that holds event files becomes one run (``<prefix>-<path>``).

    Scalars logged as ``simple_value`` and scalar tensors (TF2's ``tf.summary.scalar``) are imported;
    images, histograms and text are counted in ``skipped``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    base = Path(logdir)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such TensorBoard log directory")
    run_dirs = sorted({p.parent for p in base.rglob("*tfevents*") if p.is_file()})
    if not run_dirs:
        raise ValueError(f"{base}: no TensorBoard event files (*tfevents*) found")
    result = ImportResult()
    with Writer(root) as writer:
        for directory in run_dirs:
            acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
            acc.Reload()
            tags = acc.Tags()
            points = [
                (e.step, e.wall_time, tag, float(e.value))
                for tag in tags["scalars"]
                for e in acc.Scalars(tag)
            ]
            for tag in tags.get("tensors", []):
                for e in acc.Tensors(tag):
                    array = make_ndarray(e.tensor_proto)
                    if array.size == 1 and array.dtype.kind in "fiu":
                        points.append((e.step, e.wall_time, tag, float(array.reshape(-1)[0])))
                    else:
                        result.skipped += 1
            result.skipped += sum(len(tags.get(k, [])) for k in ("images", "audio", "histograms"))
            relative = directory.relative_to(base).as_posix()
            run_id = safe_run_id(
                prefix, "" if relative == "." else relative, "" if relative != "." else base.name
            )
            write_run(
                writer,
                run_id,
                source="tensorboard",
                name=relative if relative != "." else base.name,
                project=base.name,
                config={"logdir": str(directory)},
                created_at=None,
                points=points,
                result=result,
            )
    return result
