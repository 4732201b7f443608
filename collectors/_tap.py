"""``tap_wandb()``: every ``wandb.log`` call of any framework, mirrored into logprobe with one line.

Most RL frameworks (OpenRLHF, prime-rl, SkyRL, AReaL, slime, NeMo-RL, verl) log to W&B through
their own code, so the place to listen is W&B's ``Run.log`` itself: the tap wraps that one method
on the class (and ``finish``, to close what it opened), keeps W&B's own behaviour untouched, and
writes the numeric values to a logprobe run under logprobe's names where a framework's quantity is
logprobe's (``storage.map_name``), else under the name logged. The step follows W&B's rules:
an explicit ``step`` moves the run's step forward (an older one is dropped, as W&B drops it), and a
call without one lands on the current step and advances it unless ``commit=False``. A failure in
the mirror is logged at debug level and never reaches the training loop.
"""

from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from logprobe.collectors._run import Run, init
from logprobe.storage import SOURCES, map_name

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

    if framework is not None and framework not in SOURCES:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(SOURCES)}")
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

    @functools.wraps(original_finish)
    def tapped_finish(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original_finish(self, *args, **kwargs)
        finally:
            mirror = mirrors.pop(id(self), None)
            if mirror is not None and mirror.owned:
                try:
                    mirror.run.close()
                except Exception as exc:
                    log.debug("logprobe: closing the tapped run failed: %s", exc)

    tapped_log._logprobe_tap = True  # type: ignore[attr-defined]
    WandbRun.log, WandbRun.finish = tapped_log, tapped_finish

    def untap() -> None:
        WandbRun.log, WandbRun.finish = original_log, original_finish
        for mirror in mirrors.values():
            if mirror.owned:
                mirror.run.close()
        mirrors.clear()

    return untap


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
