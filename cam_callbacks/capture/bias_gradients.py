"""FullGrad's inputs: the input gradient and the *bias-gradients* of every layer with a bias, from one pass.

Srinivas & Fleuret (2019) decompose a ReLU network's output into the input gradient times the input plus, for every
layer with a bias ``b``, the bias times the gradient of the output w.r.t. that layer's output (``b * df/dz``, per
position). ``bias_gradients`` runs the whole model once with autograd and returns both, batched:

- every ``nn.Conv2d`` with a bias, and every ``nn.BatchNorm2d`` with running statistics, whose (eval-mode) implicit
  bias is folded: ``beta - running_mean * gamma / sqrt(running_var + eps)`` (``gamma = 1``, ``beta = 0`` without affine
  parameters), as in the authors' code and pytorch-grad-cam;
- forward hooks keep each such layer's output and hand the network a clone of it, so in-place ops downstream (resnet's
  ``ReLU(inplace=True)`` after a BatchNorm) cannot rewrite it; the hooks are removed on exit, also on exceptions;
- ``torch.autograd.grad`` only: no ``param.grad`` changes (the caller sets eval mode and restores it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from cam_callbacks.utils.outputs import OutputTransform, logits_of
from cam_callbacks.utils.targets import check_target_range


def folded_bias(module: nn.Module) -> Optional[Tensor]:
    """The ``(K,)`` bias a layer adds to each channel: a conv's bias, a BatchNorm's folded one; None if it has none.

    Example::

        >>> bn = nn.BatchNorm2d(1).eval()
        >>> _ = bn.running_mean.fill_(2.0), bn.running_var.fill_(4.0 - bn.eps), bn.bias.data.fill_(1.0)
        >>> folded_bias(bn)  # 1 - 2 * 1 / sqrt(4)
        tensor([0.])
    """
    if isinstance(module, nn.Conv2d):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.running_var is not None:
        gamma = module.weight.detach() if module.weight is not None else torch.ones_like(module.running_mean)
        beta = module.bias.detach() if module.bias is not None else torch.zeros_like(module.running_mean)
        return beta - module.running_mean * gamma / torch.sqrt(module.running_var + module.eps)
    return None


def bias_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every layer ``folded_bias`` gives a bias for, in registration order."""
    return [(name, module) for name, module in model.named_modules() if folded_bias(module) is not None]


@contextmanager
def _kept_outputs(model: nn.Module) -> Iterator[List[Tuple[Tensor, Tensor]]]:
    """Inside the block, each call of a bias layer appends ``(its bias, its 4-D output)``; the network gets a clone."""
    kept: List[Tuple[Tensor, Tensor]] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> Optional[Tensor]:
        bias = folded_bias(module)
        if bias is None or not isinstance(output, Tensor) or output.dim() != 4 or not output.requires_grad:
            return None
        kept.append((bias, output))
        return output.clone()

    handles = [module.register_forward_hook(hook) for _, module in bias_layers(model)]
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()


def bias_gradients(
    model: nn.Module, images: Tensor, targets: Optional[Tensor], output_transform: OutputTransform = None
) -> Tuple[Tensor, List[Tensor], Tensor, Tensor]:
    """Input gradient and bias-gradients of the target logit, from one forward and one backward pass.

    Args:
        model: The classifier (in eval mode: BatchNorm's folded bias uses its running statistics).
        images: ``(N, C, H, W)`` input batch (not modified).
        targets: ``(N,)`` classes, or None for the top-1 prediction.
        output_transform: Where the logits are in the model's output (``logits_of``).

    Returns:
        ``(input_gradients (N, C, H, W), [bias_l * d logit / d output_l, each (N, K_l, h_l, w_l)] in call order,
        logits (N, classes) detached, targets (N,))``. A layer the logits do not depend on gives zeros.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _kept_outputs(model) as kept:
        logits = logits_of(model(x), output_transform, x.shape[0])
        if targets is None:
            targets = logits.detach().argmax(dim=1)
        else:
            check_target_range(targets, logits.shape[1])
        score = logits.gather(1, targets[:, None]).sum()
        grads = torch.autograd.grad(score, [x, *(output for _, output in kept)], allow_unused=True)
    terms = [torch.zeros_like(output) if grad is None else bias.to(grad.dtype)[None, :, None, None] * grad for (bias, output), grad in zip(kept, grads[1:])]
    input_grad = grads[0] if grads[0] is not None else torch.zeros_like(x)
    return input_grad, [t.detach() for t in terms], logits.detach(), targets
