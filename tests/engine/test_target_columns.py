"""``targets`` as a column ``(N, 1)`` and multi-hot ``targets`` whose width is not the model's number of classes.

The hand model's Grad-CAM for class ``c`` is channel ``c`` of the image, min-max normalised: the
feature map is the image (a 1x1 identity convolution), the logits are the channel means
(``fc`` the identity), so ``d logit_c / d A_k`` is ``1/(h w)`` for ``k == c`` and 0 otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cam_callbacks as cc


class ChannelMeans(nn.Module):
    """Logits ``W @ mean(x)`` per image, through an identity 1x1 convolution ``conv`` (the target layer)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.fc = nn.Linear(3, weight.shape[0], bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.fc.weight.copy_(weight)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def _images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(3, 3, 5, 6) + 0.1  # positive: ReLU keeps every pixel


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def test_an_integer_column_is_class_indices():
    x = _images()
    model = ChannelMeans(torch.eye(3))
    maps = cc.explain(model, x, "gradcam", "conv", targets=torch.tensor([[2], [0], [1]]))
    assert maps.shape == (3, 5, 6)  # before: read as multi-hot, (3, 1, 5, 6) maps of class 0
    for i, c in enumerate([2, 0, 1]):
        np.testing.assert_allclose(maps[i].numpy(), _minmax(x[i, c].numpy().astype(np.float64)), atol=1e-6)
    scores = cc.faithfulness(model, x, "gradcam", "conv", targets=np.array([[2], [0], [1]]), reduction="none")
    assert scores["adcc"].shape == (3,)


def test_a_bool_column_is_multi_hot_for_a_one_output_model():
    x = _images()
    model = ChannelMeans(torch.tensor([[1.0, 0.0, 0.0]]))  # one logit: the mean of channel 0
    maps = cc.explain(model, x, "gradcam", "conv", targets=torch.tensor([[True], [False], [True]]))
    assert maps.shape == (3, 1, 5, 6)
    for i in (0, 2):
        np.testing.assert_allclose(maps[i, 0].numpy(), _minmax(x[i, 0].numpy().astype(np.float64)), atol=1e-6)
    assert (maps[1] == 0).all()  # negative label


@pytest.mark.parametrize("column", [torch.tensor([[1.0], [0.0], [1.0]]), torch.tensor([[True], [False], [True]])])
def test_a_float_or_bool_column_for_a_many_class_model_raises_and_says_to_squeeze(column):
    with pytest.raises(ValueError, match=r"targets has 1 column .* returns 3 logits per image \(3 classes\).*targets\.squeeze\(1\)"):
        cc.explain(ChannelMeans(torch.eye(3)), _images(), "gradcam", "conv", targets=column)


def test_a_float_column_of_indices_says_to_squeeze():
    with pytest.raises(ValueError, match=r"got shape \(3, 1\) with values other than 0 and 1; .*targets\.squeeze\(1\)"):
        cc.explain(ChannelMeans(torch.eye(3)), _images(), "gradcam", "conv", targets=torch.tensor([[2.0], [0.0], [1.0]]))


def test_an_integer_column_of_ones_for_a_one_output_model_is_out_of_range_with_a_hint():
    with pytest.raises(ValueError, match=r"targets\[0\]=1 is out of range: the model has 1 classes.*bool \(N, 1\) targets"):
        cc.explain(ChannelMeans(torch.tensor([[1.0, 0.0, 0.0]])), _images(), "gradcam", "conv", targets=torch.tensor([[1], [0], [1]]))


def test_an_integer_column_of_the_wrong_length_shows_its_shape():
    with pytest.raises(ValueError, match=r"expected shape \(3,\) or \(3, 1\), got \(2, 1\)"):
        cc.explain(ChannelMeans(torch.eye(3)), _images(), "gradcam", "conv", targets=torch.tensor([[2], [0]]))


class CountingForwards(ChannelMeans):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize(
    "method, extra",
    [("gradcam", {}), ("saliency", {}), ("scorecam", {}), ("gradcam", {"smooth": "noise", "smooth_samples": 2})],
)
def test_multi_hot_width_must_be_the_models_classes(width, method, extra):
    # width 2: label 1 exists in the 3-class model, so nothing complained before; width 4: label 3 does not
    multi_hot = torch.zeros(3, width, dtype=torch.bool)
    multi_hot[:, width - 1] = True
    model = CountingForwards(torch.eye(3))
    pattern = rf"targets has {width} columns \(a multi-hot \(N, num_classes\) tensor\) but the model returns 3 logits per image"
    # raised at the first forward pass (saliency with a label beyond the model: one more pass, of 1 image, to tell why)
    forwards = 2 if method == "saliency" and width == 4 else 1
    for function in (cc.explain, cc.faithfulness):
        CountingForwards.calls = 0
        with pytest.raises(ValueError, match=pattern):
            function(model, _images(), method, "conv", targets=multi_hot, batch_size=1, **extra)
        assert CountingForwards.calls == forwards


def test_multi_hot_of_the_right_width_is_unchanged():
    x = _images()
    multi_hot = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    maps = cc.explain(ChannelMeans(torch.eye(3)), x, "gradcam", "conv", targets=multi_hot)
    for i, c in multi_hot.nonzero().tolist():
        np.testing.assert_allclose(maps[i, c].numpy(), _minmax(x[i, c].numpy().astype(np.float64)), atol=1e-6)
