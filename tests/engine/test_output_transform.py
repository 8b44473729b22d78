"""``output_transform``: models that return a dict, a tuple or an object holding their logits.

Each wrapped network has the weights of :class:`Plain` and returns the same logits inside its output; its maps and
scores must equal those of :class:`Plain` (an independent computation on a network that returns the logits tensor),
for every kind of pass: the main pass, the input gradients, the perturbation scorers, the tails and the smoothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.capture.tail import derive_tail
from cam_callbacks.engine.options import ExplainOptions
from cam_callbacks.utils.outputs import describe_output, logits_of

LAYER = "features.conv2"


class Plain(nn.Module):
    """A tiny CNN returning ``(N, 3)`` logits; ``features.conv2`` is the target layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential()
        self.features.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
        self.features.add_module("relu1", nn.ReLU())
        self.features.add_module("conv2", nn.Conv2d(4, 6, 3, padding=1))
        self.features.add_module("relu2", nn.ReLU())
        self.head = nn.Linear(6, 3)

    def parts(self, x):
        maps = self.features(x)
        return self.head(maps.mean(dim=(2, 3))), maps

    def forward(self, x):
        return self.parts(x)[0]


class DictOut(Plain):
    def forward(self, x):
        logits, maps = self.parts(x)
        return {"logits": logits, "features": maps}


class TupleOut(Plain):
    def forward(self, x):
        logits, maps = self.parts(x)
        return logits, maps.amax(dim=(2, 3))  # a second (N, 6) tensor


@dataclass
class ClassifierOutput:
    """Like Hugging Face's ``ImageClassifierOutput``: the logits as an attribute."""

    logits: torch.Tensor
    hidden_states: Optional[torch.Tensor] = None


class ObjectOut(Plain):
    def forward(self, x):
        logits, maps = self.parts(x)
        return ClassifierOutput(logits=logits, hidden_states=maps)


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 10, 10, generator=torch.Generator().manual_seed(1))


WRAPPED = [
    pytest.param(DictOut, "logits", id="dict"),
    pytest.param(TupleOut, 0, id="tuple"),
    pytest.param(ObjectOut, "logits", id="object"),
    pytest.param(DictOut, lambda out: out["logits"] * 1.0, id="callable"),
]
METHODS = ["gradcam", "layercam", "scorecam", "ablationcam", "reciprocam", "saliency", "guidedbackprop"]


def _explain(model, method, **options):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="derive_tail: no automatic tail")  # the dataclass output: fx cannot trace it
        return cc.explain(model.eval(), _images(), method, LAYER, **options)


@pytest.mark.parametrize("wrapped, transform", WRAPPED)
@pytest.mark.parametrize("method", METHODS)
def test_maps_equal_those_of_the_plain_network(wrapped, transform, method):
    want = _explain(Plain(), method)
    got = _explain(wrapped(), method, output_transform=transform)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("wrapped, transform", WRAPPED)
def test_smoothed_maps_and_faithfulness_equal_those_of_the_plain_network(wrapped, transform):
    smooth = dict(smooth="noise", smooth_samples=3)
    torch.testing.assert_close(_explain(wrapped(), "gradcam", output_transform=transform, **smooth), _explain(Plain(), "gradcam", **smooth), atol=1e-6, rtol=0)
    for method in ("gradcam", "scorecam"):
        want = cc.faithfulness(Plain().eval(), _images(), method, LAYER, reduction="none")
        got = cc.faithfulness(wrapped().eval(), _images(), method, LAYER, reduction="none", output_transform=transform)
        assert set(got) == set(want)
        for metric in want:
            torch.testing.assert_close(got[metric], want[metric], atol=1e-6, rtol=0)


