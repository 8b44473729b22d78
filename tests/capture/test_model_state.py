"""explain / faithfulness leave the model, autograd and the RNG exactly as they found them."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

import cam_callbacks as cc
from cam_callbacks.capture.layers import resolve_target_layer
from cam_callbacks.methods.registry import unregister_method

ALL_METHODS = ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]
HOOK_DICTS = [
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
]
GLOBAL_HOOK_DICTS = [
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
]


class StatefulNet(nn.Module):
    """BatchNorm + Dropout, a GAP + (dropout) + linear head, so every method including CAM applies to 'block'."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout2d(0.3))
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.block(self.stem(x))), 1)))


def make_model() -> nn.Module:
    """A model in train mode with non-trivial BN statistics, mixed mode flags, a frozen parameter and set grads."""
    torch.manual_seed(0)
    model = StatefulNet()
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 16, 16) * 2 + 0.5)  # running stats away from (0, 1), num_batches_tracked = 1
    model.train()
    model.block[1].eval()  # a frozen BatchNorm inside a training model
    model.stem[0].bias.requires_grad_(False)  # a frozen parameter
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)  # as if mid gradient accumulation
    model.block[0].weight.grad = torch.arange(model.block[0].weight.numel(), dtype=torch.float32).view_as(model.block[0].weight)
    return model


def images(n=3, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def snapshot(model: nn.Module) -> dict:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grad_objects": {name: p.grad for name, p in model.named_parameters()},
        "grad_values": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": {(name, d): dict(getattr(m, d)) for name, m in model.named_modules() for d in HOOK_DICTS},
        "global_hooks": {d: dict(getattr(module_globals, d)) for d in GLOBAL_HOOK_DICTS},
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "rng": torch.get_rng_state(),
        "np_rng": np.random.get_state()[1].copy(),
        "py_rng": random.getstate(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():  # parameters and buffers bit-identical (incl. num_batches_tracked)
        assert torch.equal(after["state"][key], value), key
    for name, grad in before["grad_objects"].items():
        assert after["grad_objects"][name] is grad, name  # same object (None stays None)
        if grad is not None:
            assert torch.equal(after["grad_values"][name], before["grad_values"][name]), name
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert after["grad_enabled"] == before["grad_enabled"]
    assert after["inference_mode"] == before["inference_mode"]
    assert torch.equal(after["rng"], before["rng"])
    assert np.array_equal(after["np_rng"], before["np_rng"]) and after["py_rng"] == before["py_rng"]


def test_fixture_is_what_the_tests_assume():
    model = make_model()
    assert model.training and model.dropout.training and not model.block[1].training
    assert int(model.stem[1].num_batches_tracked) == 1 and float(model.stem[1].running_mean.abs().max()) > 0.01
    assert not model.stem[0].bias.requires_grad and model.stem[0].weight.grad is None
    # in train mode, two forwards differ (dropout) and update BN statistics: explain must not do this
    x = images()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def eval_reference_maps(model, x, method, **kwargs):
    """The same call on an eval-mode deep copy (what explain must compute for a model in train mode)."""
    return cc.explain(copy.deepcopy(model).eval(), x, method=method, target_layer="block", **kwargs)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_explain_leaves_model_as_found(method):
    model = make_model()
    user_calls = []
    user_hook = model.block.register_forward_hook(lambda m, i, o: user_calls.append(o.shape))
    x = images()
    want = eval_reference_maps(model, x, method)
    before = snapshot(model)
    maps = cc.explain(model, x, method=method, target_layer="block")
    assert_unchanged(model, before)
    assert len(model.block._forward_hooks) == 1 and user_calls  # the user's hook survives and was called
    user_hook.remove()
    assert maps.dtype == torch.float32 and maps.shape == (3, 16, 16)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 and float(maps.max()) == 1.0
    # eval mode inside (dropout off, BN running stats): the same maps as on an eval copy, every time
    torch.testing.assert_close(maps, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(cc.explain(model, x, method=method, target_layer="block"), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_faithfulness_leaves_model_as_found(method):
    model = make_model()
    x = images()
    want = cc.faithfulness(copy.deepcopy(model).eval(), x, method=method, target_layer="block", reduction="none")
    before = snapshot(model)
    got = cc.faithfulness(model, x, method=method, target_layer="block", reduction="none")
    assert_unchanged(model, before)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0)


def test_auto_layer_leaves_model_as_found():
    model = make_model()
    before = snapshot(model)
    name, _ = resolve_target_layer(model, "auto", images(1))
    assert name == "block"
    cc.explain(model, images(), method="gradcampp", target_layer="auto")
    assert_unchanged(model, before)


@pytest.mark.parametrize("grad_context", ["enabled", "no_grad"])
def test_exception_inside_method_restores_everything(grad_context):
    name = "test_raising_method"
    try:

        @cc.register_method(name, needs=("activations", "gradients"))
        def raising(activations, gradients):
            raise RuntimeError("boom inside the method")

        model = make_model()
        before = snapshot(model)
        with torch.no_grad() if grad_context == "no_grad" else torch.enable_grad():
            inner = snapshot(model)
            with pytest.raises(RuntimeError, match="boom inside the method"):
                cc.explain(model, images(), method=name, target_layer="block")
            assert torch.is_grad_enabled() == inner["grad_enabled"]
            with pytest.raises(RuntimeError, match="boom inside the method"):
                cc.faithfulness(model, images(), method=name, target_layer="block")
            assert_unchanged(model, inner)
        assert_unchanged(model, before)
    finally:
        if name in cc.available_methods():
            unregister_method(name)
    assert name not in cc.available_methods()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"target_layer": "fc"}, ValueError),  # 2-D output: raised by the capture hook during the forward pass
        ({"target_layer": "block", "targets": 9}, ValueError),  # raised after the forward pass
        ({"target_layer": "block", "method": "cam", "targets": 0}, None),  # control: no error
    ],
)
def test_errors_raised_mid_computation_restore_everything(kwargs, error):
    model = make_model()
    before = snapshot(model)
    kwargs = dict({"method": "gradcam"}, **kwargs)
    if error is None:
        cc.explain(model, images(), **kwargs)
    else:
        with pytest.raises(error):
            cc.explain(model, images(), **kwargs)
    assert_unchanged(model, before)


