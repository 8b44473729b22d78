"""CAM methods as pure functions, registered by name.

Every method is a small function of tensors captured at the target layer. It returns the
*raw* map at feature resolution ``(N, h, w)``; upsampling and normalisation happen in
:func:`cam_callbacks.maps.upsample_and_normalize`, so the maths here can be tested alone.

The inputs a method may ask for (by naming them in ``needs``):

- ``activations``: ``(N, K, h, w)``, the target layer's output.
- ``gradients``: ``(N, K, h, w)``, d(target logit) / d(activations).
- ``class_weights``: ``(N, K)``, the row of the final linear layer for each image's target
  class (CAM only).

Adding a method is one function plus the :func:`register_method` decorator::

    @register_method("mycam", needs=("activations", "gradients"), summary="...")
    def mycam(activations, gradients):
        return torch.relu((gradients.amax((2, 3), keepdim=True) * activations).sum(1))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

__all__ = [
    "CAMMethod",
    "available_methods",
    "get_method",
    "register_method",
    "cam",
    "gradcam",
    "gradcampp",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
]

KNOWN_INPUTS = ("activations", "gradients", "class_weights")


@dataclass(frozen=True)
class CAMMethod:
    """A registered CAM method.

    Attributes:
        name: The registry name (what ``method=`` accepts).
        fn: Pure function returning the raw ``(N, h, w)`` map.
        needs: Names of the captured tensors ``fn`` takes as keyword arguments.
        summary: One line for documentation and error messages.
    """

    name: str
    fn: Callable[..., Tensor]
    needs: Tuple[str, ...]
    summary: str

    @property
    def needs_gradients(self) -> bool:
        return "gradients" in self.needs


_REGISTRY: Dict[str, CAMMethod] = {}


def register_method(
    name: str, *, needs: Tuple[str, ...], summary: str = ""
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering ``fn`` as CAM method ``name``.

    Args:
        name: Registry name, lower case.
        needs: Which captured tensors the function takes (see module docstring).
        summary: One-line description.

    Raises:
        ValueError: If the name is taken or ``needs`` names an unknown input.
    """
    unknown = [n for n in needs if n not in KNOWN_INPUTS]
    if unknown:
        raise ValueError(f"register_method: unknown needs {unknown}; valid inputs are {list(KNOWN_INPUTS)}")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"register_method: a method named {name!r} is already registered")
        _REGISTRY[name] = CAMMethod(name=name, fn=fn, needs=tuple(needs), summary=summary)
        return fn

    return decorator


def available_methods() -> List[str]:
    """Names of all registered methods, in registration order.

    Example::

        >>> import cam_callbacks as cc
        >>> cc.available_methods()[:3]
        ['cam', 'gradcam', 'gradcampp']
    """
    return list(_REGISTRY)


def get_method(name: str) -> CAMMethod:
    """Look up a method by name.

    Raises:
        ValueError: For an unknown name; the message lists the valid names.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"method={name!r} is not a known CAM method; choose from {available_methods()}")
    return _REGISTRY[name]


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k weights[n, k] * activations[n, k]`` -> ``(N, h, w)``."""
    return torch.einsum("nk,nkhw->nhw", weights, activations)


@register_method("cam", needs=("activations", "class_weights"), summary="CAM: final linear weights (GAP+linear heads)")
def cam(activations: Tensor, class_weights: Tensor) -> Tensor:
    """CAM (Zhou et al. 2016): ``ReLU(sum_k w_k^c A_k)`` with ``w^c`` the linear layer row of class c."""
    return torch.relu(_weighted_sum(class_weights, activations))


@register_method("gradcam", needs=("activations", "gradients"), summary="Grad-CAM: spatially averaged gradients")
def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_k mean_ij(g_kij) A_k)``."""
    return torch.relu(_weighted_sum(gradients.mean(dim=(2, 3)), activations))


@register_method("gradcampp", needs=("activations", "gradients"), summary="Grad-CAM++ (paper closed form)")
def gradcampp(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form under the exponential-score assumption.

    ``alpha_kij = g^2 / (2 g^2 + sum_ab(A_kab) g^3)`` (0 where ``g == 0`` or the denominator is 0),
    ``w_k = sum_ij alpha_kij relu(g_kij)``, map ``ReLU(sum_k w_k A_k)``.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    denominator = 2.0 * g2 + activation_sums * g3
    safe = denominator != 0
    alpha = torch.where(safe, g2 / torch.where(safe, denominator, torch.ones_like(denominator)), torch.zeros_like(g2))
    weights = (alpha * torch.relu(gradients)).sum(dim=(2, 3))
    return torch.relu(_weighted_sum(weights, activations))


@register_method("xgradcam", needs=("activations", "gradients"), summary="XGrad-CAM: activation-weighted gradients")
def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij`` (0 if the sum is 0)."""
    activation_sums = activations.sum(dim=(2, 3))
    weighted = (gradients * activations).sum(dim=(2, 3))
    nonzero = activation_sums != 0
    weights = torch.where(nonzero, weighted / torch.where(nonzero, activation_sums, torch.ones_like(activation_sums)), torch.zeros_like(weighted))
    return torch.relu(_weighted_sum(weights, activations))


@register_method("hirescam", needs=("activations", "gradients"), summary="HiResCAM: elementwise gradient x activation")
def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k g_k * A_k)`` (elementwise)."""
    return torch.relu((gradients * activations).sum(dim=1))


@register_method("layercam", needs=("activations", "gradients"), summary="LayerCAM: positive gradients as pixel weights")
def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k relu(g_k) * A_k)``."""
    return torch.relu((torch.relu(gradients) * activations).sum(dim=1))


@register_method("eigencam", needs=("activations",), summary="Eigen-CAM: first principal component of the activations")
def eigencam(activations: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): projection on the first principal component, ReLU.

    Per image, the activations are read as ``h*w`` samples of ``K`` channels, centred per channel,
    and projected on their first right-singular vector. The sign of a principal component is
    arbitrary, so it is fixed to make the map correlate positively with the channel-mean map
    ``mean_k A_k``; then ReLU (as pytorch-grad-cam does). Class-agnostic: no gradients, no target.
    Batched SVD of ``(N, h*w, K)`` matrices, no per-image loop.
    """
    n, k, h, w = activations.shape
    samples = activations.reshape(n, k, h * w).transpose(1, 2).double()  # (N, hw, K)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # (N, hw)
    channel_mean = samples.mean(dim=2)
    covariance = ((projection - projection.mean(1, keepdim=True)) * (channel_mean - channel_mean.mean(1, keepdim=True))).sum(1)
    sign = torch.where(covariance < 0, -1.0, 1.0).to(projection.dtype).unsqueeze(1)
    return torch.relu(sign * projection).reshape(n, h, w).to(activations.dtype)
