"""Gradients a method asks for beyond d(target logit) / d(activations): its own score, and Hessian-vector products.

The main pass (``cam_callbacks.engine.passes``) records the graph of the network's tail once; every method with
a ``score`` (Finer-CAM's contrast with similar classes, Shapley-CAM's
ReST) or ``hessian_vector`` in its ``needs`` (Shapley-CAM) gets its inputs from that one graph with
``torch.autograd.grad`` (``retain_graph=True``), batched over the chunk. No ``param.grad`` changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from cam_callbacks.methods.registry import CAMMethod


def target_logit(logits: Tensor, targets: Tensor) -> Tensor:
    """The default score: each image's logit of its target class, ``(N,)``."""
    return logits.gather(1, targets[:, None]).squeeze(1)


def has_own_gradients(method: CAMMethod) -> bool:
    """Whether ``method``'s gradients are not the shared d(target logit) / d(activations)."""
    return method.score is not None or "hessian_vector" in method.needs


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """Inside the block, ``F.scaled_dot_product_attention`` uses its math kernel: the fused kernels (flash,
    memory-efficient: transformers' attention on CPU and GPU) have no double backward, so a Hessian-vector product
    through them fails. The previous kernel choice is restored on exit. No-op on torch without ``torch.nn.attention``."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _hessian_vector(gradients: Tensor, activations: Tensor) -> Tensor:
    """``H A``: the derivative of ``<gradients, A>`` (``A`` held fixed) w.r.t. the activations; zeros where the
    gradients do not depend on them (a piecewise-linear tail)."""
    if not gradients.requires_grad:
        return torch.zeros_like(activations)
    (product,) = torch.autograd.grad(gradients, activations, grad_outputs=activations.detach(), retain_graph=True, allow_unused=True)
    return torch.zeros_like(activations) if product is None else product


def method_gradients(
    methods: Sequence[CAMMethod], method_options: Mapping[str, Mapping[str, Any]], logits: Tensor, targets: Tensor, activations: Tensor
) -> Dict[str, Dict[str, Tensor]]:
    """Per method with its own gradients: ``{name: {"gradients": ..., "hessian_vector": ...}}`` (the ones it needs).

    Args:
        methods: The methods of the chunk (those without own gradients are skipped).
        method_options: Each method's resolved options (by name).
        logits: ``(N, classes)`` logits with the tail's graph (from the main pass).
        targets: ``(N,)`` target classes.
        activations: The captured ``(N, K, h, w)`` activations (the autograd leaf of the tail).
    """
    own: Dict[str, Dict[str, Tensor]] = {}
    with torch.enable_grad():
        for method in methods:
            if has_own_gradients(method):
                own[method.name] = _own_gradients(method, method_options[method.name], logits, targets, activations)
    return own


def _own_gradients(method: CAMMethod, options: Mapping[str, Any], logits: Tensor, targets: Tensor, activations: Tensor) -> Dict[str, Tensor]:
    second_order = "hessian_vector" in method.needs
    score = target_logit(logits, targets) if method.score is None else method.score(logits, targets, **method.score_options(options))
    (gradients,) = torch.autograd.grad(score.sum(), activations, retain_graph=True, create_graph=second_order)
    inputs = {"gradients": gradients.detach()}
    if second_order:
        inputs["hessian_vector"] = _hessian_vector(gradients, activations).detach()
    return inputs
