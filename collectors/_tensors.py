"""Turning user input (tensors, arrays, lists) into validated torch tensors on one device."""

from __future__ import annotations

from typing import Any

import torch


def as_tensor(
    name: str, value: Any, device: torch.device | None = None, list_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``value`` as a tensor on ``device``; a clear TypeError if it is not array-like.

    Tensors and arrays keep their dtype; plain lists take ``list_dtype`` when given (torch would
    otherwise make float lists float32 and an empty list float32 too).
    """
    if isinstance(value, torch.Tensor):
        return value if device is None or value.device == device else value.to(device)
    dtype = list_dtype if isinstance(value, list | tuple) else None
    try:
        return torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{name} must be a tensor, array or nested list of numbers, got {type(value).__name__}: {exc}"
        ) from exc


def same_shape(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
            "they must match"
        )


def as_mask(mask: Any, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    mask_t = as_tensor(name, mask, like.device)
    same_shape(name, mask_t, "the logprobs", like)
    return mask_t if mask_t.dtype == torch.bool else mask_t != 0


def segments(
    shape: torch.Size, seq_lens: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-token sequence index, per-token position in its sequence, and the sequence count.

    Padded input is ``[B, T]``; packed input is 1-D with ``seq_lens`` (one sequence if omitted).
    """
    if len(shape) == 2:
        if seq_lens is not None:
            raise ValueError("seq_lens is for packed 1-D input; padded [B, T] input uses mask")
        batch, width = shape
        flat = torch.arange(batch * width, device=device)
        return flat // max(width, 1), flat % max(width, 1), batch
    if len(shape) != 1:
        raise ValueError(
            f"logprobs must be padded [B, T] or packed 1-D, got {len(shape)} dimensions {tuple(shape)}"
        )
    total = shape[0]
    if seq_lens is None:
        lens = torch.tensor([total], device=device)
    else:
        lens = as_tensor("seq_lens", seq_lens, device, list_dtype=torch.int64)
        if lens.ndim != 1 or lens.is_floating_point() or lens.is_complex():
            raise ValueError(f"seq_lens must be a 1-D integer tensor, got {lens.dtype} {tuple(lens.shape)}")
        lens = lens.to(torch.int64)
        total_lens = int(lens.sum()) if lens.numel() else 0  # a host sync, only for packed input
        if total_lens != total or bool((lens < 0).any()):
            raise ValueError(
                f"seq_lens must be non-negative and sum to the packed length {total}, got sum {total_lens}"
            )
    seq = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)
    starts = torch.cumsum(lens, 0) - lens
    return seq, torch.arange(total, device=device) - starts[seq], int(lens.numel())
