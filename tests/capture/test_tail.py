"""derive_tail: the model's logits as a function of the target layer's output.

Every check compares with the straightforward reference: the full model run on the images with a
forward hook that replaces the target layer's output.
"""

from __future__ import annotations

import copy
import warnings
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

from cam_callbacks.capture.tail import Tail, derive_tail

HOOK_DICTS = ["_forward_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks"]
GLOBAL_HOOK_DICTS = ["_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"]


def images(n: int = 2, size: int = 64, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def captured(model: nn.Module, layer_name: str, x: Tensor) -> Tuple[Tensor, Tensor]:
    """The layer's output (a private copy: later in-place ops cannot rewrite it) and the logits."""
    outputs: List[Tensor] = []
    handle = model.get_submodule(layer_name).register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    assert len(outputs) == 1
    return outputs[0], logits


def replaced(model: nn.Module, layer_name: str, x: Tensor, activations: Tensor) -> Tensor:
    """Reference: the whole model on ``x`` with the layer's output replaced by ``activations``."""
    handle = model.get_submodule(layer_name).register_forward_hook(lambda m, i, o: activations.clone())
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def per_copy_reference(model: nn.Module, layer_name: str, x: Tensor, activations: Tensor, repeats: int) -> Tensor:
    """Reference for ``repeats`` copies per image: copy k of image i is row i * repeats + k."""
    out = torch.empty(activations.shape[0], *replaced(model, layer_name, x, activations[::repeats]).shape[1:])
    for k in range(repeats):
        out[k::repeats] = replaced(model, layer_name, x, activations[k::repeats])
    return out


def assert_logits_close(actual: Tensor, expected: Tensor) -> None:
    scale = float(expected.abs().max().clamp_min(1.0))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def copies(activations: Tensor, repeats: int, seed: int = 2) -> Tensor:
    """``repeats`` different modified copies per image, grouped image by image."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.rand(activations.shape[0] * repeats, 1, 1, 1, generator=generator) * 2
    modified = activations.repeat_interleave(repeats, dim=0) * scales
    modified[1::repeats, 0] = 0.0  # one copy per image with channel 0 ablated
    return modified


# --- torchvision classifiers: the target layer is the whole feature extractor or a block -----------

TORCHVISION_CASES = [
    ("resnet18", "layer4", 64),
    ("resnet18", "layer3", 64),
    ("vgg11", "features", 64),
    ("densenet121", "features", 64),
    ("mobilenet_v3_small", "features", 64),
    ("efficientnet_b0", "features", 64),
    ("convnext_tiny", "features", 64),
]


def build(name: str, request: pytest.FixtureRequest) -> nn.Module:
    if name == "vgg11":
        return request.getfixturevalue("random_vgg11")  # shared, not mutated here
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=10).eval()


@pytest.mark.crosscheck
@pytest.mark.parametrize(
    "name,layer_name,size",
    [pytest.param(*case, id=f"{case[0]}-{case[1]}", marks=[pytest.mark.slow] if case[0] == "vgg11" else []) for case in TORCHVISION_CASES],
)
def test_torchvision_tail_is_fx_and_matches_model(name, layer_name, size, request):
    model = build(name, request)
    x = images(2, size)
    tail = derive_tail(model, layer_name, x)
    assert isinstance(tail, Tail) and tail.mode == "fx" and tail.layer_name == layer_name
    assert tail.example_batch is None  # nothing crosses the cut: any number of rows
    activations, logits = captured(model, layer_name, x)
    if name == "densenet121":  # the un-relu'd output: the tail must apply densenet's F.relu(features, inplace=True)
        assert float(activations.min()) < 0
    kept = activations.clone()
    with torch.no_grad():
        assert_logits_close(tail(activations), logits)
    assert torch.equal(activations, kept)  # the tail does not write into its input (densenet's F.relu(inplace=True))
    half = activations * 0.5
    ablated = activations.clone()
    ablated[:, 0] = 0.0
    for modified in (half, ablated):
        with torch.no_grad():
            assert_logits_close(tail(modified), replaced(model, layer_name, x, modified))
    # more rows than images: rows are independent
    with torch.no_grad():
        stacked = tail(torch.cat([activations, half, ablated]))
    assert_logits_close(stacked[:2], logits)
    assert_logits_close(stacked[2:4], replaced(model, layer_name, x, half))


@pytest.mark.slow
def test_resnet_block_with_skip_crossing_the_cut():
    """layer4.1.conv2: the block's identity (layer4.0's output) crosses the cut."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = images(2, 64)
    tail = derive_tail(model, "layer4.1.conv2", x)
    assert tail.mode == "fx" and tail.example_batch == 2
    activations, logits = captured(model, "layer4.1.conv2", x)
    with torch.no_grad():
        assert_logits_close(tail(activations), logits)
        modified = copies(activations, 2)
        assert_logits_close(tail(modified, repeats=2), per_copy_reference(model, "layer4.1.conv2", x, modified, 2))


# --- hand-made models -------------------------------------------------------------------------------


