"""Sanity baselines: maps that explain nothing about the class, to compare real methods against.

``randomcam`` is a random combination of the target layer's channels, ``sobelcam`` the edges of the
input image. A method that does not beat them on a metric (faithfulness, localisation) tells little
(Adebayo et al. 2018, "Sanity Checks for Saliency Maps"). Maps as in ``cam_callbacks.methods.registry``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.methods.common import weighted_sum
from cam_callbacks.methods.registry import register_method

#: The 3x3 Sobel kernel of the horizontal derivative (OpenCV's ``ksize=3``); its transpose is the vertical one.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
#: ITU-R BT.601 luma weights of R, G, B (OpenCV's ``COLOR_RGB2GRAY``).
_LUMA = (0.299, 0.587, 0.114)


def random_channel_weights(channels: int, seed: int, device: torch.device) -> Tensor:
    """``(channels,)`` float32 weights uniform in ``[-1, 1)`` from a private generator on ``device`` seeded with ``seed``.

    ``2 * torch.rand(channels, generator=torch.Generator(device).manual_seed(seed)) - 1``; the global RNG is
    not used. CPU and CUDA generators draw different numbers for one seed.

    Example::

        >>> torch.equal(random_channel_weights(3, 0, torch.device("cpu")), 2 * torch.rand(3, generator=torch.Generator().manual_seed(0)) - 1)
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"randomcam: seed must be an int, got {seed!r}")
    generator = torch.Generator(device=device).manual_seed(seed)
    return 2.0 * torch.rand(channels, generator=generator, device=device, dtype=torch.float32) - 1.0


@register_method("randomcam", needs=("activations",), summary="Random-CAM: channels weighted uniformly at random (baseline)", options={"seed": 0})
def randomcam(activations: Tensor, seed: int = 0) -> Tensor:
    """Random-CAM, a sanity baseline (pytorch-grad-cam's ``RandomCAM``): ``ReLU(sum_k w_k A_k)``, ``w_k ~ U(-1, 1)``.

    The weights come from ``random_channel_weights`` (a private generator seeded with ``seed``, the global
    RNG untouched) and are the same for every image: an image's map does not depend on the batch it is
    computed in, and a fixed seed gives the same maps on every call on one device. The map depends on the
    image through its activations only, not on the target class. pytorch-grad-cam draws new weights per
    image and call from NumPy's global RNG.
    """
    n, k = activations.shape[:2]
    weights = random_channel_weights(k, seed, activations.device).to(activations.dtype)
    return torch.relu(weighted_sum(weights.expand(n, k), activations))


def grayscale(images: Tensor) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, 1, H, W)``: luma ``0.299 R + 0.587 G + 0.114 B`` for 3 channels, the channel mean otherwise.

    Example::

        >>> grayscale(torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)).flatten()
        tensor([0.2990])
    """
    if images.shape[1] == 3:
        luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
        return torch.einsum("c,nchw->nhw", luma, images).unsqueeze(1)
    return images.mean(dim=1, keepdim=True)


@register_method("sobelcam", needs=("images",), summary="Sobel-CAM: edge magnitude of the grayscale input (baseline)")
def sobelcam(images: Tensor) -> Tensor:
    """Sobel-CAM, a sanity baseline (pytorch-grad-cam's ``sobel_cam``): ``(|G_x| + |G_y|) / 2`` of the grayscale image.

    ``grayscale`` of the images as the model receives them, 3x3 Sobel derivatives (``SOBEL_X`` and its
    transpose) with the border reflected without repeating the edge pixel (OpenCV's default
    ``BORDER_REFLECT_101``), combined as OpenCV's ``addWeighted(|G_x|, 0.5, |G_y|, 0.5)``. At input resolution
    ``(N, H, W)``; ignores the model, the target layer and the class. pytorch-grad-cam works on 8-bit
    images (gray and each derivative rounded, saturated at 255); here nothing is rounded.
    """
    if images.shape[-2] < 2 or images.shape[-1] < 2:
        raise ValueError(f"sobelcam needs images of at least 2x2 pixels, got {tuple(images.shape[-2:])}")
    gray = F.pad(grayscale(images.float()), (1, 1, 1, 1), mode="reflect")
    sobel_x = torch.tensor(SOBEL_X, dtype=gray.dtype, device=gray.device)
    kernels = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    derivatives = F.conv2d(gray, kernels)  # (N, 2, H, W)
    return derivatives.abs().mean(dim=1)
