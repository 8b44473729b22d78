"""Every bad argument of :func:`cc.explain` and :func:`cc.faithfulness`: one row each, the error type and what its message says.

Each message names the argument, shows the value and says what is valid; the fragments below check that.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cam_callbacks as cc


class Net(nn.Module):
    """A small classifier with dotted layer names: ``features.conv1``, ``features.conv2``, ``head``; 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential()
        self.features.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
        self.features.add_module("relu1", nn.ReLU())
        self.features.add_module("conv2", nn.Conv2d(4, 4, 3, padding=1))
        self.features.add_module("relu2", nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class VectorOut(Net):
    def forward(self, x):
        return super().forward(x)[:, 0]


def _meta_net() -> nn.Module:
    with torch.device("meta"):
        return Net()


def _images(n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, 8, 8)


# (id, changes to the call, error type, fragment of the message); the call is
# function(Net(), _images(), "gradcam", "features.conv2", **changes)
# fmt: off
BAD_INPUTS = [
    ("model not a module", {"model": lambda x: x}, TypeError, r"model must be a torch\.nn\.Module, got function"),
    ("images not a tensor", {"images": [[1.0]]}, TypeError, r"images must be a torch\.Tensor of shape \(N, C, H, W\), got list"),
    ("images 3-D", {"images": torch.randn(3, 8, 8)}, ValueError, r"images must have shape \(N, C, H, W\), got shape \(3, 8, 8\)"),
    ("images empty", {"images": torch.randn(0, 3, 8, 8)}, ValueError, r"images is empty \(N == 0\)"),
    ("images integer", {"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}, TypeError, r"images must be a floating tensor.*torch\.uint8"),
    ("images on meta", {"images": torch.empty(2, 3, 8, 8, device="meta")}, ValueError, r"images are on the meta device"),
    ("images all NaN", {"images": torch.full((2, 3, 8, 8), float("nan"))}, ValueError, r"images: all 2 images hold NaN or inf values"),
    ("method unknown", {"method": "gradcamm"}, ValueError, r"method='gradcamm' is not a known CAM method; did you mean one of \['gradcam', .*\]\? choose"),
    ("target_layer misspelt", {"target_layer": "feature.conv2"}, ValueError,
     r"target_layer='feature\.conv2' is not a module of Net\. Did you mean one of \[.*'features\.conv2'"),
    ("target_layer empty list", {"target_layer": []}, ValueError, r"target_layer is an empty list"),
    ("target_layer foreign module", {"target_layer": nn.Conv2d(3, 3, 1)}, ValueError, r"is not a submodule of the model \(Net\)"),
    ("targets out of range", {"targets": [0, 7]}, ValueError, r"targets\[1\]=7 is out of range: the model has 3 classes, valid class indices are 0\.\.2"),
    ("targets negative", {"targets": -1}, ValueError, r"targets\[0\]=-1 is out of range"),
    ("targets wrong length", {"targets": [0, 1, 2]}, ValueError, r"targets must have one class index per image: expected shape \(2,\) or \(2, 1\), got \(3,\)"),
    ("targets float", {"targets": torch.tensor([1.0, 2.0])}, TypeError, r"targets must hold integer class indices, got dtype torch\.float32"),
    ("targets bool", {"targets": True}, TypeError, r"targets must be None, an int or a sequence/tensor of class indices, got a bool"),
    ("targets a string", {"targets": "cat"}, TypeError, r"targets must be None, an int, a sequence of class indices or a tensor, got str 'cat'"),
    ("targets 3-D", {"targets": torch.zeros(2, 3, 1, dtype=torch.long)}, ValueError, r"expected shape \(2,\) or \(2, 1\), got \(2, 3, 1\)"),
    ("targets multi-hot not 0/1", {"targets": torch.tensor([[0, 2, 1], [1, 0, 0]])}, ValueError,
     r"2-D targets must be an \(2, num_classes\) multi-hot tensor \(0/1 or bool\), got shape \(2, 3\) with values other than 0 and 1"),
    ("targets multi-hot no positive", {"targets": torch.zeros(2, 3, dtype=torch.bool)}, ValueError, r"the multi-hot targets have no positive label"),
    ("targets multi-hot too wide", {"targets": torch.ones(2, 5, dtype=torch.bool)}, ValueError,
     r"targets has 5 columns \(a multi-hot \(N, num_classes\) tensor\) but the model returns 3 logits per image \(3 classes\)"),
    ("targets multi-hot too narrow", {"targets": torch.ones(2, 2, dtype=torch.bool)}, ValueError, r"targets has 2 columns .* \(3 classes\)"),
    ("targets float column", {"targets": torch.tensor([[1.0], [0.0]])}, ValueError, r"targets has 1 column .*targets\.squeeze\(1\)"),
    ("batch_size 0", {"batch_size": 0}, ValueError, r"batch_size must be a positive int, got 0"),
    ("batch_size str", {"batch_size": "4"}, ValueError, r"batch_size must be a positive int, got '4'"),
    ("keyword misspelt", {"smoth": "noise"}, TypeError, r"unexpected keyword argument 'smoth'; did you mean 'smooth'\? Valid options: \["),
    ("smooth unknown", {"smooth": "blur"}, ValueError, r"smooth='blur' is not valid; choose from \[None, 'noise', 'aug'\]"),
    ("smooth_samples 0", {"smooth": "noise", "smooth_samples": 0}, ValueError, r"smooth_samples must be a positive int, got 0"),
    ("smooth_sigma negative", {"smooth": "noise", "smooth_sigma": -1.0}, ValueError, (
        r"smooth_sigma must be a finite number >= 0 \(noise std relative to each image.s range\), got -1\.0"
    )),
    ("smooth_scales empty", {"smooth": "aug", "smooth_scales": ()}, ValueError, (
        r"smooth_scales must be a non-empty sequence of positive numbers \(e\.g\. \(0\.9, 1\.0, 1\.1\)\), got \(\)"
    )),
    ("seed not an int", {"smooth": "noise", "seed": "a"}, TypeError, r"seed must be an int, got str 'a'"),
    ("probability unknown", {"probability": "tanh"}, ValueError, r"probability='tanh' is not valid; choose from \['softmax', 'sigmoid'\]"),
    ("perturbation_batch 0", {"method": "scorecam", "perturbation_batch": 0}, ValueError, r"perturbation_batch must be None or a positive int, got 0"),
    ("method option misspelt", {"method": "reciprocam", "method_options": {"gausian": True}}, ValueError,
     r"method 'reciprocam' has no option\(s\) \['gausian'\]; its options are \['gaussian'\]"),
    ("tail not callable", {"method": "reciprocam", "tail": 3}, TypeError, r"tail must be a callable activations -> logits, got int"),
    ("reshape unknown", {"reshape": "vitt"}, ValueError, r"reshape='vitt' is not valid; choose from \[None, 'vit'"),
    ("model on meta", {"model": _meta_net()}, ValueError,
     r"model's parameters are on the meta device \('features\.conv1\.weight' among them.*materialise the weights first"),
    ("model returns 1-D", {"model": VectorOut(), "target_layer": "features.conv2"}, ValueError,
     r"the model must return logits of shape \(N, num_classes\) = \(2, C\); it returned \(2,\)"),
]
# fmt: on


def _call(function, changes):
    arguments = {"model": Net(), "images": _images(), "method": "gradcam", "target_layer": "features.conv2"}
    arguments.update(changes)
    model, images, method, target_layer = (arguments.pop(key) for key in ("model", "images", "method", "target_layer"))
    return function(model, images, method, target_layer, **arguments)


@pytest.mark.parametrize("function", [cc.explain, cc.faithfulness], ids=["explain", "faithfulness"])
@pytest.mark.parametrize("changes, error, fragment", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_refused_with_a_clear_message(function, changes, error, fragment):
    with pytest.raises(error, match=fragment):
        _call(function, changes)


@pytest.mark.parametrize(
    "reduction, fragment",
    [("sum", r"reduction='sum' is not valid; choose from \['mean', 'none'\]"), (None, r"reduction=None is not valid")],
)
def test_faithfulness_bad_reduction(reduction, fragment):
    with pytest.raises(ValueError, match=fragment):
        cc.faithfulness(Net(), _images(), "gradcam", "features.conv2", reduction=reduction)


def test_the_calls_of_the_table_work_with_the_arguments_fixed():
    """The baseline of the table is a valid call: each row fails because of its one change."""
    assert _call(cc.explain, {}).shape == (2, 8, 8)
    assert set(_call(cc.faithfulness, {})) == {"average_drop", "increase_in_confidence", "coherency", "complexity", "adcc"}
    assert _call(cc.explain, {"targets": torch.tensor([[2], [0]])}).shape == (2, 8, 8)  # an integer column: class indices


def test_a_materialised_meta_model_works():
    """The fix the meta-device message suggests works: ``to_empty`` then load real weights."""
    net = _meta_net().to_empty(device="cpu")
    net.load_state_dict(Net().state_dict())
    expected = cc.explain(Net(), _images(), "gradcam", "features.conv2")
    assert torch.equal(cc.explain(net, _images(), "gradcam", "features.conv2"), expected)