class SkipNet(nn.Module):
    """out = head_linear(pool(target(early(x))) + 2 * pool(early(x))): a skip connection crosses the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.target = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_linear = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        early = self.early(x)
        skip = torch.flatten(self.pool(early), 1) * 2.0  # a function node, not a module output
        return self.head_linear(torch.flatten(self.pool(self.target(early)), 1) + skip)


class BranchyNet(nn.Module):
    """Data-dependent control flow before the target: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.target = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        stem = self.stem(x)
        if stem.sum() > 0:
            stem = stem * 2.0
        return self.fc(self.relu(self.target(stem)).mean(dim=(2, 3)))


class BatchSizeNet(nn.Module):
    """Reshapes with the input's batch size, a value crossing the cut that cannot follow more rows."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.target = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        return self.fc(self.pool(self.target(self.stem(x))).reshape(n, -1))


class DropoutNet(nn.Module):
    """Functional dropout after the target: tracing bakes ``self.training`` into the graph."""

    def __init__(self, dropout_before: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.target = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        self.dropout_before = dropout_before

    def forward(self, x: Tensor) -> Tensor:
        stem = self.stem(x)
        if self.dropout_before:
            stem = F.dropout(stem, p=0.5, training=self.training)
        out = F.dropout(self.target(stem), p=0.5, training=self.training)
        if self.dropout_before:
            out = out + stem  # a skip across the cut, computed in eval mode at derive time
        return self.fc(out.mean(dim=(2, 3)))


class SharedNet(nn.Module):
    """The target layer is called twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.target = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.target(self.target(x)).mean(dim=(2, 3)))


def seeded(cls, *args) -> nn.Module:
    torch.manual_seed(0)
    return cls(*args).eval()


def test_skip_connection_across_the_cut_with_repeats():
    model = seeded(SkipNet)
    x = images(2, 16)
    tail = derive_tail(model, "target", x)
    assert tail.mode == "fx" and tail.example_batch == 2
    activations, logits = captured(model, "target", x)
    modified = copies(activations, 3)
    kept = modified.clone()
    with torch.no_grad():
        assert_logits_close(tail(activations), logits)
        assert_logits_close(tail(modified, repeats=3), per_copy_reference(model, "target", x, modified, 3))
    assert torch.equal(modified, kept)
    with pytest.raises(ValueError, match="repeats=2 copies of the 2 example images need 4"):
        tail(modified, repeats=2)
    with pytest.raises(ValueError, match="not a multiple of the 2 example images"):
        tail.fn(modified[:5])
    # only the skip is a snapshot: the tail runs the model's own modules and parameters, and follows weight updates
    parameters = {id(p) for p in model.parameters()}
    assert {id(p) for p in tail.fn.graph_module.parameters()} <= parameters
    with torch.no_grad():
        model.head_linear.weight.mul_(-3.0)
        assert_logits_close(tail(modified, repeats=3), per_copy_reference(model, "target", x, modified, 3))


