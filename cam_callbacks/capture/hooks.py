"""The forward hook that captures the target layer's output during a forward pass.

:class:`LayerCapture` keeps a private copy of the layer's output (so later in-place ops of the
network cannot rewrite it), optionally as an autograd leaf from which only the *tail* of the network
records a graph. The hook is removed on exit, also on exceptions.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from cam_callbacks.capture.layouts import TokenGrid

__all__ = ["LayerCapture", "LayerOutputError", "OneByOneMapError"]


class LayerOutputError(ValueError):
    """The target layer's output is not a 4-D tensor (or a 1x1 one: :class:`OneByOneMapError`)."""


class OneByOneMapError(LayerOutputError):
    """The target layer's output is a 4-D ``(N, C, 1, 1)`` map: one value per channel, nothing to localise."""


class LayerCapture:
    """Capture the output of ``layer`` during forward passes of the model.

    Args:
        layer: The target module.
        layer_name: Its dotted name, for error messages.
        reshape: For transformer layers, the :class:`~cam_callbacks.capture.layouts.TokenGrid` turning the
            ``(N, tokens, C)`` output into the ``(N, C, h, w)`` :attr:`activation`; :attr:`raw` keeps the tokens.
        grad_tail: If True, the captured output becomes an autograd leaf and grad mode is switched
            on from that point of the forward pass: run the forward under ``torch.no_grad()`` and only
            the tail (target layer -> output) records a graph, so ``torch.autograd.grad(score,
            capture.activation)`` backpropagates through the tail alone and never touches
            ``param.grad``. The surrounding ``no_grad`` block restores grad mode on exit.

    Use as a context manager; the hook is removed on exit, also on exceptions.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> with LayerCapture(net[1], "1", grad_tail=True) as cap, torch.no_grad():
        ...     logits = net(torch.randn(2, 3, 8, 8))
        >>> cap.activation.shape, logits.requires_grad
        (torch.Size([2, 4, 6, 6]), True)
    """

    def __init__(self, layer: nn.Module, layer_name: str, grad_tail: bool = False, reshape: Optional[TokenGrid] = None) -> None:
        self.layer = layer
        self.layer_name = layer_name
        self.grad_tail = grad_tail
        self.reshape = reshape
        self.activation: Optional[Tensor] = None
        self.raw: Optional[Tensor] = None
        self._handle: Optional[Any] = None

    def _check_output(self, output: Any) -> None:
        """Refuse outputs that are not ``(N, C, H, W)`` maps (``(N, tokens, C)`` with ``reshape``) or are 1x1 maps."""
        expected = 4 if self.reshape is None else 3
        if not isinstance(output, Tensor) or output.dim() != expected:
            kind = f"a {output.dim()}-D tensor of shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
            if self.reshape is None:
                advice = (
                    "CAM methods need a 4-D (N, C, H, W) feature map. Choose a convolutional layer or block (e.g. the last one "
                    "before global pooling), or target_layer='auto'; for transformer tokens (N, tokens, C) pass reshape='vit'."
                )
            else:
                advice = f"reshape={self.reshape!r} needs a 3-D (N, tokens, channels) output. Choose a transformer block's layer."
            raise LayerOutputError(f"target_layer={self.layer_name!r} outputs {kind}; {advice}")
        if self.reshape is None and output.shape[2] * output.shape[3] == 1:
            raise OneByOneMapError(
                f"target_layer={self.layer_name!r} outputs (N, C, 1, 1) = {tuple(output.shape)}: a 1x1 map cannot localise "
                "anything. Choose an earlier layer with spatial size > 1 (e.g. the last convolutional block before global "
                "pooling), or target_layer='auto' (the last layer with an output larger than 1x1)."
            )

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Optional[Tensor]:
        self._check_output(output)
        # A private copy: in-place ops downstream (e.g. densenet's F.relu(inplace=True)) cannot rewrite it.
        self.raw = output.detach().clone()
        # Without reshape, raw and activation are one tensor (the autograd leaf when grad_tail is set).
        captured = self.raw if self.reshape is None else self.reshape.to_grid(self.raw).contiguous()
        if not self.grad_tail:
            self.activation = captured
            return None
        captured.requires_grad_(True)
        self.activation = captured
        torch.set_grad_enabled(True)
        # Hand the network a non-leaf view of the leaf, so in-place ops downstream stay legal.
        if self.reshape is None:
            return captured.clone()
        return self.reshape.to_tokens(captured, self.raw[:, : self.reshape.prefix_tokens])

    def __enter__(self) -> "LayerCapture":
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
