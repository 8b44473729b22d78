"""ExplainOptions validation, keyword checking of explain(), the engine's caches and the method registry round trip."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.engine.caches import cache_info, clear_caches
from cam_callbacks.engine.options import SMOOTH_CHOICES
from cam_callbacks.methods.registry import get_method, unregister_method


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"batch_size": 0}, ValueError, r"batch_size must be a positive int, got 0"),
        ({"batch_size": 2.0}, ValueError, r"batch_size must be a positive int, got 2\.0"),
        ({"batch_size": True}, ValueError, r"batch_size must be a positive int, got True"),
        ({"smooth": "blur"}, ValueError, r"smooth='blur' is not valid; choose from \[None, 'noise', 'aug'\]"),
        ({"smooth": "noise", "smooth_samples": 0}, ValueError, r"smooth_samples must be a positive int, got 0"),
        ({"smooth_samples": "8"}, ValueError, r"smooth_samples must be a positive int, got '8'"),
        ({"smooth_sigma": -0.1}, ValueError, r"smooth_sigma must be a finite number >= 0 .*, got -0\.1"),
        ({"smooth_scales": ()}, ValueError, r"smooth_scales must be a non-empty sequence of positive numbers \(e\.g\. \(0\.9, 1\.0, 1\.1\)\), got \(\)"),
        ({"smooth_scales": (1.0, 0.0)}, ValueError, r"smooth_scales must be .*positive numbers .*, got \(1\.0, 0\.0\)"),
        ({"smooth_scales": (1.0, -2.0)}, ValueError, r"smooth_scales"),
        ({"perturbation_batch": 0}, ValueError, r"perturbation_batch must be None or a positive int, got 0"),
        ({"perturbation_batch": 1.5}, ValueError, r"perturbation_batch must be None or a positive int, got 1\.5"),
        ({"probability": "softplus"}, ValueError, r"probability='softplus' is not valid; choose from \['softmax', 'sigmoid'\]"),
        ({"tail": 3}, TypeError, r"tail must be a callable activations -> logits, got int"),
        ({"reshape": "swin"}, ValueError, r"reshape='swin' is not valid; choose from \[None, 'vit', TokenGrid"),
        ({"reshape": 1}, ValueError, r"reshape=1 is not valid"),
    ],
)
def test_explain_options_rejects_bad_values_naming_the_argument(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        cc.ExplainOptions(**kwargs)


def test_unknown_method_in_method_options_lists_the_methods():
    with pytest.raises(ValueError) as info:
        cc.ExplainOptions(method_options={"gradcamm": {}})
    message = str(info.value)
    assert "method='gradcamm' is not a known CAM method" in message
    for name in ("gradcam", "reciprocam", "layercam"):
        assert repr(name) in message


def test_unknown_option_of_a_method_lists_its_options():
    with pytest.raises(ValueError, match=r"method 'reciprocam' has no option\(s\) \['gausian'\]; its options are \['gaussian'\]"):
        cc.ExplainOptions(method_options={"reciprocam": {"gausian": True}})
    with pytest.raises(ValueError, match=r"method 'gradcam' has no option\(s\) \['x'\]; its options are none"):
        cc.ExplainOptions(method_options={"gradcam": {"x": 1}})
    with pytest.raises(ValueError, match=r"option 'gaussian' must be True or False, got 1"):
        cc.ExplainOptions(method_options={"reciprocam": {"gaussian": 1}})


def test_valid_options_are_normalised_and_frozen():
    options = cc.ExplainOptions(reshape="vit", smooth="aug", smooth_scales=[1, 2], method_options={"reciprocam": {"gaussian": True}})
    assert isinstance(options.reshape, cc.TokenGrid) and options.reshape.prefix_tokens == 1
    assert options.token_grid is options.reshape
    assert options.smooth_scales == (1.0, 2.0) and all(isinstance(s, float) for s in options.smooth_scales)
    assert options.options_for(get_method("reciprocam")) == {"gaussian": True}
    assert options.options_for(get_method("gradcam")) == {}
    grid = cc.TokenGrid(prefix_tokens=2, height=3, width=4)
    assert cc.ExplainOptions(reshape=grid).reshape is grid
    assert cc.ExplainOptions().token_grid is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.smooth = None  # type: ignore[misc]
    assert SMOOTH_CHOICES == (None, "noise", "aug")


def test_explain_misspelt_keyword_suggests_the_right_one_and_lists_valid_options():
    model, x = _tiny_cnn(), torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError) as info:
        cc.explain(model, x, sed=1)
    message = str(info.value)
    assert "unexpected keyword argument 'sed'" in message
    assert "did you mean 'seed'?" in message
    listed = re.search(r"Valid options: (\[.*\])", message)
    assert listed is not None
    for name in ("seed", "smooth", "smooth_samples", "method_options", "reshape", "tail", "perturbation_batch", "probability"):
        assert repr(name) in listed.group(1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'zzz'(?!.*did you mean)"):
        cc.faithfulness(model, x, zzz=1)


def test_cache_info_and_clear_caches_per_model():
    a, b = _tiny_cnn(0), _tiny_cnn(1)
    x = torch.randn(2, 3, 8, 8)
    for model in (a, b):
        maps = cc.explain(model, x, method="reciprocam", target_layer="2")
        assert tuple(maps.shape) == (2, 8, 8)
    info_a, info_b = cache_info(a), cache_info(b)
    assert info_a.tail_entries > 0 and info_a.cost_entries > 0
    assert info_b.tail_entries > 0 and info_b.cost_entries > 0
    total = cache_info()
    assert total.tail_models >= 2 and total.cost_models >= 2
    assert total.tail_entries >= info_a.tail_entries + info_b.tail_entries

    clear_caches(a)
    cleared = cache_info(a)
    assert cleared.tail_entries == 0 and cleared.cost_entries == 0
    kept = cache_info(b)  # the other model keeps its entries (the model counts are over all models)
    assert (kept.tail_entries, kept.cost_entries) == (info_b.tail_entries, info_b.cost_entries)
    after = cache_info()
    assert after.tail_models == total.tail_models - 1 and after.cost_models == total.cost_models - 1

    clear_caches()
    assert tuple(cache_info()) == (0, 0, 0, 0)
    assert tuple(cache_info(b)) == (0, 0, 0, 0)
    cc.explain(b, x, method="reciprocam", target_layer="2")  # filled again after a clear
    assert cache_info(b).tail_entries > 0 and cache_info(b).cost_entries > 0


def test_register_explain_unregister_round_trip():
    name = "test_options_channel_max"

    @cc.register_method(name, needs=("activations",), summary="max over channels")
    def channel_max(activations):
        return activations.amax(dim=1)

    try:
        assert name in cc.available_methods()
        assert cc.available_methods()[-1] == name
        model, x = _tiny_cnn(), torch.randn(2, 3, 8, 8)
        maps = cc.explain(model, x, method=name, target_layer="1")
        # reference: the ReLU output's channel max, min-max normalised per image (8x8 already, no upsampling)
        with torch.no_grad():
            raw = model[:2](x).amax(dim=1)
        low, high = raw.flatten(1).min(1).values.view(-1, 1, 1), raw.flatten(1).max(1).values.view(-1, 1, 1)
        assert torch.allclose(maps, (raw - low) / (high - low), atol=1e-5)
    finally:
        removed = unregister_method(name)
    assert removed.fn is channel_max and removed.name == name and removed.needs == ("activations",)
    assert name not in cc.available_methods()
    with pytest.raises(ValueError, match=r"method='test_options_channel_max' is not a known CAM method; choose from \['cam', 'gradcam'"):
        unregister_method(name)
    with pytest.raises(ValueError, match="is not a known CAM method"):
        cc.explain(_tiny_cnn(), torch.randn(1, 3, 8, 8), method=name, target_layer="1")
