"""Numerics that never produce NaN or inf from a zero denominator: safe division and Pearson correlation.

Both are element-wise (or per row) and batched; they keep the dtype and device of their inputs, so
callers choose the precision (the metrics compute in float64).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor


def safe_divide(numerator: Union[Tensor, float], denominator: Tensor, fallback: Union[Tensor, float] = 0.0, *, require_positive: bool = False) -> Tensor:
    """``numerator / denominator`` element-wise, ``fallback`` where the denominator cannot divide.

    The division is only evaluated on a denominator replaced by 1 where it cannot divide, so no
    element ever divides by zero and no NaN or inf comes from a zero denominator (a NaN or inf in
    the inputs still propagates where the division happens).

    Args:
        numerator: Tensor or number (broadcast against ``denominator``).
        denominator: Tensor.
        fallback: The value where the denominator cannot divide: a number, or a tensor broadcast
            against the quotient (e.g. the numerator itself, to leave it undivided).
        require_positive: False (default): divide where ``denominator != 0``. True: divide only where
            ``denominator > 0``; ``fallback`` where it is ``<= 0`` or NaN (for sums of non-negative
            values, spans ``max - min``, probabilities).

    Returns:
        The quotient, of the dtype ``numerator / denominator`` has.

    Example::

        >>> safe_divide(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, -1.0]))
        tensor([ 0.5000,  0.0000, -3.0000])
        >>> safe_divide(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, -1.0]), fallback=1.0, require_positive=True)
        tensor([0.5000, 1.0000, 1.0000])
        >>> x = torch.tensor([4.0, 5.0])
        >>> safe_divide(x, torch.tensor([2.0, 0.0]), fallback=x)  # undivided where the denominator is 0
        tensor([2., 5.])
    """
    divides = denominator > 0 if require_positive else denominator != 0
    quotient = numerator / torch.where(divides, denominator, torch.ones_like(denominator))
    return torch.where(divides, quotient, fallback)


def pearson(a: Tensor, b: Tensor, dim: int = -1, fallback: float = 0.0) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim``, clamped to ``[-1, 1]``; ``fallback`` where either side is constant.

    ``r = sum(x y) / sqrt(sum(x^2) sum(y^2))`` with ``x = a - mean(a)`` and ``y = b - mean(b)`` along
    ``dim``. Where that denominator is 0 (a constant ``a`` or ``b``) the correlation is undefined
    and ``fallback`` is returned instead, never NaN. Computed in the dtype of ``a`` and ``b``
    (cast them first, e.g. to float64, for precision).

    Args:
        a: Tensor.
        b: Tensor of the same shape.
        dim: The dimension to correlate along (reduced away).
        fallback: The value where the correlation is undefined (0 by default).

    Example::

        >>> a = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
        >>> pearson(a, torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]))  # anti-correlated; constant row
        tensor([-1.,  0.])
        >>> pearson(a, a, dim=1, fallback=-1.0)
        tensor([ 1., -1.])
    """
    x = a - a.mean(dim=dim, keepdim=True)
    y = b - b.mean(dim=dim, keepdim=True)
    denominator = torch.sqrt((x * x).sum(dim=dim) * (y * y).sum(dim=dim))
    r = safe_divide((x * y).sum(dim=dim), denominator, require_positive=True).clamp(-1.0, 1.0)
    return torch.where(denominator > 0, r, fallback)
