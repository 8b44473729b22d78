"""CAMs from a decomposition of the activations: Eigen-CAM (their first principal component).

Each function returns the raw ``(N, h, w)`` map (see :mod:`cam_callbacks.methods.registry`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cam_callbacks.methods.registry import register_method
from cam_callbacks.utils.numeric import pearson

__all__ = ["eigencam"]


@register_method("eigencam", needs=("activations",), summary="Eigen-CAM: first principal component of the activations")
def eigencam(activations: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): projection on the first principal component, ReLU.

    Per image, the activations are read as ``h*w`` samples of ``K`` channels, centred per channel,
    and projected on their first right-singular vector. The sign of a principal component is
    arbitrary, so it is fixed to make the map correlate positively with the channel-mean map
    ``mean_k A_k`` (where that correlation is below 1e-6 in magnitude, e.g. after a zero-bias
    LayerNorm, the value of largest magnitude is made positive); then ReLU (as pytorch-grad-cam does). Class-agnostic: no gradients, no target.
    Batched SVD of ``(N, h*w, K)`` matrices, no per-image loop.
    """
    n, k, h, w = activations.shape
    samples = activations.reshape(n, k, h * w).transpose(1, 2).double()  # (N, hw, K)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # (N, hw)
    correlation = pearson(projection, samples.mean(dim=2), dim=1)  # with the channel-mean map
    # Where the channel mean carries no sign information (|correlation| < 1e-6, e.g. after a LayerNorm
    # with zero bias, whose channel mean is 0 up to rounding), the largest-magnitude value is made positive.
    extreme = projection.gather(1, projection.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    reference = torch.where(correlation.abs() < 1e-6, extreme, correlation)
    sign = torch.where(reference < 0, -1.0, 1.0).to(projection.dtype).unsqueeze(1)
    return torch.relu(sign * projection).reshape(n, h, w).to(activations.dtype)