def test_no_grad_and_inference_mode_give_the_same_maps():
    model = make_model()
    x = images()
    want = {m: cc.explain(model, x, method=m, target_layer="block") for m in ALL_METHODS}
    before = snapshot(model)
    with torch.no_grad():
        for m in ALL_METHODS:
            torch.testing.assert_close(cc.explain(model, x, method=m, target_layer="block"), want[m], atol=1e-6, rtol=0)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        x_inf = x.clone()  # an inference tensor, as Lightning's validation batches are
        assert x_inf.is_inference()
        for m in ALL_METHODS:
            got = cc.explain(model, x_inf, method=m, target_layer="block")
            assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
            torch.testing.assert_close(got, want[m], atol=1e-6, rtol=0)
        got_auto = cc.explain(model, x_inf, method="gradcam", target_layer="auto")
        torch.testing.assert_close(got_auto, want["gradcam"], atol=1e-6, rtol=0)
    assert_unchanged(model, before)


def test_faithfulness_under_inference_mode():
    model = make_model()
    x = images()
    want = cc.faithfulness(model, x, method="gradcampp", target_layer="block", reduction="none")
    before = snapshot(model)
    with torch.inference_mode():
        got = cc.faithfulness(model, x.clone(), method="gradcampp", target_layer="block", reduction="none")
        mean = cc.faithfulness(model, x.clone(), method="gradcampp", target_layer="block")
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0)
        assert mean[name] == pytest.approx(float(value.double().mean()), abs=1e-6)
    assert_unchanged(model, before)


def test_fully_frozen_model():
    """A frozen backbone (requires_grad False everywhere) still gives gradient maps, and stays frozen."""
    model = make_model()
    x = images()
    want = cc.explain(model, x, method="layercam", target_layer="block")
    model.requires_grad_(False)
    before = snapshot(model)
    got = cc.explain(model, x, method="layercam", target_layer="block")
    assert_unchanged(model, before)
    assert not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_double_precision_model_gives_float32_maps():
    model = make_model().double()
    x = images().double()
    before = snapshot(model)
    for m in ALL_METHODS:
        maps = cc.explain(model, x, method=m, target_layer="block")
        assert maps.dtype == torch.float32 and maps.shape == (3, 16, 16)
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert_unchanged(model, before)


def test_rng_state_unchanged_with_random_draws_around():
    """The next dropout mask after explain is the one that would have been drawn without it."""
    model = make_model()
    x = images()
    torch.manual_seed(5)
    with torch.no_grad():
        expected_next = model(x)  # train mode: draws dropout masks
    torch.manual_seed(5)
    state = torch.get_rng_state()
    cc.explain(model, x, method="gradcam", target_layer="block")
    cc.faithfulness(model, x, method="gradcam", target_layer="block")
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        assert torch.equal(model(x), expected_next)


class RaisingHead(StatefulNet):
    """Raises in the tail, after the target layer's hook has switched autograd on for the tail."""

    def forward(self, x):
        features = self.block(self.stem(x))
        if features.requires_grad:
            raise RuntimeError("boom in the tail")
        return self.fc(torch.flatten(self.pool(features), 1))


@pytest.mark.parametrize("grad_context", ["enabled", "no_grad", "inference_mode"])
def test_exception_in_model_tail_restores_grad_mode_and_hooks(grad_context):
    torch.manual_seed(0)
    model = RaisingHead().train()
    contexts = {"enabled": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    with contexts[grad_context]():
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="boom in the tail"):
            cc.explain(model, images(), method="gradcam", target_layer="block")
        assert_unchanged(model, before)
        # CAM needs no gradients: no graph is recorded, the same model works
        maps = cc.explain(model, images(), method="cam", target_layer="block")
        assert maps.shape == (3, 16, 16)
        assert_unchanged(model, before)
