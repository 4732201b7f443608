"""verl: a tracking backend that takes verl's per-step metrics dict and writes it into a logprobe run.

verl's ``verl.utils.tracking.Tracking`` keeps its backends in ``self.logger`` (a dict of name to
object) and calls ``backend.log(data=metrics, step=global_step)`` on each, then ``finish()`` at the
end; :class:`LogprobeBackend` is such an object. Names are mapped where verl's mean the same as
logprobe's (``storage.VERL``: ``rollout_corr/k3_kl`` is ``mismatch/k3``,
``training/rollout_probs_diff_mean`` is ``mismatch/abs_prob_diff_mean``, ``actor/pg_clipfrac`` is
``train/clip_frac``) and kept as verl logged them otherwise. The README has the wiring recipe.

verl itself is not imported here: the backend only needs the dict.
"""

from __future__ import annotations

import atexit
from collections.abc import Mapping
from typing import Any

from logprobe.collectors._run import Run, init
from logprobe.storage import map_name

__all__ = ["LogprobeBackend"]


class LogprobeBackend:
    """One verl tracking backend writing into a logprobe run (created here unless ``run`` is given)."""

    def __init__(
        self,
        project_name: str | None = None,
        experiment_name: str | None = None,
        config: Any = None,
        *,
        run: Run | None = None,
        **init_kwargs: Any,
    ) -> None:
        self._owns_run = run is None
        if run is None:
            run = init(project=project_name, name=experiment_name, config=_plain(config), **init_kwargs)
            # verl's Tracking.finish() finishes only the backends it knows by name, never one added
            # to its ``logger`` dict: the run this backend opened is closed at exit too (once).
            atexit.register(self.finish)
        self.run = run
        self._mapped: set[str] = set()
        self._finished = False

    def log(self, data: Mapping[str, Any], step: int) -> None:
        """verl's call: every scalar in ``data`` at ``step`` (its global step, also the policy version)."""
        metrics: dict[str, Any] = {}
        new: dict[str, str] = {}
        for name, value in data.items():
            value = _scalar(value)
            if value is None:
                continue  # verl also passes lists and tables (e.g. generations); not metrics
            target = map_name(name, "verl")
            if target != name and name not in self._mapped:
                new[name] = target
            metrics[target] = value
        if new:
            self._mapped.update(new)
            self.run.event("name_map", step=int(step), source="verl", names=new)
        self.run.log(int(step), metrics, policy_version=int(step))

    def finish(self) -> None:
        if self._owns_run and not self._finished:
            self._finished = True
            atexit.unregister(self.finish)
            self.run.close()


def _scalar(value: Any) -> Any:
    """A number (Python, numpy, or a one-element tensor) as itself; anything else as None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    numel = value.numel() if hasattr(value, "numel") else getattr(value, "size", None)
    return value if numel == 1 and hasattr(value, "item") else None


def _plain(config: Any) -> Any:
    """verl passes an OmegaConf DictConfig; store it as plain JSON (resolved) when omegaconf is there."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:
        return config
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
