"""Occlusion confirmation (cam_callbacks.engine.occlusion): hand-computed drops on a hand-set model, state untouched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cam_callbacks.engine.occlusion import occlusion_effect, shifted_region


class CornerReader(nn.Module):
    """Logits ``[0, w * mean of channel 0 over the top-left 2x2]``, with a dropout and a BatchNorm to check the modes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(4.0))
        self.norm = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not self.training, "occlusion must run in eval mode"
        value = self.drop(x)[:, 0, :2, :2].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(value), self.w * value], dim=1)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_drops_match_hand_computation_and_the_model_is_untouched():
    model = CornerReader().train()
    images = torch.zeros(3, 3, 8, 8)
    images[:, 0, :2, :2] = torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:2, :2] = True
    grads_before, rng = model.w.grad, torch.random.get_rng_state()
    result = occlusion_effect(model, images, torch.tensor([1, 1, 0]), region)
    assert model.training and model.w.requires_grad and model.w.grad is grads_before
    assert torch.equal(rng, torch.random.get_rng_state())
    for i, a in enumerate([1.0, 2.0, 0.5]):
        mean = a * 4 / 64  # channel 0's mean over the image fills the corner
        p_intact, p_hidden = sigmoid(4 * a), sigmoid(4 * mean)
        if i == 2:  # target 0: p0 = 1 - p1
            p_intact, p_hidden = 1 - p_intact, 1 - p_hidden
        assert float(result.drop[i]) == pytest.approx(p_intact - p_hidden, abs=1e-6)
        assert float(result.control[i]) == pytest.approx(0.0, abs=1e-7)  # the shifted region is away from the corner
    assert float(result.effect) == pytest.approx(float((result.drop - result.control).median()))


def test_per_image_regions_and_sigmoid():
    model = CornerReader().eval()
    images = torch.ones(2, 3, 8, 8)
    images[:, 0, :2, :2] = 3.0
    regions = torch.zeros(2, 8, 8, dtype=torch.bool)
    regions[0, :2, :2] = True  # only the first image's corner is hidden
    result = occlusion_effect(model, images, torch.tensor([1, 1]), regions, probability="sigmoid", batch_size=1)
    mean = (3.0 * 4 + 60) / 64
    assert float(result.drop[0]) == pytest.approx(sigmoid(12.0) - sigmoid(4 * mean), abs=1e-6)
    assert float(result.drop[1]) == 0.0


def test_shifted_region_keeps_shape_and_area():
    region = torch.zeros(6, 6, dtype=torch.bool)
    region[0, :3] = True
    shifted = shifted_region(region)
    assert int(shifted.sum()) == 3 and shifted[3, 3:].all()


def test_bad_arguments():
    model = CornerReader()
    with pytest.raises(ValueError, match="softmax"):
        occlusion_effect(model, torch.zeros(1, 3, 8, 8), torch.tensor([0]), torch.zeros(8, 8, dtype=torch.bool), probability="logit")
    with pytest.raises(ValueError, match="region"):
        occlusion_effect(model, torch.zeros(1, 3, 8, 8), torch.tensor([0]), torch.zeros(4, 4, dtype=torch.bool))


def test_a_bfloat16_model_gets_bfloat16_images():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(torch.bfloat16)
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2, :2] = True
    result = occlusion_effect(model, torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 0]), region)
    assert result.drop.dtype == torch.float64 and torch.isfinite(result.drop).all()