def test_auto_layer_and_multilabel_targets_with_a_dict_output():
    want = cc.explain(Plain().eval(), _images(), "gradcam", targets=torch.tensor([[1, 0, 1]] * 3))
    got = cc.explain(DictOut().eval(), _images(), "gradcam", targets=torch.tensor([[1, 0, 1]] * 3), output_transform="logits")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_the_fx_tail_takes_the_logits_from_the_traced_output():
    x, reference = _images(), Plain().eval()  # tails refer to their models weakly: keep them alive
    plain = derive_tail(reference, LAYER, x)
    for model, transform in ((DictOut(), "logits"), (TupleOut(), 0)):
        tail = derive_tail(model.eval(), LAYER, x, output_transform=transform)
        assert tail.mode == "fx"
        activations = torch.randn(6, 6, 10, 10, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(tail(activations), plain(activations), atol=1e-6, rtol=0)


class Untraceable(Plain):
    """Data-dependent control flow: torch.fx cannot trace it, so the tail re-runs the model (mode ``"rerun"``)."""

    def forward(self, x):
        logits, maps = self.parts(x)
        return {"logits": logits if bool(maps.sum() > -1e30) else -logits, "features": maps}


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_the_rerun_tail_takes_the_logits_from_the_output(method):
    with pytest.warns(UserWarning, match="no automatic tail"):
        assert derive_tail(Untraceable().eval(), LAYER, _images(), output_transform="logits").mode == "rerun"
    torch.testing.assert_close(_explain(Untraceable(), method, output_transform="logits"), _explain(Plain(), method), atol=1e-6, rtol=0)


def test_the_model_is_left_as_found():
    model = DictOut().eval()
    forward = model.forward
    cc.explain(model, _images(), "reciprocam", LAYER, output_transform="logits")
    assert model.forward == forward and "forward" not in vars(model)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert isinstance(model(_images()), dict)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, transform, error, fragment",
    [
        (DictOut, "logit", ValueError, r"output_transform='logit': no such key in the model's output, a dict with keys \['logits', 'features'\] "
         r"\(shapes \(3, 3\), \(3, 6, 10, 10\)\); pass output_transform='logits'"),
        (ObjectOut, "scores", ValueError, r"output_transform='scores': no such attribute .*ClassifierOutput with attributes \['logits', 'hidden_states'\].*"
         r"pass output_transform='logits'"),
        (TupleOut, 2, ValueError, r"output_transform=2: no such index .*a tuple of 2 elements of shapes \(3, 3\), \(3, 6\); pass output_transform=0"),
        (DictOut, 0, ValueError, r"output_transform=0: no such index \(it is not a tuple or list\)"),
        (DictOut, "features", ValueError, r"output_transform='features' gives a tensor of shape \(3, 6, 10, 10\) from the model's output .* "
         r"not \(N, num_classes\) = \(3, C\) logits; pass output_transform='logits'"),
        (DictOut, lambda out: list(out), ValueError, r"output_transform=<function .*> gives a list of 2 elements .*not \(N, num_classes\)"),
        (Plain, 1.5, TypeError, r"output_transform must be None \(the model returns the logits tensor\), a key or attribute name .* got float 1\.5"),
        (Plain, True, TypeError, r"output_transform must be None .* got bool True"),
    ],
    ids=["missing key", "missing attribute", "index out of range", "index into a dict", "not logits", "callable gives a list",
         "float", "bool"],
)  # fmt: skip
@pytest.mark.parametrize("function", [cc.explain, cc.faithfulness], ids=["explain", "faithfulness"])
def test_a_bad_output_transform_is_refused_with_what_the_model_returned(function, model, transform, error, fragment):
    with pytest.raises(error, match=fragment):
        function(model().eval(), _images(), "gradcam", LAYER, output_transform=transform)


