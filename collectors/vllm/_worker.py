"""Methods vLLM grafts onto its workers (``worker_extension_cls``), reached with ``collective_rpc``.

vLLM appends this class to the worker's bases, so methods see ``self.model_runner``,
``self.vllm_config`` and ``self.device``. Names carry a ``logprobe_`` prefix because a clash with a
worker method is an assertion error, and return values are plain dicts and strings so they cross
process boundaries without ``VLLM_ALLOW_INSECURE_SERIALIZATION``.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

WORKER_EXTENSION = "logprobe.collectors.vllm.LogprobeWorkerExtension"


class LogprobeWorkerExtension:
    def logprobe_probe(self) -> dict[str, Any]:
        """Ground truth from inside the worker: what the model really computes logits in."""
        return probe_model(self._logprobe_model(), worker=self)

    def logprobe_checksum(self, sample: int = 4096) -> str:
        """A cheap fingerprint of the loaded weights (see :func:`weights_checksum`)."""
        return weights_checksum(self._logprobe_model(), sample)

    def _logprobe_model(self) -> Any:
        runner = getattr(self, "model_runner", None)
        get_model = getattr(runner, "get_model", None)
        return get_model() if callable(get_model) else getattr(runner, "model", None)


def probe_model(model: Any, worker: Any = None) -> dict[str, Any]:
    import torch

    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    processor = getattr(model, "logits_processor", None)
    head_dtype = getattr(processor, "head_dtype", None)
    n_params = sum(p.numel() for p in model.parameters()) if model is not None else None
    return {
        "worker_class": type(worker).__name__ if worker is not None else None,
        "model_class": type(model).__name__,
        "lm_head_weight_dtype": None if weight is None else str(weight.dtype).removeprefix("torch."),
        "logits_processor_head_dtype": None if head_dtype is None else str(head_dtype).removeprefix("torch."),
        "device": str(getattr(worker, "device", None) or (weight.device if weight is not None else None)),
        "num_parameters": n_params,
        "torch_version": torch.__version__,
    }


def weights_checksum(model: Any, sample: int = 4096) -> str:
    """Hash of every parameter's name, shape, and sum and sum of squares over its first and last
    ``sample`` elements: milliseconds even for large models, and any real update changes it."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = param.detach().reshape(-1)
            head = flat[:sample].double()
            tail = flat[-sample:].double()
            digest.update(name.encode())
            digest.update(str(tuple(param.shape)).encode())
            stats = torch.stack([head.sum(), (head * head).sum(), tail.sum(), (tail * tail).sum()])
            digest.update(struct.pack("4d", *stats.cpu().tolist()))
    return digest.hexdigest()[:16]
