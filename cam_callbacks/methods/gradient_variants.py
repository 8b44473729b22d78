"""More gradient-weighted CAMs: Grad-CAM element-wise and Smooth Grad-CAM++.

Each function returns the raw ``(N, h, w)`` map (see ``cam_callbacks.methods.registry``).
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import Tensor

from cam_callbacks.methods.common import weighted_sum
from cam_callbacks.methods.registry import register_method
from cam_callbacks.utils.numeric import safe_divide


@register_method("gradcamelementwise", needs=("activations", "gradients"), summary="Grad-CAM element-wise: sum_k relu(g_k * A_k)")
def gradcamelementwise(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM element-wise (``GradCAMElementWise`` of pytorch-grad-cam, Gildenblat and contributors 2021): ``sum_k relu(g_k * A_k)``.

    HiResCAM (Draelos & Carin 2020) with the ReLU applied to every product ``g_kij A_kij`` before the sum
    over channels instead of after it, so no channel's negative evidence cancels another's positive
    evidence. The map is non-negative (the final ReLU of the other methods changes nothing).
    """
    return torch.relu(gradients * activations).sum(dim=1)


def gradcampp_weights(activations: Tensor, second: Tensor, third: Tensor, first: Tensor) -> Tensor:
    """Grad-CAM++ channel weights from (estimates of) the first three derivatives, paper closed form:
    ``alpha = D2 / (2 D2 + sum_ab(A_ab) D3)`` (0 where the denominator is 0), ``w_k = sum_ij alpha relu(D1)``.

    With ``D1 = g``, ``D2 = g^2``, ``D3 = g^3`` this is ``gradcampp``'s weights.

    Example::

        >>> g = torch.full((1, 1, 1, 2), 0.5)
        >>> gradcampp_weights(torch.ones(1, 1, 1, 2), g**2, g**3, g)  # alpha = 0.25 / (0.5 + 2 * 0.125) = 1/3
        tensor([[0.3333]])
    """
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    alpha = safe_divide(second, 2.0 * second + activation_sums * third)
    return (alpha * torch.relu(first)).sum(dim=(2, 3))


def _check_smoothing(num_samples: int, std: float, seed: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"smoothgradcampp: num_samples must be a positive int, got {num_samples!r}")
    if isinstance(std, bool) or not isinstance(std, numbers.Real) or not float(std) >= 0:
        raise ValueError(f"smoothgradcampp: std must be a number >= 0, got {std!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"smoothgradcampp: seed must be an int, got {seed!r}")


@register_method(
    "smoothgradcampp",
    needs=("activations", "images", "targets", "layer_gradients"),
    summary="Smooth Grad-CAM++: Grad-CAM++ with derivatives averaged over noisy copies of the input",
    options={"num_samples": 4, "std": 0.3, "seed": 0},
)
def smoothgradcampp(
    activations: Tensor,
    images: Tensor,
    targets: Tensor,
    layer_gradients: Callable[[Tensor, Tensor], Tensor],
    num_samples: int = 4,
    std: float = 0.3,
    seed: int = 0,
) -> Tensor:
    """Smooth Grad-CAM++ (Omeiza et al. 2019), with torchcam's correction of the alpha numerator.

    ``num_samples`` noisy copies ``x + e_s`` of the images, ``e_s ~ N(0, std^2)`` per element in the units of
    the model's input (as torchcam's ``SmoothGradCAMpp``, defaults ``num_samples=4``, ``std=0.3``), give the
    gradients ``g_s`` of the target logit (the class explained on the clean image) at the target layer.
    Their averages ``D_p = mean_s g_s^p`` (p = 1, 2, 3) enter Grad-CAM++'s closed form
    (``gradcampp_weights``, the paper's ``sum_ab(A_ab) D3`` like this package's ``gradcampp``), and the
    weights multiply the clean image's activations: ``ReLU(sum_k w_k A_k)``.

    The noise is drawn from a private ``torch.Generator`` on the images' device seeded with ``seed`` (the
    global RNG is untouched; CPU and CUDA generators draw different numbers). Copy ``s`` adds the same
    ``e_s`` (shape ``(C, H, W)``) to every image, so an image's map does not depend on the batch it is
    computed in. One batched forward and backward pass per copy (``layer_gradients``, through the network's
    tail only); ``std=0`` gives Grad-CAM++.

    torchcam differs by construction: ``sum_ab(A_ab D3_ab)`` inside the sum, ``relu`` of the *last* copy's
    gradient instead of ``D1``, and the last noisy copy's activations in the weighted sum.
    """
    _check_smoothing(num_samples, std, seed)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    dtype = torch.promote_types(activations.dtype, torch.float32)  # g^3 of half-precision gradients would underflow
    first, second, third = (torch.zeros(activations.shape, dtype=dtype, device=activations.device) for _ in range(3))
    for _ in range(num_samples):
        noise = torch.randn(images.shape[1:], generator=generator, device=images.device, dtype=torch.float32)
        g = layer_gradients(images + (noise * float(std)).to(images.dtype), targets).to(dtype)
        first += g
        second += g * g
        third += g * g * g
    first, second, third = first / num_samples, second / num_samples, third / num_samples
    clean = activations.to(dtype)
    return torch.relu(weighted_sum(gradcampp_weights(clean, second, third, first), clean)).to(activations.dtype)
