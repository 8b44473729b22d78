"""Gradient-weighted CAMs: the target layer's activations weighted by the gradient of the target logit.

Grad-CAM, Grad-CAM++, XGrad-CAM (one weight per channel) and HiResCAM, LayerCAM (one weight per
channel and position). Each function returns the raw ``(N, h, w)`` map (see
``cam_callbacks.methods.registry``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cam_callbacks.methods.common import weighted_sum
from cam_callbacks.methods.registry import register_method
from cam_callbacks.utils.numeric import safe_divide


@register_method("gradcam", needs=("activations", "gradients"), summary="Grad-CAM: spatially averaged gradients")
def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_k mean_ij(g_kij) A_k)``."""
    return torch.relu(weighted_sum(gradients.mean(dim=(2, 3)), activations))


@register_method("gradcampp", needs=("activations", "gradients"), summary="Grad-CAM++ (paper closed form)")
def gradcampp(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form under the exponential-score assumption.

    ``alpha_kij = g^2 / (2 g^2 + sum_ab(A_kab) g^3)`` (0 where ``g == 0`` or the denominator is 0),
    ``w_k = sum_ij alpha_kij relu(g_kij)``, map ``ReLU(sum_k w_k A_k)``.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    activation_sums = activations.sum(dim=(2, 3), keepdim=True)
    alpha = safe_divide(g2, 2.0 * g2 + activation_sums * g3)
    weights = (alpha * torch.relu(gradients)).sum(dim=(2, 3))
    return torch.relu(weighted_sum(weights, activations))


@register_method("xgradcam", needs=("activations", "gradients"), summary="XGrad-CAM: activation-weighted gradients")
def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij`` (0 if the sum is 0)."""
    weights = safe_divide((gradients * activations).sum(dim=(2, 3)), activations.sum(dim=(2, 3)))
    return torch.relu(weighted_sum(weights, activations))


@register_method("hirescam", needs=("activations", "gradients"), summary="HiResCAM: elementwise gradient x activation")
def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k g_k * A_k)`` (elementwise)."""
    return torch.relu((gradients * activations).sum(dim=1))


@register_method("layercam", needs=("activations", "gradients"), summary="LayerCAM: positive gradients as pixel weights")
def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k relu(g_k) * A_k)``."""
    return torch.relu((torch.relu(gradients) * activations).sum(dim=1))
