"""Context managers that touch the model and always put it back as found.

- :func:`preserved_model_state`: eval mode for the duration, every module's ``.training`` flag and
  every parameter's ``requires_grad`` restored on exit (also on exceptions).
- :class:`LayerCapture`: a forward hook on the target layer that keeps a private copy of its output
  (so later in-place ops of the network cannot rewrite it), optionally as an autograd leaf from
  which only the *tail* of the network records a graph. The hook is removed on exit.
- :func:`preserved_rng_state`: torch (CPU and CUDA), NumPy and Python RNG states restored on exit.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from cam_callbacks.capture.layouts import TokenGrid

__all__ = ["LayerCapture", "preserved_model_state", "preserved_rng_state", "LayerOutputError", "eager"]


class LayerOutputError(ValueError):
    """The target layer's output is not a 4-D tensor."""


@contextmanager
def preserved_model_state(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; restore every flag on exit.

    Eval mode keeps BatchNorm statistics untouched and dropout off, so explaining a model never
    changes it. Restores each module's ``training`` flag and each parameter's ``requires_grad``.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with preserved_model_state(net):
        ...     assert not net.training
        >>> net.training
        True
    """
    modes: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in model.modules()]
    grads_required: List[Tuple[nn.Parameter, bool]] = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode and any(mode for _, mode in modes):
            model.eval()
        yield model
    finally:
        for module, mode in modes:
            if module.training != mode:  # setting only what changed keeps this cheap on big models
                module.training = mode
        for param, required in grads_required:
            if param.requires_grad != required:
                param.requires_grad_(required)


@contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``'d modules eagerly inside the block (``torch.compiler.set_stance("force_eager")``).

    A compiled module that already ran keeps using its compiled graph, and that graph does not call
    forward hooks registered later: the capture hook would never fire. Explaining therefore runs
    compiled models eagerly (the same weights and maths, without the compiler). No-op on torch < 2.6.
    """
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the torch (CPU + all CUDA devices), NumPy and Python RNG states on exit."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


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

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Optional[Tensor]:
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
