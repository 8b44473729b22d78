"""Activation-weighted CAMs without gradients: CAM (the classifier's weights).

Each function returns the raw ``(N, h, w)`` map (see ``cam_callbacks.methods.registry``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cam_callbacks.methods.common import weighted_sum
from cam_callbacks.methods.registry import register_method


@register_method("cam", needs=("activations", "class_weights"), summary="CAM: final linear weights (GAP+linear heads)")
def cam(activations: Tensor, class_weights: Tensor) -> Tensor:
    """CAM (Zhou et al. 2016): ``ReLU(sum_k w_k^c A_k)`` with ``w^c`` the linear layer row of class c."""
    return torch.relu(weighted_sum(class_weights, activations))
