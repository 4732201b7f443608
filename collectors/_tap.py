"""Taps on the trackers frameworks already log to: every ``wandb.log`` (``tap_wandb()``) and every
TensorBoard ``SummaryWriter.add_scalar`` (``tap_tensorboard()``) of any framework, mirrored into
logprobe with one line in the user's script.

Most RL frameworks (OpenRLHF, prime-rl, SkyRL, AReaL, slime, NeMo-RL, verl) log to W&B through
their own code, so the place to listen is W&B's ``Run.log`` itself: the tap wraps that one method
on the class (and ``finish``, to close what it opened), keeps W&B's own behaviour untouched, and
writes the numeric values to a logprobe run under logprobe's names where a framework's quantity is
logprobe's (``storage.map_name``), else under the name logged. The step follows W&B's rules:
an explicit ``step`` moves the run's step forward (an older one is dropped, as W&B drops it), and a
call without one lands on the current step and advances it unless ``commit=False``. A failure in
the mirror is logged at debug level and never reaches the training loop.

TensorBoard's writers (``torch.utils.tensorboard`` and ``tensorboardX``, used by OpenRLHF, NeMo-RL
and verl's tensorboard backend) are tapped the same way, with TensorBoard's step rule: a value
lands at the ``global_step`` given (0 without one, as TensorBoard records it), in any order.
"""

from __future__ import annotations

import functools
import importlib
import logging
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from logprobe.collectors._run import Run, init
from logprobe.storage import SOURCES, map_name
from logprobe.storage.importers import safe_run_id

log = logging.getLogger(__name__)


class _Mirror:
    """The logprobe side of one W&B run: its step counter and the logprobe run it writes to."""

    def __init__(self, run: Run, owned: bool, starting_step: int, framework: str | None) -> None:
        self.run, self.owned, self.step, self.framework = run, owned, starting_step, framework
        self.dropped = 0  # values at a step older than the run's, which W&B drops too

    def log(self, data: Mapping[str, Any], step: int | None, commit: bool | None) -> None:
        if step is not None:
            if step < self.step:
                self.dropped += len(data)
                return
            self.step = step
        at = self.step
        if step is None and commit is not False:
            self.step += 1
        values = {map_name(k, self.framework): v for k, v in _numbers(data).items()}
        if values:
            self.run.log(at, values)


def tap_wandb(
    run: Run | None = None,
    *,
    root: str | Path | None = None,
    framework: str | None = None,
    source: str = "trainer",
) -> Callable[[], None]:
    """Mirror every ``wandb.log`` in this process into logprobe; returns ``untap()``.

    ``framework`` ("verl", "openrlhf", ... : ``storage.SOURCES``) picks that framework's name map
    alone; by default a name is mapped if any framework's map has it.

    With ``run``, values go there; without, each W&B run gets its own logprobe run
    (``wandb-<id>``, its name, project and config), opened on its first ``log`` and closed by its
    ``finish``. Call before or after ``wandb.init``."""
    from wandb.sdk.wandb_run import Run as WandbRun

    _check_framework(framework)
    if getattr(WandbRun.log, "_logprobe_tap", False):
        raise RuntimeError("wandb is already tapped in this process; call the untap() it returned first")
    mirrors: dict[int, _Mirror] = {}
    original_log, original_finish = WandbRun.log, WandbRun.finish

    def mirror_of(wb: Any) -> _Mirror:
        key = id(wb)
        if key not in mirrors:
            starting = int(getattr(wb, "starting_step", 0) or 0)
            if run is not None:
                mirrors[key] = _Mirror(run, False, starting, framework)
            else:
                config = dict(getattr(wb, "config", {}) or {})
                opened = init(
                    run_id=f"wandb-{wb.id}",
                    root=root,
                    name=getattr(wb, "name", None),
                    project=getattr(wb, "project", None),
                    config=config,
                    tags=["wandb"],
                    source=source,
                )
                mirrors[key] = _Mirror(opened, True, starting, framework)
        return mirrors[key]

    @functools.wraps(original_log)
    def tapped_log(
        self: Any, data: dict[str, Any], step: int | None = None, commit: bool | None = None
    ) -> None:
        result = original_log(self, data, step, commit)
        try:
            mirror_of(self).log(data, step, commit)
        except Exception as exc:  # the user's training loop comes first
            log.debug("logprobe: wandb tap failed: %s", exc)
        return result

    def close_mirror(wb: Any) -> None:
        mirror = mirrors.pop(id(wb), None)
        if mirror is not None and mirror.owned:
            mirror.run.close()

    tapped_finish = _closing_with(original_finish, close_mirror)
    tapped_log._logprobe_tap = True  # type: ignore[attr-defined]
    WandbRun.log, WandbRun.finish = tapped_log, tapped_finish

    def untap() -> None:
        WandbRun.log, WandbRun.finish = original_log, original_finish
        for mirror in mirrors.values():
            if mirror.owned:
                mirror.run.close()
        mirrors.clear()

    return untap


