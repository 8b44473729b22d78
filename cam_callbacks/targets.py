"""Target classes: what ``targets=`` accepts and the checks on it."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["TargetsLike", "as_targets", "first_out_of_range", "check_target_range"]

#: What ``targets=`` accepts: None (top-1 prediction), one class for all images, or one per image.
TargetsLike = Union[None, int, Sequence[int], Tensor]


def as_targets(targets: TargetsLike, n: int, device: torch.device) -> Optional[Tensor]:
    """Normalise ``targets`` to a ``(n,)`` long tensor on ``device`` (or None for top-1)."""
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise TypeError("targets must be None, an int or a sequence/tensor of class indices, got a bool")
    tensor = torch.as_tensor(targets)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices, got dtype {tensor.dtype}")
    if tensor.dim() == 0:  # one class for all images (int, NumPy integer, 0-d tensor)
        return torch.full((n,), int(tensor), dtype=torch.long, device=device)
    if tensor.dim() != 1 or tensor.shape[0] != n:
        raise ValueError(f"targets must have one class index per image: expected shape ({n},), got {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.long)


def first_out_of_range(targets: Tensor, num_classes: int) -> Optional[int]:
    """Index of the first class index outside ``0..num_classes-1``, or None."""
    bad = (targets < 0) | (targets >= num_classes)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def check_target_range(targets: Tensor, num_classes: int) -> None:
    index = first_out_of_range(targets, num_classes)
    if index is not None:
        raise ValueError(
            f"targets[{index}]={int(targets[index])} is out of range: the model has {num_classes} classes, "
            f"valid class indices are 0..{num_classes - 1}"
        )
