"""``ModelScorer`` hands 4-D rows to the model in channels-last memory order on the CPU (faster convolutions): the same
logits to float rounding, and a model whose forward cannot take such inputs (``.view`` on a feature map) is run with
plain inputs instead, remembered for later calls."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import cam_callbacks as cc
from cam_callbacks.engine.scorers import CHANNELS_LAST_REFUSED, ModelScorer


class ViewNet(nn.Module):
    """Flattens its feature map with ``.view``, which fails on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.shape[0], -1))


def rows(start: int, stop: int) -> Tensor:
    return torch.randn(stop - start, 3, 8, 8, generator=torch.Generator().manual_seed(start))


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    seen = []
    handle = net[0].register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        fast = ModelScorer(net, 3)(7, rows)
        plain = ModelScorer(net, 3, channels_last=False)(7, rows)
    finally:
        handle.remove()
    assert seen == [True] * 3 + [False] * 3
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_a_model_refusing_channels_last_runs_plain_and_is_remembered():
    torch.manual_seed(0)
    net = ViewNet().eval()
    calls = []
    handle = net.conv.register_forward_pre_hook(lambda m, inputs: calls.append(1))
    try:
        got = ModelScorer(net, 4)(6, rows)
        assert net in CHANNELS_LAST_REFUSED
        assert len(calls) == 3  # the first pass failed once (at .view), then 2 plain passes
        torch.testing.assert_close(got, ModelScorer(net, 4, channels_last=False)(6, rows))  # 2 more passes
        ModelScorer(net, 4)(6, rows)
        assert len(calls) == 7  # remembered: 2 passes, no failed attempt any more
    finally:
        handle.remove()
    maps = cc.explain(net, rows(0, 2), "scorecam", "conv")  # Score-CAM on it works
    assert maps.shape == (2, 8, 8) and bool(torch.isfinite(maps).all())
