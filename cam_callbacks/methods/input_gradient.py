"""Methods on gradients at the input: saliency, guided backpropagation and Guided Grad-CAM.

Their maps are at input resolution ``(N, H, W)``; saliency and guided backpropagation ignore the
target layer (see ``cam_callbacks.methods.registry``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cam_callbacks.methods.gradient import gradcam
from cam_callbacks.methods.registry import register_method


def _channel_max_abs(gradients: Tensor) -> Tensor:
    return gradients.abs().amax(dim=1)


@register_method("saliency", needs=("input_gradients",), summary="Saliency (Simonyan et al.): max over channels of |d logit / d input|")
def saliency(input_gradients: Tensor) -> Tensor:
    """Image-specific saliency (Simonyan et al. 2014): ``M_ij = max_c |d y_c / d x_cij|``, at input resolution."""
    return _channel_max_abs(input_gradients)


@register_method("guidedbackprop", needs=("guided_gradients",), summary="Guided backpropagation, max over channels of |gradient|")
def guidedbackprop(guided_gradients: Tensor) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015) reduced like saliency: ``max_c |g_cij|``.

    ``g`` is the input gradient with every ReLU passing gradient only where its input and the
    incoming gradient are positive (see ``cam_callbacks.capture.guided.guided_relus``).
    """
    return _channel_max_abs(guided_gradients)


@register_method("guidedgradcam", needs=("activations", "gradients", "guided_gradients"), summary="Guided Grad-CAM: Grad-CAM x guided backprop")
def guidedgradcam(activations: Tensor, gradients: Tensor, guided_gradients: Tensor) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): Grad-CAM upsampled to the input (bilinear) times guided backprop.

    Per channel ``c`` the product is ``cam * g_c``; reduced like ``guidedbackprop``, that is
    ``cam * max_c |g_c|`` (``cam >= 0``).
    """
    size = (guided_gradients.shape[-2], guided_gradients.shape[-1])
    cam_map = gradcam(activations, gradients).float().unsqueeze(1)
    upsampled = F.interpolate(cam_map, size=size, mode="bilinear", align_corners=False).squeeze(1)
    return upsampled * _channel_max_abs(guided_gradients).float()
