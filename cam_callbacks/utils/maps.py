"""Post-processing of raw maps: upsampling to the input size and min-max normalisation."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.utils.numeric import safe_divide


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
    return safe_divide(maps - low, high - low, require_positive=True)


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


def fuse_layer_maps(maps: Sequence[Tensor], gamma: float = 2.0) -> Tensor:
    """Fuse maps of several target layers, LayerCAM-style (Jiang et al. 2021).

    Each layer's map ``M`` (``(N, H, W)`` at input size, min-max normalised, so ``max M`` is 1 or the
    map is all zeros) is scaled by ``tanh(gamma * M / max M)``, which lifts the weak but fine-grained
    responses of shallow layers; the fused map is the pixel-wise maximum over layers, min-max normalised.

    Example::

        >>> deep = torch.tensor([[[0.0, 0.5, 1.0]]])
        >>> shallow = torch.tensor([[[1.0, 0.0, 0.0]]])
        >>> fuse_layer_maps([deep, shallow])  # max(tanh(2 * [0, .5, 1]), tanh(2 * [1, 0, 0])) = [.964, .762, .964]
        tensor([[[1., 0., 1.]]])
    """
    if not maps:
        raise ValueError("fuse_layer_maps needs at least one map")
    stacked = torch.stack([m.float() for m in maps])  # (L, N, H, W)
    peak = stacked.amax(dim=(2, 3), keepdim=True)
    boosted = gamma * stacked
    scaled = torch.tanh(safe_divide(boosted, peak, fallback=boosted, require_positive=True))
    return minmax_normalize(scaled.amax(dim=0))
