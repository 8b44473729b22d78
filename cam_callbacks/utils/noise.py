"""Random draws that do not depend on how the work is chunked, from a private generator (the global RNG is untouched)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


class NoiseRows:
    """Standard normal ``(rows, *shape)`` noise from a private generator, the same numbers however the rows are chunked.

    ``take(r)`` returns the next ``r`` rows of one long sequence. torch's CPU normal sampler transforms uniforms in blocks
    of 16 values, so the generator is always asked for a multiple of 16 values (whole rows, the surplus kept for the next
    call): the rows equal one ``torch.randn`` of all of them, whatever the chunk sizes. The global RNG is not used.

    Example::

        >>> a, b = NoiseRows((1, 3), seed=0), NoiseRows((1, 3), seed=0)
        >>> torch.equal(torch.cat([a.take(2), a.take(5)]), b.take(7))
        True
    """

    def __init__(self, shape: Tuple[int, ...], seed: int, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.generator = torch.Generator(device=device or "cpu")
        self.generator.manual_seed(int(seed))
        self.device, self.dtype = device, dtype
        per_row = math.prod(self.shape)
        self.block = 16 // math.gcd(16, per_row) if per_row else 1  # rows whose values are a multiple of 16
        self.left = torch.empty(0, *self.shape, device=device, dtype=dtype)

    def take(self, rows: int) -> Tensor:
        """The next ``rows`` rows, ``(rows, *shape)``."""
        missing = rows - self.left.shape[0]
        if missing > 0:
            drawn = -(-missing // self.block) * self.block
            fresh = torch.randn(drawn, *self.shape, generator=self.generator, device=self.device, dtype=self.dtype)
            self.left = torch.cat([self.left, fresh])
        out, self.left = self.left[:rows], self.left[rows:]
        return out