def test_data_dependent_control_flow_falls_back_to_rerun():
    model = seeded(BranchyNet)
    x = images(2, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tail = derive_tail(model, "target", x)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "Falling back to re-running" in messages[0] and "torch.fx cannot trace" in messages[0]
    assert tail.mode == "rerun" and tail.example_batch == 2
    activations, logits = captured(model, "target", x)
    modified = copies(activations, 2)
    kept = modified.clone()
    with torch.no_grad():
        assert_logits_close(tail(activations), logits)
        assert_logits_close(tail(modified, repeats=2), per_copy_reference(model, "target", x, modified, 2))
    assert torch.equal(modified, kept)  # the model's in-place relu does not reach the caller's tensor
    assert not model.target._forward_hooks  # the replacement hook lives only during a call
    # only the part from the layer on records a graph
    leaf = modified.clone().requires_grad_(True)
    tail(leaf, repeats=2).sum().backward()
    assert leaf.grad is not None and all(p.grad is None for p in model.stem.parameters())


def test_batch_size_dependent_tail_falls_back_to_rerun():
    model = seeded(BatchSizeNet)
    x = images(2, 16)
    with pytest.warns(UserWarning, match="with 2 copies per image"):
        tail = derive_tail(model, "target", x)
    assert tail.mode == "rerun"
    activations, _ = captured(model, "target", x)
    modified = copies(activations, 3)
    with torch.no_grad():
        assert_logits_close(tail(modified, repeats=3), per_copy_reference(model, "target", x, modified, 3))


def test_tail_follows_train_and_eval_modes():
    model = seeded(DropoutNet)
    x = images(2, 16)
    tail = derive_tail(model, "target", x)
    assert tail.mode == "fx"
    activations, logits = captured(model, "target", x)
    with torch.no_grad():
        assert_logits_close(tail(activations), logits)
        model.train()
        torch.manual_seed(3)
        want = replaced(model, "target", x, activations)
        torch.manual_seed(3)
        got = tail(activations)
        assert_logits_close(got, want)
        assert not torch.allclose(got, logits)  # dropout is on
        model.eval()
        assert_logits_close(tail(activations), logits)


def test_mode_dependent_program_with_values_across_the_cut_refuses_other_modes():
    model = seeded(DropoutNet, True)
    x = images(2, 16)
    tail = derive_tail(model, "target", x)
    assert tail.mode == "fx" and tail.example_batch == 2
    activations, logits = captured(model, "target", x)
    model.train()
    with pytest.raises(RuntimeError, match="traces to a different program"):
        tail(activations)
    model.eval()
    with torch.no_grad():
        assert_logits_close(tail(activations), logits)


class NoisyNet(nn.Module):
    """Random noise on the logits, even in eval mode: no tail can reproduce them."""

    def __init__(self) -> None:
        super().__init__()
        self.target = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc(self.target(x).mean(dim=(2, 3)))
        return logits + torch.randn_like(logits)


def test_tail_that_does_not_reproduce_the_model_raises():
    model = seeded(NoisyNet)
    with pytest.warns(UserWarning, match="does not reproduce"):
        with pytest.raises(ValueError, match="the derived tail does not reproduce NoisyNet after layer 'target'.*tail="):
            derive_tail(model, "target", images(2, 8))
    assert not model.target._forward_hooks


def test_layer_called_twice_is_refused():
    model = seeded(SharedNet)
    with pytest.raises(ValueError, match="called 2 times"):
        derive_tail(model, "target", images(1, 8))
    assert not model.target._forward_hooks


def test_unknown_layer_suggests_names():
    with pytest.raises(ValueError, match="Did you mean"):
        derive_tail(seeded(SkipNet), "targt", images(1, 8))


def test_works_under_inference_mode():
    model = seeded(SkipNet)
    x = images(2, 16)
    with torch.inference_mode():
        tail = derive_tail(model, "target", x)
        activations, logits = captured(model, "target", x.clone())
        assert_logits_close(tail(activations), logits)
    assert tail.mode == "fx"
    modified = copies(activations.clone(), 2)
    with torch.no_grad():
        assert_logits_close(tail(modified, repeats=2), per_copy_reference(model, "target", x, modified, 2))


# --- tail= and the model's state --------------------------------------------------------------------


def test_user_tail():
    model = seeded(SkipNet)
    x = images(2, 16)
    skip = torch.flatten(model.pool(model.early(x)), 1).detach() * 2.0

    def user_tail(activations: Tensor) -> Tensor:
        return model.head_linear(torch.flatten(model.pool(activations), 1) + skip)

    tail = derive_tail(model, "target", x, tail=user_tail)
    assert tail.mode == "user" and tail.fn is user_tail and tail.example_batch is None
    activations, logits = captured(model, "target", x)
    with torch.no_grad():
        assert_logits_close(tail(activations), logits)


def test_wrong_user_tail_raises():
    model = seeded(SkipNet)
    with pytest.raises(ValueError, match="tail= does not reproduce SkipNet after layer 'target'"):
        derive_tail(model, "target", images(2, 16), tail=lambda a: model.head_linear(a.amax(dim=(2, 3))))
    with pytest.raises(ValueError, match="returned shape"):
        derive_tail(model, "target", images(2, 16), tail=lambda a: a.mean(dim=(2, 3)))


def make_stateful(model: nn.Module) -> nn.Module:
    """In train mode with BN statistics, one module in eval mode, a frozen parameter and pending gradients."""
    with torch.no_grad():
        model.train()
        model(images(4, 16, seed=5) * 2 + 0.5)
    params = list(model.parameters())
    params[1].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.25)
    model.get_submodule("target").eval()
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {name: (p.grad, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": {(name, d): dict(getattr(m, d)) for name, m in model.named_modules() for d in HOOK_DICTS},
        "global_hooks": {d: dict(getattr(module_globals, d)) for d in GLOBAL_HOOK_DICTS},
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("training", "requires_grad", "hooks", "global_hooks", "grad_enabled"):
        assert after[key] == before[key], key
    for key, value in before["state"].items():  # parameters and BN statistics bit-identical
        assert torch.equal(after["state"][key], value), key
    for name, (grad, values) in before["grads"].items():
        assert after["grads"][name][0] is grad, name
        if grad is not None:
            assert torch.equal(after["grads"][name][1], values), name


@pytest.mark.parametrize("case", ["fx", "rerun", "user", "wrong-user"])
def test_derive_tail_leaves_model_as_found(case):
    model = make_stateful(seeded(BranchyNet if case == "rerun" else SkipNet))
    user_hook = model.target.register_forward_hook(lambda m, i, o: None)
    x = images(2, 16)
    user = None
    if case in ("user", "wrong-user"):
        reference = copy.deepcopy(model).eval()
        with torch.no_grad():
            skip = torch.flatten(reference.pool(reference.early(x)), 1) * (2.0 if case == "user" else 3.0)
        user = lambda a: model.head_linear(torch.flatten(model.pool(a), 1) + skip)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case == "wrong-user":
            with pytest.raises(ValueError, match="does not reproduce"):
                derive_tail(model, "target", x, tail=user)
        else:
            assert derive_tail(model, "target", x, tail=user).mode == case
    assert_unchanged(model, before)
    user_hook.remove()
