"""Target classes: what ``targets=`` accepts and the checks on it."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["TargetsLike", "as_targets", "first_out_of_range", "check_target_range", "multilabel_pairs", "expand_multilabel", "PROBABILITIES", "probabilities"]

#: How logits become class probabilities: ``softmax`` (one class per image) or ``sigmoid`` (multi-label).
PROBABILITIES = ("softmax", "sigmoid")


def probabilities(logits: Tensor, kind: str = "softmax") -> Tensor:
    """Class probabilities of ``(..., C)`` logits, in float32: softmax over the last dimension or elementwise sigmoid."""
    if kind == "softmax":
        return torch.softmax(logits.float(), dim=-1)
    if kind == "sigmoid":
        return torch.sigmoid(logits.float())
    raise ValueError(f"probability={kind!r} is not valid; choose from {list(PROBABILITIES)}")


#: What ``targets=`` accepts: None (top-1 prediction), one class for all images, one per image, or an
#: ``(N, num_classes)`` multi-hot tensor (multi-label models: one map per positive label).
TargetsLike = Union[None, int, Sequence[int], Tensor]


def as_targets(targets: TargetsLike, n: int, device: torch.device) -> Optional[Tensor]:
    """Normalise ``targets`` to a ``(n,)`` long tensor on ``device`` (None for top-1), or a ``(n, C)`` bool multi-hot one."""
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise TypeError("targets must be None, an int or a sequence/tensor of class indices, got a bool")
    tensor = torch.as_tensor(targets)
    if tensor.dim() == 2:
        if tensor.shape[0] != n or not bool(((tensor == 0) | (tensor == 1)).all()):
            raise ValueError(
                f"2-D targets must be an ({n}, num_classes) multi-hot tensor (0/1 or bool), got shape {tuple(tensor.shape)}"
            )
        return tensor.to(device=device).bool()
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
    """Raise a ValueError naming the first class index outside ``0..num_classes-1``."""
    index = first_out_of_range(targets, num_classes)
    if index is not None:
        raise ValueError(
            f"targets[{index}]={int(targets[index])} is out of range: the model has {num_classes} classes, "
            f"valid class indices are 0..{num_classes - 1}"
        )


def multilabel_pairs(multi_hot: Tensor) -> Tuple[Tensor, Tensor]:
    """``(image_index, label)`` of every positive entry of an ``(N, C)`` multi-hot tensor, image-major.

    Example::

        >>> multilabel_pairs(torch.tensor([[0, 1, 1], [1, 0, 0]]))
        (tensor([0, 0, 1]), tensor([1, 2, 0]))
    """
    image_index, label = multi_hot.bool().nonzero(as_tuple=True)
    return image_index, label


def expand_multilabel(images: Tensor, multi_hot: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """One row per positive label: ``(images[image_index], labels, image_index)`` for an ``(N, C)`` multi-hot tensor."""
    image_index, labels = multilabel_pairs(multi_hot)
    if image_index.numel() == 0:
        raise ValueError("the multi-hot targets have no positive label: there is nothing to explain")
    return images[image_index.to(images.device)], labels, image_index
