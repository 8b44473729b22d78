"""Target classes: what ``targets=`` accepts and the checks on it."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

#: How logits become class probabilities: ``softmax`` (one class per image) or ``sigmoid`` (multi-label).
PROBABILITIES = ("softmax", "sigmoid")


def probabilities(logits: Tensor, kind: str = "softmax") -> Tensor:
    """Class probabilities of ``(..., C)`` logits, in float32: softmax over the last dimension or elementwise sigmoid."""
    if kind == "softmax":
        return torch.softmax(logits.float(), dim=-1)
    if kind == "sigmoid":
        return torch.sigmoid(logits.float())
    raise ValueError(f"probability={kind!r} is not valid; choose from {list(PROBABILITIES)}")


#: What ``targets=`` accepts: None (top-1 prediction), one class for all images, one per image (an ``(N,)`` or
#: integer ``(N, 1)`` tensor), or an ``(N, num_classes)`` multi-hot tensor (multi-label models: one map per positive label).
TargetsLike = Union[None, int, Sequence[int], Tensor]

_SQUEEZE_HINT = "for a column of class indices pass targets.squeeze(1) as an integer tensor"


def as_targets(targets: TargetsLike, n: int, device: torch.device) -> Optional[Tensor]:
    """Normalise ``targets`` to a ``(n,)`` long tensor on ``device`` (None for top-1), or a ``(n, C)`` bool multi-hot one.

    An *integer* ``(n, 1)`` tensor is a column of class indices (as datasets often give them) and is
    squeezed to ``(n,)``; a bool or floating ``(n, 1)`` one is multi-hot for a 1-output model (the
    model's width is checked at the first forward pass, ``check_target_classes``).

    Example::

        >>> as_targets(torch.tensor([[2], [0]]), 2, torch.device("cpu"))
        tensor([2, 0])
        >>> as_targets(torch.tensor([[1.0], [0.0]]), 2, torch.device("cpu"))
        tensor([[ True],
                [False]])
    """
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise TypeError("targets must be None, an int or a sequence/tensor of class indices, got a bool")
    try:
        tensor = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"targets must be None, an int, a sequence of class indices or a tensor, got {type(targets).__name__} {targets!r:.80}") from error
    given_shape = tuple(tensor.shape)
    integer = not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)
    if tensor.dim() == 2 and tensor.shape[1] == 1 and integer:
        tensor = tensor.squeeze(1)  # a column of class indices
    if tensor.dim() == 2:
        if tensor.shape[0] != n or not bool(((tensor == 0) | (tensor == 1)).all()):
            hint = f"; {_SQUEEZE_HINT}" if tensor.shape[1] == 1 else ""
            raise ValueError(
                f"2-D targets must be an ({n}, num_classes) multi-hot tensor (0/1 or bool), got shape {tuple(tensor.shape)}"
                f"{' with values other than 0 and 1' if tensor.shape[0] == n else ''}{hint}"
            )
        return tensor.to(device=device).bool()
    if not integer:
        raise TypeError(f"targets must hold integer class indices, got dtype {tensor.dtype}")
    if tensor.dim() == 0:  # one class for all images (int, NumPy integer, 0-d tensor)
        return torch.full((n,), int(tensor), dtype=torch.long, device=device)
    if tensor.dim() != 1 or tensor.shape[0] != n:
        raise ValueError(f"targets must have one class index per image: expected shape ({n},) or ({n}, 1), got {given_shape}")
    return tensor.to(device=device, dtype=torch.long)


def first_out_of_range(targets: Tensor, num_classes: int) -> Optional[int]:
    """Index of the first class index outside ``0..num_classes-1``, or None."""
    bad = (targets < 0) | (targets >= num_classes)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def check_target_range(targets: Tensor, num_classes: int) -> None:
    """Raise a ValueError naming the first class index outside ``0..num_classes-1``."""
    index = first_out_of_range(targets, num_classes)
    if index is not None:
        hint = "; to explain a 1-output multi-label model give bool (N, 1) targets" if num_classes == 1 else ""
        raise ValueError(
            f"targets[{index}]={int(targets[index])} is out of range: the model has {num_classes} classes, valid class indices are 0..{num_classes - 1}{hint}"
        )


def check_target_classes(target_classes: Optional[int], num_classes: int) -> None:
    """Raise a ValueError when multi-hot targets of width ``target_classes`` do not fit a model with ``num_classes`` logits.

    None (targets that are not multi-hot) passes.

    Example::

        >>> check_target_classes(3, 4)
        Traceback (most recent call last):
        ...
        ValueError: targets has 3 columns (a multi-hot (N, num_classes) tensor) but the model returns 4 logits per image (4 classes): give one column per class
    """
    if target_classes is None or target_classes == num_classes:
        return
    hint = f"; {_SQUEEZE_HINT}" if target_classes == 1 else ""
    raise ValueError(
        f"targets has {target_classes} column{'s' if target_classes != 1 else ''} (a multi-hot (N, num_classes) tensor) but the "
        f"model returns {num_classes} logit{'s' if num_classes != 1 else ''} per image ({num_classes} classes): "
        f"give one column per class{hint}"
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
