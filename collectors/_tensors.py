"""Turning user input (tensors, arrays, lists) into validated torch tensors on one device.

Every check here names the argument it rejects, so a trainer that passes the wrong thing learns
which one from the message alone; nothing lets a torch error (NotImplementedError for a meta
tensor, IndexError for an empty axis) escape with another argument's name or none at all.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


def as_tensor(
    name: str,
    value: Any,
    device: torch.device | None = None,
    list_dtype: torch.dtype | None = None,
    *,
    allow_bool: bool = True,
) -> torch.Tensor:
    """``value`` as a tensor on ``device``; a TypeError/ValueError naming ``name`` if it cannot be.

    Tensors and arrays keep their dtype; plain lists take ``list_dtype`` when given (torch would
    otherwise make float lists float32 and an empty list float32 too). Complex values are refused
    (no statistic here has a complex form), and so are bools unless ``allow_bool``.
    """
    if isinstance(value, torch.Tensor):
        check_tensor(name, value)
        if device is not None and value.device != device:
            try:
                value = value.to(device)
            except RuntimeError as exc:  # NotImplementedError included
                moved = f"{name} is on {value.device} and cannot be moved to {device}"
                raise ValueError(f"{moved}: {exc}") from exc
        tensor = value
    else:
        dtype = list_dtype if isinstance(value, list | tuple) else None
        try:
            tensor = torch.as_tensor(value, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(
                f"{name} must be a tensor, array or nested list of numbers, got {type(value).__name__}: {exc}"
            ) from exc
    if tensor.is_complex() or (tensor.dtype == torch.bool and not allow_bool):
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    return tensor


def check_tensor(name: str, value: torch.Tensor) -> None:
    """A tensor whose values can be read: dense and not on the ``meta`` device (which holds none)."""
    if value.is_meta:
        raise ValueError(f"{name} is on the meta device, which holds no values; pass a tensor with data")
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {value.layout}")


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


class Segments(NamedTuple):
    """Where each token sits: its sequence, its position in it, and the layout's geometry."""

    seq: torch.Tensor  # per-token sequence index
    pos: torch.Tensor  # per-token position in its sequence
    count: int  # number of sequences
    width: int  # the longest sequence (the row width of padded input)
    starts: torch.Tensor  # flat index of each sequence's first token
    packed: bool  # 1-D input with sequences of their own lengths


def segments(shape: torch.Size, seq_lens: Any, device: torch.device) -> Segments:
    """Per-token sequence index and position, for padded ``[B, T]`` input or packed 1-D input with
    ``seq_lens`` (one sequence if omitted)."""
    if len(shape) == 2:
        if seq_lens is not None:
            raise ValueError("seq_lens is for packed 1-D input; padded [B, T] input uses mask")
        batch, width = shape
        flat = torch.arange(batch * width, device=device)
        starts = torch.arange(batch, device=device) * width
        return Segments(flat // max(width, 1), flat % max(width, 1), batch, width, starts, False)
    if len(shape) != 1:
        raise ValueError(
            "trainer_logprobs and rollout_logprobs must be padded [B, T] or packed 1-D, "
            f"got {len(shape)} dimensions {tuple(shape)}"
        )
    total = shape[0]
    if seq_lens is None:
        lens = torch.tensor([total], device=device)
        width = total
    else:
        lens = as_tensor("seq_lens", seq_lens, device, list_dtype=torch.int64)
        if lens.ndim != 1 or lens.is_floating_point():
            raise ValueError(f"seq_lens must be a 1-D integer tensor, got {lens.dtype} {tuple(lens.shape)}")
        lens = lens.to(torch.int64)
        # Host syncs, only for packed input. Each length is bounded first, so the sum cannot wrap.
        out_of_range = bool(((lens < 0) | (lens > total)).any()) if lens.numel() else False
        total_lens, width = (
            (int(lens.sum()), int(lens.max())) if lens.numel() and not out_of_range else (0, 0)
        )
        if out_of_range or total_lens != total:
            shown = "out-of-range lengths" if out_of_range else f"sum {total_lens}"
            raise ValueError(
                f"seq_lens must be non-negative and sum to the packed length {total}, got {shown}"
            )
    seq = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)
    starts = torch.cumsum(lens, 0) - lens
    return Segments(
        seq, torch.arange(total, device=device) - starts[seq], int(lens.numel()), width, starts, True
    )
