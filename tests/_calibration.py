"""BatchNorm statistics for the cross-checks on random-weight torchvision models (shared by the test folders).

With their stock statistics (mean 0, variance 1) deep random networks give logits of ~1e-10, where every
library's epsilon decides the map. One training-mode batch gives realistic statistics.
"""

from __future__ import annotations

import torch
from torch import nn


def calibrate_batchnorm(model: nn.Module, size: int, logit_scale: float = 1.0) -> nn.Module:
    """Statistics of one random ``(8, 3, size, size)`` batch (``momentum=None``: the batch's own statistics, seed 1),
    the last linear layer's weight times ``logit_scale``; returns the model in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch gives its statistics
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1)))
        if logit_scale != 1.0:
            [m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight.mul_(logit_scale)
    return model.eval()
