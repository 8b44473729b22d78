"""Gradients with respect to the input, plain (saliency) or guided (guided backpropagation).

Guided backpropagation (Springenberg et al. 2015) lets the gradient through a ReLU only where the
ReLU's input was positive *and* the gradient arriving from above is positive. ``guided_relus``
switches that on for one forward pass without touching the model: a
``torch.overrides.TorchFunctionMode`` sees every ReLU call made while it is active
(``nn.ReLU`` modules, also with ``inplace=True``, ``F.relu``, ``F.relu_``, ``torch.relu``,
``torch.relu_``, ``Tensor.relu`` and ``Tensor.relu_``) and wraps its result in an identity whose
backward also drops negative gradients. No module is replaced, no hook is registered, and the mode
is gone when the block ends, also on exceptions.

Not covered: ReLUs computed by other means (``torch.clamp(x, min=0)``, ``F.relu6``, ``torch.where``),
ReLUs inside compiled or scripted code the mode cannot see, and the in-place forms when the caller
keeps using the argument instead of the returned tensor (``F.relu_(x); y = conv(x)``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cam_callbacks.utils.outputs import OutputTransform, logits_of
from cam_callbacks.utils.targets import check_target_range


class _GuidedIdentity(torch.autograd.Function):
    """Identity on a ReLU's output; backward keeps the gradient where it is positive and the output is positive."""

    @staticmethod
    def forward(ctx: Any, relu_output: Tensor) -> Tensor:
        ctx.positive = relu_output > 0  # a private mask: later in-place writes to the output cannot change it
        return relu_output.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0) * ctx.positive


_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}


class _GuidedMode(TorchFunctionMode):
    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if func in _RELU_FUNCTIONS and isinstance(result, Tensor) and result.requires_grad:
            return _GuidedIdentity.apply(result)
        return result


@contextmanager
def guided_relus() -> Iterator[None]:
    """Inside the block, gradients through ReLUs follow guided backpropagation.

    Example::

        >>> x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
        >>> with guided_relus():
        ...     y = torch.relu(x)
        >>> (grad,) = torch.autograd.grad((y * torch.tensor([5.0, -1.0, 4.0])).sum(), x)
        >>> grad  # input <= 0 or negative upstream gradient -> 0
        tensor([0., 0., 4.])
    """
    with _GuidedMode():
        yield


def input_gradients(
    model: nn.Module, images: Tensor, targets: Optional[Tensor], guided: bool = False, output_transform: OutputTransform = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """``d logit[target] / d images`` for each image, plain or guided.

    Args:
        model: The classifier (the caller sets eval mode and restores it).
        images: ``(N, C, H, W)`` input batch (not modified).
        targets: ``(N,)`` classes, or None for the top-1 prediction.
        guided: Guided backpropagation through every ReLU (see ``guided_relus``).
        output_transform: Where the logits are in the model's output (``logits_of``).

    Returns:
        ``(gradients (N, C, H, W), logits (N, classes) detached, targets (N,))``. Only the input's
        gradient is computed (``torch.autograd.grad``), so no ``param.grad`` changes.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if guided:
            with guided_relus():
                output = model(x)
        else:
            output = model(x)
        logits = logits_of(output, output_transform, x.shape[0])
        if targets is None:
            targets = logits.detach().argmax(dim=1)
        else:
            check_target_range(targets, logits.shape[1])
        (gradients,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
    return gradients, logits.detach(), targets
