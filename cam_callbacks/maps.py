"""Post-processing of raw maps: upsampling to the input size and min-max normalisation."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["upsample_and_normalize", "minmax_normalize"]


def minmax_normalize(maps: Tensor) -> Tensor:
    """Min-max normalise each map of ``(N, H, W)`` to [0, 1].

    A constant map (max == min) becomes all zeros, never NaN or inf.

    Example::

        >>> minmax_normalize(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))
        tensor([[[0., 1.]],
        <BLANKLINE>
                [[0., 0.]]])
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {tuple(maps.shape)}")
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    span = high - low
    nonconstant = span > 0
    scaled = (maps - low) / torch.where(nonconstant, span, torch.ones_like(span))
    return torch.where(nonconstant, scaled, torch.zeros_like(scaled))


def upsample_and_normalize(raw: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear upsampling (``align_corners=False``) of ``(N, h, w)`` maps to ``size``, then min-max.

    Returns float32 maps in [0, 1] of shape ``(N, *size)`` on the input's device.
    """
    if raw.dim() != 3:
        raise ValueError(f"raw maps must be (N, h, w), got shape {tuple(raw.shape)}")
    raw = raw.float()
    if tuple(raw.shape[-2:]) != tuple(size):
        raw = F.interpolate(raw.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
    return minmax_normalize(raw)
