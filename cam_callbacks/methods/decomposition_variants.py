"""More decompositions: Eigen-Grad-CAM (principal component of gradients x activations) and KPCA-CAM
(kernel principal component of the activations).

Same centring and sign conventions as Eigen-CAM (``cam_callbacks.methods.decomposition``). Each
function returns the raw ``(N, h, w)`` map (see ``cam_callbacks.methods.registry``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.methods.decomposition import orient_by_channel_mean, principal_projection
from cam_callbacks.methods.registry import register_method

#: The kernels ``kpcacam`` accepts (scikit-learn's names and formulas).
KPCA_KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


@register_method("eigengradcam", needs=("activations", "gradients"), summary="Eigen-Grad-CAM: first principal component of gradients x activations")
def eigengradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Eigen-Grad-CAM (pytorch-grad-cam's class-discriminative Eigen-CAM; Muhammad & Yeasin 2020 on ``g * A``).

    Eigen-CAM's projection (``principal_projection``) of the
    elementwise product ``g_k * A_k`` instead of ``A_k``: ``h*w`` samples of ``K`` channels, centred per
    channel, projected on their first right-singular vector; the sign makes the map correlate positively
    with ``mean_k g_k A_k`` (the HiResCAM map up to the factor ``K``); then ReLU.
    """
    n, _, h, w = activations.shape
    return torch.relu(principal_projection(gradients * activations)).reshape(n, h, w).to(activations.dtype)


def kernel_matrix(samples: Tensor, kernel: str, gamma: float, coef0: float, degree: int) -> Tensor:
    """``(N, S, K)`` samples -> ``(N, S, S)`` kernel values between each image's samples (scikit-learn's definitions).

    ``linear``: ``x.y``; ``poly``: ``(gamma x.y + coef0)^degree``; ``sigmoid``: ``tanh(gamma x.y + coef0)``;
    ``rbf``: ``exp(-gamma |x - y|^2)``; ``cosine``: ``x.y / (|x| |y|)`` (0 for a zero sample).

    Example::

        >>> kernel_matrix(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]), "rbf", 0.5, 1.0, 3)
        tensor([[[1.0000, 0.0821],
                 [0.0821, 1.0000]]])
    """
    if kernel == "cosine":
        samples = F.normalize(samples, dim=2)
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(samples, samples).pow(2))
    dots = samples @ samples.transpose(1, 2)
    if kernel == "sigmoid":
        return torch.tanh(gamma * dots + coef0)
    if kernel == "poly":
        return (gamma * dots + coef0).pow(degree)
    return dots


def _check_kpca_options(kernel: str, gamma: Optional[float], degree: int) -> None:
    if kernel not in KPCA_KERNELS:
        raise ValueError(f"kpcacam: kernel={kernel!r} is not valid; choose from {list(KPCA_KERNELS)}")
    if gamma is not None and not float(gamma) > 0:
        raise ValueError(f"kpcacam: gamma must be None (1 / channels) or > 0, got {gamma!r}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"kpcacam: degree must be a positive int, got {degree!r}")


@register_method(
    "kpcacam",
    needs=("activations",),
    summary="KPCA-CAM: first kernel principal component of the activations",
    options={"kernel": "sigmoid", "gamma": None, "coef0": 1.0, "degree": 3},
)
def kpcacam(activations: Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None, coef0: float = 1.0, degree: int = 3) -> Tensor:
    """KPCA-CAM (Karmani et al. 2024, "KPCA-CAM: Visual Explainability of Deep Computer Vision
    Models using Kernel PCA"): Eigen-CAM with kernel PCA, as pytorch-grad-cam's ``KPCA_CAM``.

    Per image, the ``h*w`` samples of ``K`` channels are centred per channel (as Eigen-CAM), the kernel
    matrix between them is built (``kernel_matrix``; default ``sigmoid``: ``tanh(gamma x.y + coef0)``,
    ``gamma = 1 / K`` when None, ``coef0 = 1``, as scikit-learn's ``KernelPCA`` that pytorch-grad-cam
    calls) and double-centred in feature space (``K - 1K/n - K1/n + 1K1/n^2``); the map is the first
    kernel principal component's score ``sqrt(lambda_1) v_1`` (negative eigenvalues of round-off
    count as 0), its sign chosen to correlate positively with ``mean_k A_k`` (Eigen-CAM's rule; scikit-learn
    makes the largest-magnitude entry of ``v_1`` positive instead), then ReLU.

    Batched ``eigh`` of ``(N, h*w, h*w)`` float64 matrices: memory ``8 N (h w)^2`` bytes (a 28x28 map costs
    4.9 MB per image), time ``O(N (h w)^3)``.
    """
    _check_kpca_options(kernel, gamma, degree)
    n, k, h, w = activations.shape
    samples = activations.reshape(n, k, h * w).transpose(1, 2).double()  # (N, hw, K)
    centred = samples - samples.mean(dim=1, keepdim=True)
    gram = kernel_matrix(centred, kernel, 1.0 / k if gamma is None else float(gamma), float(coef0), int(degree))
    gram = gram - gram.mean(dim=1, keepdim=True) - gram.mean(dim=2, keepdim=True) + gram.mean(dim=(1, 2), keepdim=True)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    projection = eigenvectors[:, :, -1] * eigenvalues[:, -1:].clamp(min=0).sqrt()  # (N, hw)
    return torch.relu(orient_by_channel_mean(projection, activations)).reshape(n, h, w).to(activations.dtype)
