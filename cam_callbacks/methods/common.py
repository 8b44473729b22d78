"""Tensor helpers shared by the method families."""

from __future__ import annotations

import torch
from torch import Tensor


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k weights[n, k] * activations[n, k]``: ``(N, K)`` weights and ``(N, K, h, w)`` activations -> ``(N, h, w)``.

    Example::

        >>> weighted_sum(torch.tensor([[1.0, -2.0]]), torch.ones(1, 2, 1, 2))
        tensor([[[-1., -1.]]])
    """
    return torch.einsum("nk,nkhw->nhw", weights, activations)
