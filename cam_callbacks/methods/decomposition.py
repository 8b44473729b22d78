"""CAMs from a decomposition of the activations: Eigen-CAM (their first principal component).

Each function returns the raw ``(N, h, w)`` map (see ``cam_callbacks.methods.registry``).
``orient_by_channel_mean`` and ``principal_projection`` are shared with the other
decompositions (``cam_callbacks.methods.decomposition_variants``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cam_callbacks.methods.registry import register_method
from cam_callbacks.utils.numeric import pearson


def orient_by_channel_mean(projection: Tensor, features: Tensor) -> Tensor:
    """``projection`` ``(N, h*w)`` with each row's sign chosen to correlate positively with ``mean_k features[n, k]``.

    The sign of a principal component is arbitrary; the channel-mean map of the decomposed
    ``(N, K, h, w)`` features fixes it. Where that correlation is below 1e-6 in magnitude (e.g. after a
    zero-bias LayerNorm, whose channel mean is 0 up to rounding), the value of largest magnitude is
    made positive instead.

    Example::

        >>> orient_by_channel_mean(torch.tensor([[1.0, -1.0]]), torch.tensor([[[[0.0, 2.0]]]]))
        tensor([[-1.,  1.]])
    """
    channel_mean = features.flatten(2).mean(dim=1).to(projection.dtype)  # (N, hw)
    correlation = pearson(projection, channel_mean, dim=1)
    extreme = projection.gather(1, projection.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    reference = torch.where(correlation.abs() < 1e-6, extreme, correlation)
    return torch.where(reference < 0, -1.0, 1.0).to(projection.dtype).unsqueeze(1) * projection


def principal_projection(features: Tensor) -> Tensor:
    """``(N, K, h, w)`` -> ``(N, h*w)`` float64: each image's ``h*w`` samples of ``K`` channels, centred per
    channel, projected on their first right-singular vector, oriented by ``orient_by_channel_mean``.

    Batched SVD of ``(N, h*w, K)`` matrices, no per-image loop.
    """
    n, k, h, w = features.shape
    samples = features.reshape(n, k, h * w).transpose(1, 2).double()  # (N, hw, K)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # (N, hw)
    return orient_by_channel_mean(projection, features)


@register_method("eigencam", needs=("activations",), summary="Eigen-CAM: first principal component of the activations")
def eigencam(activations: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): projection on the first principal component, ReLU.

    Per image, the activations are read as ``h*w`` samples of ``K`` channels, centred per channel,
    and projected on their first right-singular vector (``principal_projection``). The sign of a
    principal component is arbitrary, so it is fixed to make the map correlate positively with the
    channel-mean map ``mean_k A_k`` (where that correlation is below 1e-6 in magnitude, e.g. after a
    zero-bias LayerNorm, the value of largest magnitude is made positive); then ReLU (as
    pytorch-grad-cam does). Class-agnostic: no gradients, no target.
    """
    n, _, h, w = activations.shape
    return torch.relu(principal_projection(activations)).reshape(n, h, w).to(activations.dtype)
