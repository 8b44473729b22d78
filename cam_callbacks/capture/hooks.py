"""The forward hook that captures the target layer's output during a forward pass.

``LayerCapture`` keeps a private copy of the layer's output (so later in-place ops of the
network cannot rewrite it), optionally as an autograd leaf from which only the *tail* of the network
records a graph. The hook is removed on exit, also on exceptions.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Set

import torch
from torch import Tensor, nn

from cam_callbacks.capture.layouts import ChannelsLast, TokenGrid, grid_advice, remembered_layout


class LayerOutputError(ValueError):
    """The target layer's output is not a 4-D tensor (or a 1x1 one: ``OneByOneMapError``)."""


class NotAFeatureMapError(LayerOutputError):
    """The target layer's output is 4-D but clearly not ``(N, C, H, W)``: attention tensors ``(N, heads, tokens, head_dim)``,
    channels-last maps ``(N, H, W, C)``, windows ``(N * windows, ...)``."""


#: Patch sizes and prefix-token counts (class, distillation, 4 registers + class) of vision transformers, for
#: recognising a token count ``prefix + h*w`` in a 4-D output.
_PATCH_SIZES = (8, 14, 16, 32)
_PREFIX_TOKENS = (1, 2, 5)


def _spatial_sizes(size: int) -> Set[int]:
    """Every size a strided layer can give an input side of ``size`` (floor and ceil of ``size / k``)."""
    return {v for k in range(1, size + 1) for v in (size // k, -(-size // k))}


def _channels_first_problem(shape: Sequence[int], input_shape: Sequence[int]) -> Optional[str]:
    """With ``reshape='nhwc'``: an ``(N, C, H, W)`` output read as ``(N, H, W, C)`` gives a grid whose shape does not
    follow the image's (dimension 1 is then the channels); said when the channels-first reading follows it and the
    channels-last one is off by more than a quarter."""
    _, first, second, last = (int(v) for v in shape)
    image = int(input_shape[2]) / int(input_shape[3])
    as_nhwc = first / second
    as_nchw = second / last
    tolerance = math.log(1.25)
    if abs(math.log(as_nhwc / image)) <= tolerance or abs(math.log(as_nchw / image)) > tolerance:
        return None
    return (
        f"reshape='nhwc' reads it as (N, H={first}, W={second}, C={last}), a {first}x{second} grid for a "
        f"{int(input_shape[2])}x{int(input_shape[3])} image, while it reads as an (N, C, H, W) map with a {second}x{last} "
        "grid; for an (N, C, H, W) feature map pass reshape=None (ExplainOptions(reshape=None), the default)"
    )


def feature_map_problem(shape: Sequence[int], input_shape: Sequence[int], reshape: Optional[TokenGrid] = None) -> Optional[str]:
    """Why a layer output of ``shape`` for an input of ``input_shape`` is clearly not a feature map of it (None if it may be).

    Conservative: only outputs that cannot be one are refused. Checked: the batch size equals the input's; without
    ``reshape``, a 4-D ``(N, A, B, D)`` output is refused when ``D`` exceeds the input width while ``B`` fits its height
    (a channels-last map: ``reshape='nhwc'``), or when ``B`` is a vision transformer's token count ``prefix + h*w``
    for the input (patches of 8, 14, 16 or 32 pixels, 1, 2 or 5 prefix tokens) that no strided layer gives, with at
    most 64 in ``A`` (attention heads).

    Example::

        >>> feature_map_problem((2, 3, 17, 64), (2, 3, 64, 64)) is not None  # vit_tiny's attention at 64 px
        True
        >>> feature_map_problem((2, 512, 2, 2), (2, 3, 64, 64)) is None
        True
    """
    if len(input_shape) != 4 or len(shape) < 1:
        return None
    if shape[0] != input_shape[0]:
        return (
            f"its batch dimension is {shape[0]} for {input_shape[0]} input image(s), so it is not one map per image "
            "(windowed attention folds windows into the batch); choose a layer whose output has one row per image"
        )
    if isinstance(reshape, ChannelsLast) and len(shape) == 4:
        return _channels_first_problem(shape, input_shape)
    if reshape is not None or len(shape) != 4:
        return None
    _, a, b, d = (int(v) for v in shape)
    height, width = int(input_shape[2]), int(input_shape[3])
    if d > width and b <= height:
        return (
            f"its last dimension ({d}) is larger than the input width ({width}): it looks like a channels-last "
            f"(N, H, W, C) map; pass reshape='nhwc' (or target_layer='auto')"
        )
    tokens = {p + (height // s) * (width // s) for s in _PATCH_SIZES for p in _PREFIX_TOKENS if (height // s) * (width // s) >= 4}
    if a <= 64 and b in tokens and b not in _spatial_sizes(height):
        return (
            f"dimension 2 ({b}) is a vision transformer's token count (prefix + h*w patches) for a {height}x{width} input, "
            "not a height: it looks like an attention tensor (N, heads, tokens, head_dim). Choose a block's output or its "
            "first norm with reshape=TokenGrid(prefix_tokens=...), or target_layer='auto'"
        )
    return None


class OneByOneMapError(LayerOutputError):
    """The target layer's output is a 4-D ``(N, C, 1, 1)`` map: one value per channel, nothing to localise."""


class LayerCapture:
    """Capture the output of ``layer`` during forward passes of the model.

    Args:
        layer: The target module.
        layer_name: Its dotted name, for error messages.
        reshape: For transformer layers, the ``TokenGrid`` turning the
            ``(N, tokens, C)`` output into the ``(N, C, h, w)`` ``activation``; ``raw`` keeps the tokens.
        input_shape: The model input's shape, when known: outputs that are clearly not feature maps of it are refused
            (``feature_map_problem``).
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

    def __init__(
        self,
        layer: nn.Module,
        layer_name: str,
        grad_tail: bool = False,
        reshape: Optional[TokenGrid] = None,
        input_shape: Optional[Sequence[int]] = None,
    ) -> None:
        self.layer = layer
        self.layer_name = layer_name
        self.grad_tail = grad_tail
        # Without reshape=, the layout target_layer='auto' chose for this layer (tokens or channels-last), if any.
        self.reshape = reshape if reshape is not None else remembered_layout(layer)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.activation: Optional[Tensor] = None
        self.raw: Optional[Tensor] = None
        self._handle: Optional[Any] = None

    def _check_output(self, output: Any) -> None:
        """Refuse outputs that are not ``(N, C, H, W)`` maps (``(N, tokens, C)`` with ``reshape``) or are 1x1 maps."""
        expected = 4 if self.reshape is None else self.reshape.output_dims
        if not isinstance(output, Tensor) or output.dim() != expected:
            kind = f"a {output.dim()}-D tensor of shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
            if self.reshape is None:
                advice = (
                    "CAM methods need a 4-D (N, C, H, W) feature map. Choose a convolutional layer or block (e.g. the last one "
                    f"before global pooling), or target_layer='auto'; {self._tokens_advice(output)}."
                )
            elif expected == 4:
                advice = f"reshape={self.reshape!r} needs a 4-D channels-last (N, H, W, C) output (e.g. a Swin stage)."
            else:
                advice = f"reshape={self.reshape!r} needs a 3-D (N, tokens, channels) output. Choose a transformer block's layer."
            raise LayerOutputError(f"target_layer={self.layer_name!r} outputs {kind}; {advice}")
        problem = None if self.input_shape is None else feature_map_problem(tuple(output.shape), self.input_shape, self.reshape)
        if problem is not None:
            raise NotAFeatureMapError(f"target_layer={self.layer_name!r} outputs shape {tuple(output.shape)}, not an (N, C, H, W) feature map: {problem}")
        if self.reshape is None and output.shape[2] * output.shape[3] == 1:
            raise OneByOneMapError(
                f"target_layer={self.layer_name!r} outputs (N, C, 1, 1) = {tuple(output.shape)}: a 1x1 map cannot localise "
                "anything. Choose an earlier layer with spatial size > 1 (e.g. the last convolutional block before global "
                "pooling), or target_layer='auto' (the last layer with an output larger than 1x1)."
            )

    def _tokens_advice(self, output: Any) -> str:
        """For an ``(N, tokens, C)`` output, the layout with the numbers found; else the general advice."""
        if not isinstance(output, Tensor) or output.dim() != 3 or output.shape[1] < 2:
            return "for transformer tokens (N, tokens, C) pass reshape=TokenGrid(prefix_tokens=...) (or 'vit': one class token)"
        image = (int(self.input_shape[2]), int(self.input_shape[3])) if self.input_shape is not None and len(self.input_shape) == 4 else None
        return f"if these are transformer tokens: {grid_advice(int(output.shape[1]), image)}"

    def _to_grid(self, tokens: Tensor) -> Tensor:
        assert self.reshape is not None
        try:
            return self.reshape.to_grid(tokens).contiguous()
        except ValueError as error:
            raise LayerOutputError(f"target_layer={self.layer_name!r} outputs shape {tuple(tokens.shape)}: {error}.") from None

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Optional[Tensor]:
        self._check_output(output)
        # A private copy: in-place ops downstream (e.g. densenet's F.relu(inplace=True)) cannot rewrite it.
        self.raw = output.detach().clone()
        # Without reshape, raw and activation are one tensor (the autograd leaf when grad_tail is set).
        captured = self.raw if self.reshape is None else self._to_grid(self.raw)
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
