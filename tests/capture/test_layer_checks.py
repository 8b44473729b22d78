"""A target layer whose output is a 1x1 map (one value per channel) is refused where the output is captured, so
:func:`cam_callbacks.explain` and the callback fail with the same message instead of returning meaningless maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.capture.hooks import LayerCapture, LayerOutputError, OneByOneMapError
from cam_callbacks.capture.layers import resolve_target_layer, spatial_layer_hint

ONE_BY_ONE = r"target_layer='{}' outputs \(N, C, 1, 1\) = \(2, 4, 1, 1\): a 1x1 map cannot localise anything\. Choose an earlier layer"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


class _StridedToOnePixel(nn.Module):
    """Convolutions that bring an 8x8 image down to 1x1 (no pooling layer): 'auto' must skip the 1x1 output too."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # 4x4
        self.late = nn.Conv2d(4, 4, 4)  # 1x1
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.relu(self.late(torch.relu(self.early(x)))), 1))


@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam", "scorecam"])
def test_explain_refuses_a_1x1_target_layer(method):
    with pytest.raises(OneByOneMapError, match=ONE_BY_ONE.format("2") + r".*or target_layer='auto'"):
        cc.explain(_net(), torch.randn(2, 3, 8, 8), method, target_layer="2")


def test_explain_refuses_a_1x1_convolution_output_and_auto_skips_it():
    model, images = _StridedToOnePixel().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=ONE_BY_ONE.format("late")):
        cc.explain(model, images, "gradcam", target_layer="late")
    with pytest.raises(ValueError, match=ONE_BY_ONE.format("late")):
        cc.explain(model, images, "gradcam", target_layer=["early", "late"])  # fused: every layer is checked
    assert cc.explain(model, images, "gradcam", target_layer="auto").shape == (2, 8, 8)  # 'auto' picks 'early'
    assert resolve_target_layer(model, "auto", images[:1])[0] == "early"


def test_a_map_of_one_row_is_not_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, (8, 1)), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    assert cc.explain(model, torch.randn(2, 3, 8, 6), "gradcam", target_layer="1").shape == (2, 8, 6)  # a 1x6 map


def test_one_by_one_error_is_a_layer_output_error_and_the_hook_is_removed():
    net = _net()
    with pytest.raises(LayerOutputError) as raised, LayerCapture(net[2], "2"):
        net(torch.randn(2, 3, 8, 8))
    assert isinstance(raised.value, OneByOneMapError) and isinstance(raised.value, ValueError)
    assert not net[2]._forward_hooks


def test_spatial_layer_hint_names_the_last_layer_larger_than_1x1_and_leaves_the_model_as_found():
    net = _net().train()
    hint = spatial_layer_hint(net, torch.randn(1, 3, 8, 8))
    assert hint == "For this model and input: e.g. target_layer='1', whose output is (1, 4, 8, 8)."
    assert net.training and all(not m._forward_hooks for m in net.modules())
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    assert spatial_layer_hint(flat, torch.randn(1, 3, 8, 8)) == ""  # none: no hint
    assert spatial_layer_hint(_net(), torch.randn(1, 5, 8, 8)) == ""  # the forward pass fails: no hint, no error