@pytest.mark.parametrize(
    "model, fragment",
    [
        (DictOut, r"the model returned a dict with keys \['logits', 'features'\] \(shapes \(3, 3\), \(3, 6, 10, 10\)\) instead of an "
         r"\(N, num_classes\) logits tensor; pass output_transform='logits'"),
        (TupleOut, r"the model returned a tuple of 2 elements of shapes \(3, 3\), \(3, 6\) instead of an \(N, num_classes\) logits "
         r"tensor; pass output_transform=0"),
        (ObjectOut, r"the model returned a ClassifierOutput with attributes \['logits', 'hidden_states'\] .*; pass output_transform='logits'"),
    ],
    ids=["dict", "tuple", "object"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["gradcam", "saliency", "scorecam"])
def test_without_output_transform_the_error_suggests_it(model, fragment, method):
    with pytest.raises(ValueError, match=fragment):
        cc.explain(model().eval(), _images(), method, LAYER)


def test_the_suggestion_skips_tensors_that_are_not_logits():
    output = {"features": torch.zeros(2, 6, 4, 4), "scores": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"pass output_transform='scores'"):
        logits_of(output, None, n=2)
    assert describe_output(torch.zeros(2, 3)) == "a tensor of shape (2, 3)"
    with pytest.raises(ValueError, match=r"pass output_transform= \(None"):
        logits_of({"features": torch.zeros(2, 6, 4, 4)}, None, n=2)


def test_options_validate_the_type():
    assert ExplainOptions(output_transform="logits").output_transform == "logits"
    with pytest.raises(TypeError, match="output_transform must be"):
        ExplainOptions(output_transform=[0])  # type: ignore[arg-type]


def test_hugging_face_classifier_end_to_end_with_output_transform():
    """A transformers ViTForImageClassification (random weights, small config), unwrapped: "auto" finds its layer and
    layout, output_transform="logits" reads its ImageClassifierOutput; the maps equal those of a wrapper returning logits."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = ViTForImageClassification(config).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(pixel_values=x).logits

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="pass output_transform='logits'"):
        cc.explain(model, x, "gradcam", "auto")
    for method in ("gradcam", "layercam"):
        direct = cc.explain(model, x, method, "auto", output_transform="logits")
        wrapped = cc.explain(Wrapper(model), x, method, "auto")
        assert torch.allclose(direct, wrapped, atol=1e-6), method
    scores = cc.faithfulness(model, x, "gradcam", "auto", output_transform="logits")
    assert 0.0 <= scores["adcc"] <= 1.0


# --- names that resolve to something that is not a part of the output ------------------------------------------------


@pytest.mark.parametrize(
    "transform, member",
    [("logit", "the tensor method Tensor.logit"), ("T", "the tensor attribute Tensor.T"), ("data", "the tensor attribute Tensor.data")],
)
def test_a_name_on_a_tensor_output_is_refused_with_did_you_mean_none(transform, member):
    """Before: output_transform='logit' (a typo of 'logits') on a model returning its logits resolved Tensor.logit, and
    'T' silently explained the transposed logits of a square batch."""
    model = Plain().eval()
    x = torch.randn(3, 3, 10, 10)
    message = (
        f"output_transform='{transform}': the model returns a tensor of shape (3, 3), which is used as the logits as it is; "
        f"did you mean output_transform=None? ('{transform}' would be {member}, not a part of the output"
    )
    with pytest.raises(ValueError) as refused:
        cc.explain(model, x, "gradcam", LAYER, output_transform=transform)
    assert str(refused.value).startswith(message), str(refused.value)
    assert cc.explain(model, x, "gradcam", LAYER, output_transform=None).shape == (3, 10, 10)


def test_a_method_of_an_output_object_is_not_a_part_of_it():
    @dataclass
    class WithMethod:
        logits: torch.Tensor

        def to_tuple(self):
            return (self.logits,)

    message = r"output_transform='to_tuple': no such data attribute \('to_tuple' is a method of WithMethod\).*pass output_transform='logits'"
    with pytest.raises(ValueError, match=message):
        logits_of(WithMethod(torch.zeros(2, 3)), "to_tuple", n=2)


def test_a_misspelt_key_gets_a_did_you_mean():
    output = {"logits": torch.zeros(2, 3), "features": torch.zeros(2, 5)}
    with pytest.raises(ValueError, match=r"output_transform='featurs': no such key .*; pass output_transform='logits' \(did you mean 'features'\?\)"):
        logits_of(output, "featurs", n=2)
