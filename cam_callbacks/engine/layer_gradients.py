"""Gradients at the target layer for images a method builds itself (e.g. noisy copies, Smooth Grad-CAM++)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from cam_callbacks.capture.hooks import LayerCapture
from cam_callbacks.capture.layouts import TokenGrid
from cam_callbacks.utils.outputs import OutputTransform, logits_of


class LayerGradients:
    """``(images, targets) -> (M, K, h, w)``: the gradient of each row's target logit at the target layer.

    One forward pass of the ``M`` images (the part before the layer without autograd) and one backward
    pass through the tail only (``torch.autograd.grad``: no ``param.grad`` changes), as the engine's main
    pass. The method decides the images (as many as the engine's chunk holds, so memory stays bounded).

    Args:
        model: The classifier (the engine has put it in eval mode).
        layer_name: The target layer's dotted name, for messages.
        layer: The target layer.
        reshape: The ``TokenGrid`` of a transformer layer (None for feature maps).
        output_transform: Where the logits are in the model's output (``logits_of``).

    Example::

        >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
        >>> LayerGradients(net, "0", net[0])(torch.ones(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)).shape
        torch.Size([4, 2, 2, 2])
    """

    def __init__(
        self, model: nn.Module, layer_name: str, layer: nn.Module, reshape: Optional[TokenGrid] = None, output_transform: OutputTransform = None
    ) -> None:
        self.model = model
        self.layer_name = layer_name
        self.layer = layer
        self.reshape = reshape
        self.output_transform = output_transform

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        with LayerCapture(self.layer, self.layer_name, grad_tail=True, reshape=self.reshape, input_shape=tuple(images.shape)) as capture:
            with torch.no_grad():  # the capture hook turns autograd on for the tail only
                logits = logits_of(self.model(images), self.output_transform, images.shape[0])
        if capture.activation is None:
            raise RuntimeError(f"target_layer={self.layer_name!r} was not called during the forward pass")
        if not logits.requires_grad:
            raise RuntimeError(f"the logits do not depend on target_layer={self.layer_name!r}; no gradient can be taken")
        (gradients,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), capture.activation)
        return gradients
