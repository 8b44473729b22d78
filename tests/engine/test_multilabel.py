"""Multi-label models: multi-hot targets give one map per positive label, sigmoid probabilities in the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import cam_callbacks as cc


class SigmoidHand(nn.Module):
    """Hand-set multi-label model: feature map A = x (1x1 identity conv), GAP, logits z_c = W[c] . mean(A) + b_c.

    With x made of two channels, Grad-CAM for label c is ReLU(W[c,0] A_0 + W[c,1] A_1) / (h w) (up to scale),
    so label 0 (W = [1, 0]) explains with channel 0 and label 1 (W = [0, 1]) with channel 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def _images():
    x = torch.zeros(2, 2, 4, 4)
    x[0, 0, 0, 0] = 4.0  # channel 0: one bright pixel top-left
    x[0, 1, 3, 3] = 8.0  # channel 1: one bright pixel bottom-right
    x[1, 0, 1, 2] = 2.0
    x[1, 1, 2, 1] = 6.0
    return x


def test_one_map_per_positive_label_by_hand():
    multi_hot = torch.tensor([[1, 1, 0], [0, 1, 0]])
    maps = cc.explain(SigmoidHand(), _images(), "gradcam", "conv", targets=multi_hot)
    assert maps.shape == (2, 3, 4, 4)
    # image 0, label 0: Grad-CAM = relu(A_0) -> the top-left pixel alone; label 1: relu(A_1) -> bottom-right
    expected_00 = torch.zeros(4, 4)
    expected_00[0, 0] = 1.0
    expected_01 = torch.zeros(4, 4)
    expected_01[3, 3] = 1.0
    expected_11 = torch.zeros(4, 4)
    expected_11[2, 1] = 1.0
    assert torch.equal(maps[0, 0], expected_00) and torch.equal(maps[0, 1], expected_01) and torch.equal(maps[1, 1], expected_11)
    # negative labels get all-zero maps
    assert maps[0, 2].abs().max() == 0 and maps[1, 0].abs().max() == 0 and maps[1, 2].abs().max() == 0


def test_multi_hot_equals_per_label_calls_for_every_method():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()  # fmt: skip
    x = torch.randn(3, 3, 8, 8)
    multi_hot = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    for method in ["gradcam", "scorecam", "reciprocam", "saliency"]:
        maps = cc.explain(model, x, method, "3", targets=multi_hot)
        for image, label in multi_hot.nonzero().tolist():
            single = cc.explain(model, x[image : image + 1], method, "3", targets=[label], probability="sigmoid")
            # Recipro-CAM's raw maps are sigmoid probabilities spanning ~1e-2 on this random model: min-max
            # scales the float32 round-off of differently composed batches (~1e-7) up to ~1e-5
            assert float((maps[image, label] - single[0]).abs().max()) < 1e-4, (method, image, label)


def test_faithfulness_uses_sigmoid_probabilities_per_positive_label():
    model = SigmoidHand()
    x = _images()
    multi_hot = torch.tensor([[1, 0, 0], [0, 1, 0]])
    scores = cc.faithfulness(model, x, "gradcam", "conv", targets=multi_hot, reduction="none")
    assert scores["average_drop"].shape == (2, 3)
    assert torch.isnan(scores["average_drop"][0, 1]) and torch.isnan(scores["average_drop"][1, 0])
    # image 0, label 0: map = one-hot at (0, 0) -> explanation image keeps x[0, :, 0, 0] = (4, 0) only
    # Y = sigmoid(z0) with z0 = mean(A_0) = 4/16 = 0.25; O = sigmoid(4/16) too (the pixel survives) -> AD = 0
    logit = 4.0 / 16
    y = 1 / (1 + math.exp(-logit))
    assert float(scores["average_drop"][0, 0]) == pytest.approx(max(0.0, y - y) / y, abs=1e-6)
    # image 1, label 1: map one-hot at (2, 1) keeps A_1 = 6 there: z1 = 6/16 + 0.5 on both -> AD 0, IC 0
    assert float(scores["average_drop"][1, 1]) == pytest.approx(0.0, abs=1e-6)
    assert float(scores["increase_in_confidence"][1, 1]) == 0.0
    # complexity = mean of the one-hot map = 1/16
    assert float(scores["complexity"][0, 0]) == pytest.approx(1 / 16, abs=1e-6)
    means = cc.faithfulness(model, x, "gradcam", "conv", targets=multi_hot)
    assert means["complexity"] == pytest.approx(np.nanmean(scores["complexity"].numpy()), abs=1e-9)


def test_bad_multi_hot_targets():
    model = SigmoidHand()
    with pytest.raises(ValueError, match="multi-hot"):
        cc.explain(model, _images(), "gradcam", "conv", targets=torch.tensor([[0, 2, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="no positive label"):
        cc.explain(model, _images(), "gradcam", "conv", targets=torch.zeros(2, 3, dtype=torch.long))