def tap_tensorboard(
    run: Run | None = None,
    *,
    root: str | Path | None = None,
    framework: str | None = None,
    source: str = "trainer",
) -> Callable[[], None]:
    """Mirror every ``SummaryWriter.add_scalar``/``add_scalars`` in this process into logprobe;
    returns ``untap()``. Taps ``torch.utils.tensorboard`` and ``tensorboardX``, whichever exist.

    With ``run``, values go there; without, each writer gets its own logprobe run, ``tb-<name of its
    log dir>`` (the id ``logprobe import tensorboard`` gives the same folder), opened on its first
    scalar and closed by its ``close``. ``add_scalars("loss", {"a": x})`` lands as ``loss/a`` in
    the writer's run (TensorBoard files it under a sub-folder of the log dir). Call before or after
    creating the writers. ``framework`` as for :func:`tap_wandb`."""
    _check_framework(framework)
    classes = _summary_writers()
    if any(getattr(cls.add_scalar, "_logprobe_tap", False) for cls in classes):
        raise RuntimeError(
            "TensorBoard is already tapped in this process; call the untap() it returned first"
        )
    mirrors: dict[int, Run] = {}
    originals = {cls: (cls.add_scalar, cls.add_scalars, cls.close) for cls in classes}

    def run_of(writer: Any) -> Run:
        key = id(writer)
        if key not in mirrors:
            if run is not None:
                mirrors[key] = run
            else:
                logdir = Path(str(getattr(writer, "log_dir", None) or getattr(writer, "logdir", "")))
                mirrors[key] = init(
                    run_id=safe_run_id("tb", logdir.name),
                    root=root,
                    name=logdir.name,
                    project=logdir.parent.name or None,
                    config={"logdir": str(logdir)},
                    tags=["tensorboard"],
                    source=source,
                )
        return mirrors[key]

    def mirror(writer: Any, values: Mapping[str, Any], step: Any) -> None:
        try:
            numeric = {map_name(k, framework): v for k, v in _numbers(values).items()}
            if numeric:
                run_of(writer).log(int(step or 0), numeric)
        except Exception as exc:  # the user's training loop comes first
            log.debug("logprobe: tensorboard tap failed: %s", exc)

    def close_opened(writer: Any) -> None:
        opened = mirrors.pop(id(writer), None)
        if opened is not None and run is None:
            opened.close()

    def tap(cls: type) -> None:
        add_scalar, add_scalars, close = originals[cls]

        @functools.wraps(add_scalar)
        def tapped_add_scalar(self: Any, tag: str, scalar_value: Any, global_step: Any = None, *args, **kw):
            result = add_scalar(self, tag, scalar_value, global_step, *args, **kw)
            mirror(self, {tag: scalar_value}, global_step)
            return result

        @functools.wraps(add_scalars)
        def tapped_add_scalars(
            self: Any, main_tag: str, tag_scalar_dict: Any, global_step: Any = None, *args, **kw
        ):
            result = add_scalars(self, main_tag, tag_scalar_dict, global_step, *args, **kw)
            mirror(self, {f"{main_tag}/{k}": v for k, v in dict(tag_scalar_dict).items()}, global_step)
            return result

        tapped_close = _closing_with(close, close_opened)
        tapped_add_scalar._logprobe_tap = True  # type: ignore[attr-defined]
        cls.add_scalar, cls.add_scalars, cls.close = tapped_add_scalar, tapped_add_scalars, tapped_close

    for cls in classes:
        tap(cls)

    def untap() -> None:
        for cls, (add_scalar, add_scalars, close) in originals.items():
            cls.add_scalar, cls.add_scalars, cls.close = add_scalar, add_scalars, close
        if run is None:
            for opened in mirrors.values():
                opened.close()
        mirrors.clear()

    return untap


def _summary_writers() -> list[type]:
    """The SummaryWriter classes importable here: torch's and tensorboardX's."""
    classes = []
    for module in ("torch.utils.tensorboard", "tensorboardX"):
        try:
            classes.append(importlib.import_module(module).SummaryWriter)
        except ImportError:
            continue
    if not classes:
        raise ImportError(
            "no TensorBoard SummaryWriter here: install tensorboard (for torch's) or tensorboardX"
        )
    return classes


def _check_framework(framework: str | None) -> None:
    if framework is not None and framework not in SOURCES:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(SOURCES)}")


def _numbers(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric values of a ``wandb.log`` payload, nested dicts flattened with ``.`` (as W&B shows
    them); 0-d tensors and numpy scalars included, text and media left out."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_numbers(value, name + "."))
            continue
        if isinstance(value, bool):
            continue
        item = getattr(value, "item", None)
        if callable(item) and getattr(value, "ndim", None) == 0:
            value = item()
        if isinstance(value, numbers.Real):  # NaN and inf too: the run counts them, as it does its own
            out[name] = float(value)
    return out


def _closing_with(original: Callable[..., Any], close_mirror: Callable[[Any], None]) -> Callable[..., Any]:
    """A tracker's own ``finish``/``close``, then ``close_mirror(tracker)``: the logprobe run the tap
    opened for it is closed with it. A failure there is logged, never raised into the user's loop."""

    @functools.wraps(original)
    def tapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            try:
                close_mirror(self)
            except Exception as exc:
                log.debug("logprobe: closing the tapped run failed: %s", exc)

    return tapped
