"""Argument checks shared across layers, raising ``ValueError`` with the valid choices or the fix."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_maps(maps: Tensor) -> None:
    """Check that ``maps`` are ``(N, H, W)`` finite, non-negative floating maps (what the mass-based metrics need).

    Raises:
        ValueError: Not a tensor, not 3-D, not floating, NaN or inf, or a negative value.

    Example::

        >>> check_maps(torch.zeros(2, 4, 4))
        >>> check_maps(torch.zeros(4, 4))
        Traceback (most recent call last):
        ...
        ValueError: maps must be (N, H, W), got shape (4, 4)
    """
    if not isinstance(maps, Tensor):
        raise ValueError(f"maps must be a torch.Tensor of shape (N, H, W), got {type(maps).__name__}")
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise ValueError(f"maps must be a floating tensor, got dtype {maps.dtype}")
    if maps.numel() and not bool(torch.isfinite(maps).all()):
        raise ValueError("maps must be finite: found NaN or inf")
    if maps.numel() and bool((maps < 0).any()):
        raise ValueError(f"maps must be non-negative (mass-based metrics), got a minimum of {float(maps.min()):.4g}; use min-max normalised maps in [0, 1]")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Check that the argument ``name`` is one of the strings ``choices``.

    Raises:
        ValueError: Naming the argument, its value and the valid choices.

    Example::

        >>> check_choice("split", "test", ("train", "val"))
        Traceback (most recent call last):
        ...
        ValueError: split='test' is not known; choose from ['train', 'val']
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not known; choose from {list(choices)}")
