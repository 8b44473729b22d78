"""Saliency, guided backpropagation and Guided Grad-CAM.

Conventions (GUIDE.md section 2 and the issue): ``saliency`` is ``max_c |d logit_t / d x_c|``; ``guidedbackprop`` is the
same reduction of the guided gradient (a ReLU passes gradient only where its input *and* the gradient arriving from
above are positive); ``guidedgradcam`` is the raw (ReLU'd) Grad-CAM upsampled bilinearly (``align_corners=False``) to the
input, times the guided-backprop map; every map is then min-max normalised per image.

The hand model (``HandMLP``), no biases, one ReLU call site (``site``) for both of its ReLUs::

    x (N, 2, 1, 3) -> flatten: [c0p0, c0p1, c0p2, c1p0, c1p1, c1p2] -> fc1 -> ReLU_a -> fc2 -> ReLU_b -> fc3 -> 2 logits

    W1 = [[1, 0, 0, 1, 0,  0],     a0 = x0 + x3        W2 = [[-1, 0,  2],    b0 = -r0 + 2 r2
          [0, 1, 0, 0, 1,  0],     a1 = x1 + x4              [ 1, 0, -1],    b1 =  r0 -   r2
          [0, 0, 1, 0, 0, -1]]     a2 = x2 - x5              [ 1, 0,  1]]    b2 =  r0 +   r2
    W3 = [[ 1, 1, -1 ],            z0 =  s0 + s1 - s2
          [-1, 2, 0.5]]            z1 = -s0 + 2 s1 + 0.5 s2

Image: channel 0 = [1, -2, 3], channel 1 = [0.5, 1, -1], so x = [1, -2, 3, 0.5, 1, -1]:

    a = [1.5, -1, 4]      r = relu(a) = [1.5, 0, 4]       ReLU_a: unit 1 blocked (input -1 < 0)
    b = [6.5, -2.5, 5.5]  s = relu(b) = [6.5, 0, 5.5]     ReLU_b: unit 1 blocked (input -2.5 < 0)
    z = [1.0, -3.75]  ->  top-1 = class 0

Class 0, plain gradient (saliency):
    dz/ds = W3[0] = [1, 1, -1]; ReLU_b keeps units with b > 0: [1, 0, -1]
    dz/dr = W2^T [1, 0, -1] = W2[0] - W2[2] = [-2, 0, 1]; ReLU_a keeps units with a > 0: [-2, 0, 1]
    dz/dx = W1^T [-2, 0, 1] = [-2, 0, 1, -2, 0, -1]; max_c |.| per pixel = [2, 0, 1] -> min-max [1, 0, 0.5]
Class 0, guided:
    ReLU_b, upstream [1, 1, -1]: unit 0 passes (input 6.5 > 0, gradient 1 > 0); unit 1 blocked although its gradient
        is positive (input -2.5); unit 2 dropped (input 5.5 > 0 but gradient -1 < 0)  -> [1, 0, 0]
    dz/dr = W2[0] = [-1, 0, 2]
    ReLU_a: unit 0 dropped (input 1.5 > 0 but gradient -1 < 0); unit 1 blocked; unit 2 passes (4 > 0, 2 > 0) -> [0, 0, 2]
    dz/dx = 2 W1[2] = [0, 0, 2, 0, 0, -2]   (negative *input* gradients stay: only ReLUs are modified)
    map = [0, 0, 2] -> [0, 0, 1]
Class 1, plain:
    dz/ds = [-1, 2, 0.5] -> ReLU_b: [-1, 0, 0.5];  dz/dr = -W2[0] + 0.5 W2[2] = [1.5, 0, -1.5] -> ReLU_a: same
    dz/dx = 1.5 W1[0] - 1.5 W1[2] = [1.5, 0, -1.5, 1.5, 0, 1.5]; map [1.5, 0, 1.5] -> [1, 0, 1]
Class 1, guided:
    ReLU_b: unit 0 dropped (gradient -1), unit 1 blocked, unit 2 passes (0.5) -> [0, 0, 0.5]
    dz/dr = 0.5 W2[2] = [0.5, 0, 0.5] -> ReLU_a: units 0 and 2 pass (inputs and gradients positive) -> [0.5, 0, 0.5]
    dz/dx = 0.5 W1[0] + 0.5 W1[2] = [0.5, 0, 0.5, 0.5, 0, -0.5]; map [0.5, 0, 0.5] -> [1, 0, 1]
"""

from __future__ import annotations

import copy
import inspect
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from _calibration import calibrate_batchnorm
from captum.attr import GuidedBackprop, GuidedGradCam, Saliency
from torch import nn
from torch.nn.modules import module as module_globals

import cam_callbacks as cc
from cam_callbacks.capture.guided import guided_relus, input_gradients

W1 = [[1.0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, -1]]
W2 = [[-1.0, 0, 2], [1, 0, -1], [1, 0, 1]]
W3 = [[1.0, 1, -1], [-1, 2, 0.5]]
HAND_IMAGE = [[[1.0, -2.0, 3.0]], [[0.5, 1.0, -1.0]]]  # (C=2, H=1, W=3)

HAND_LOGITS = [1.0, -3.75]
HAND_GRADIENTS = {  # (class, guided) -> d z_class / d x, flattened channel-major (see the module docstring)
    (0, False): [-2.0, 0, 1, -2, 0, -1],
    (0, True): [0.0, 0, 2, 0, 0, -2],
    (1, False): [1.5, 0, -1.5, 1.5, 0, 1.5],
    (1, True): [0.5, 0, 0.5, 0.5, 0, -0.5],
}
HAND_MAPS = {  # (class, method) -> normalised (1, 3) map
    (0, "saliency"): [[1.0, 0.0, 0.5]],
    (0, "guidedbackprop"): [[0.0, 0.0, 1.0]],
    (1, "saliency"): [[1.0, 0.0, 1.0]],
    (1, "guidedbackprop"): [[1.0, 0.0, 1.0]],
}


#: ReLU call sites (the nn.ReLU ones are modules of HandMLP). The in-place functions are used the way networks use
#: them (their return value flows on), which capture/guided.py documents as required.
CALL_SITES = {
    "nn.ReLU(inplace=True)": None,
    "nn.ReLU()": None,
    "F.relu": lambda t: F.relu(t),
    "F.relu(inplace=True)": lambda t: F.relu(t, inplace=True),
    "F.relu_": lambda t: F.relu_(t),
    "torch.relu": lambda t: torch.relu(t),
    "torch.relu_": lambda t: torch.relu_(t),
    "Tensor.relu": lambda t: t.relu(),
    "Tensor.relu_": lambda t: t.relu_(),
}


class RefGuidedReLU(torch.autograd.Function):
    """Independent guided ReLU for the references: forward relu, backward ``grad * 1[input > 0] * 1[grad > 0]``."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0).to(grad.dtype) * (grad > 0).to(grad.dtype)


class HandMLP(nn.Module):
    def __init__(self, site: str = "nn.ReLU(inplace=True)") -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 3, bias=False)
        self.fc2 = nn.Linear(3, 3, bias=False)
        self.fc3 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            for layer, weight in ((self.fc1, W1), (self.fc2, W2), (self.fc3, W3)):
                layer.weight.copy_(torch.tensor(weight))
        self.site = site
        self.relu_a = nn.ReLU(inplace=site == "nn.ReLU(inplace=True)")
        self.relu_b = nn.ReLU(inplace=site == "nn.ReLU(inplace=True)")

    def act(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        if self.site.startswith("nn.ReLU"):
            return module(t)
        return CALL_SITES[self.site](t)

    def forward(self, x):
        h = self.act(self.relu_a, self.fc1(x.flatten(1)))
        h = self.act(self.relu_b, self.fc2(h))
        return self.fc3(h)


def hand_image() -> torch.Tensor:
    return torch.tensor([HAND_IMAGE])


def function_mode_stack_depth() -> int:
    return torch._C._len_torch_function_stack()


# ---------------------------------------------------------------------------------------------
# Hand-computed gradients
# ---------------------------------------------------------------------------------------------


def test_hand_model_forward():
    net = HandMLP()
    torch.testing.assert_close(net(hand_image()), torch.tensor([HAND_LOGITS]))


@pytest.mark.parametrize("site", list(CALL_SITES))
@pytest.mark.parametrize("target", [0, 1])
def test_hand_gradients_every_call_site(site, target):
    net = HandMLP(site).eval()
    for guided in (False, True):
        grads, logits, targets = input_gradients(net, hand_image(), torch.tensor([target]), guided=guided)
        torch.testing.assert_close(grads.flatten(), torch.tensor(HAND_GRADIENTS[(target, guided)]), atol=1e-6, rtol=0)
        torch.testing.assert_close(logits, torch.tensor([HAND_LOGITS]))
        assert targets.tolist() == [target]
    assert function_mode_stack_depth() == 0


@pytest.mark.parametrize("site", list(CALL_SITES))
@pytest.mark.parametrize("method", ["saliency", "guidedbackprop"])
def test_hand_maps_every_call_site(site, method):
    net = HandMLP(site).eval()
    x = hand_image()
    # target_layer is not used by these methods; a name is given so that "auto" (which needs a 4-D layer) is not
    # resolved on this MLP (see test_layer_free_methods_need_no_4d_layer).
    top1 = cc.explain(net, x, method=method, target_layer="fc1")
    torch.testing.assert_close(top1, torch.tensor([HAND_MAPS[(0, method)]]), atol=1e-6, rtol=0)
    for target in (0, 1):
        got = cc.explain(net, x, method=method, target_layer="fc1", targets=target)
        torch.testing.assert_close(got, torch.tensor([HAND_MAPS[(target, method)]]), atol=1e-6, rtol=0)


def test_guided_relus_docstring_rule_by_hand():
    """One ReLU: inputs [-1, 2, 3, 0.5], upstream [5, -1, 4, 0] -> only input 3 (upstream 4) passes."""
    x = torch.tensor([-1.0, 2.0, 3.0, 0.5], requires_grad=True)
    upstream = torch.tensor([5.0, -1.0, 4.0, 0.0])
    for relu in (torch.relu, F.relu, lambda t: t.relu(), lambda t: F.relu(t.clone(), inplace=True)):
        with guided_relus():
            y = relu(x)
        (grad,) = torch.autograd.grad((y * upstream).sum(), x)
        assert grad.tolist() == [0.0, 0.0, 4.0, 0.0]
        (plain,) = torch.autograd.grad((relu(x) * upstream).sum(), x)  # outside the block: ordinary ReLU
        assert plain.tolist() == [0.0, -1.0, 4.0, 0.0]
    assert function_mode_stack_depth() == 0


def _numpy_input_gradients(x: np.ndarray, weights, target: int, guided: bool) -> np.ndarray:
    """d z_target / d x of an MLP relu(W1 x) -> relu(W2 .) -> W3 ., by hand-written backpropagation."""
    w1, w2, w3 = weights
    a = w1 @ x
    b = w2 @ np.maximum(a, 0)
    gs = w3[target]
    gb = gs * (b > 0) * ((gs > 0) if guided else 1)
    gr = w2.T @ gb
    ga = gr * (a > 0) * ((gr > 0) if guided else 1)
    return w1.T @ ga


@pytest.mark.parametrize("site", ["nn.ReLU(inplace=True)", "F.relu_", "Tensor.relu"])
def test_random_mlp_against_numpy_backprop(site):
    gen = torch.Generator().manual_seed(3)
    net = HandMLP(site).eval()
    with torch.no_grad():
        for layer in (net.fc1, net.fc2, net.fc3):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
    x = torch.randn(5, 2, 1, 3, generator=gen)
    weights = [layer.weight.detach().double().numpy() for layer in (net.fc1, net.fc2, net.fc3)]
    targets = torch.tensor([0, 1, 1, 0, 1])
    for guided in (False, True):
        grads, _, _ = input_gradients(net, x, targets, guided=guided)
        want = np.stack([_numpy_input_gradients(x[i].flatten().double().numpy(), weights, int(targets[i]), guided) for i in range(5)])
        np.testing.assert_allclose(grads.flatten(1).double().numpy(), want, atol=1e-5)
        if guided:
            plain = np.stack([_numpy_input_gradients(x[i].flatten().double().numpy(), weights, int(targets[i]), False) for i in range(5)])
            assert np.abs(want - plain).max() > 0.1  # guard: the guided rule matters on this data


def test_layer_free_methods_need_no_4d_layer():
    """Saliency and guided backprop do not use target_layer (explain's docstring), so the default target_layer='auto'
    must not make them fail on a classifier without a 4-D feature map (here an MLP on (N, 2, 1, 3) images).

    Fails at the time of writing: explain's _prepare resolves 'auto' for every method, and find_auto_layer raises
    "found no module ... with a 4-D output larger than 1x1" although the method never looks at that layer.
    """
    net = HandMLP().eval()
    for method in ("saliency", "guidedbackprop"):
        got = cc.explain(net, hand_image(), method=method)
        torch.testing.assert_close(got, torch.tensor([HAND_MAPS[(0, method)]]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# A small CNN with every call site, BN and dropout: Guided Grad-CAM reference and model state
# ---------------------------------------------------------------------------------------------


class CallSiteCNN(nn.Module):
    """Every ReLU call site in a small CNN with BN and dropout::

        conv1 -> bn1 -> nn.ReLU(inplace=True) -> conv2 -> F.relu(inplace=True)
        -> 5 parallel convs conv3.0 ... conv3.4 (3 channels each), followed by torch.relu, Tensor.relu, F.relu_,
           torch.relu_, Tensor.relu_ -> concatenated (15 channels) -> GAP -> dropout -> fc (4 classes)
    """

    GROUP_SITES = ["torch.relu", "Tensor.relu", "F.relu_", "torch.relu_", "Tensor.relu_"]

    def __init__(self, reference_guided: bool = False, raise_in_guided_mode: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv3 = nn.ModuleList([nn.Conv2d(12, 3, 3, padding=1) for _ in self.GROUP_SITES])
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(15, 4)
        self.reference_guided = reference_guided
        self.raise_in_guided_mode = raise_in_guided_mode

    def relu(self, site: str, t: torch.Tensor) -> torch.Tensor:
        return RefGuidedReLU.apply(t) if self.reference_guided else CALL_SITES[site](t)

    def forward(self, x):
        if self.raise_in_guided_mode and function_mode_stack_depth() > 0:
            raise RuntimeError("boom inside the guided mode")
        h = self.bn1(self.conv1(x))
        h = RefGuidedReLU.apply(h) if self.reference_guided else self.relu1(h)
        h = self.relu("F.relu(inplace=True)", self.conv2(h))
        h = torch.cat([self.relu(site, conv(h)) for conv, site in zip(self.conv3, self.GROUP_SITES)], dim=1)
        return self.fc(self.drop(h.mean(dim=(2, 3))))


def make_cnn(**kwargs) -> CallSiteCNN:
    torch.manual_seed(0)
    model = CallSiteCNN(**kwargs)
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 12, 12) + 0.3)  # BN running statistics away from (0, 1)
        model.fc.weight.mul_(10.0)
    return model.eval()


def cnn_images(n=2, size=12, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    assert bool((high > low).all())
    return (maps - low) / (high - low)


def reference_input_gradients(model: nn.Module, x: torch.Tensor, targets, guided: bool) -> torch.Tensor:
    ref = copy.deepcopy(model).eval()
    ref.reference_guided = guided
    xg = x.clone().requires_grad_(True)
    logits = ref(xg)
    (grads,) = torch.autograd.grad(logits[torch.arange(x.shape[0]), targets].sum(), xg)
    return grads


def reference_gradcam_raw(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets) -> torch.Tensor:
    """Grad-CAM at feature resolution with a forward hook (that hands a clone on, so in-place ReLUs cannot touch it)."""
    store = {}

    def hook(module, inputs, output):
        store["a"] = output
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(logits[torch.arange(x.shape[0]), targets].sum(), a)
    return torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach()


def test_cnn_guided_and_saliency_against_reference_relu():
    model = make_cnn()
    x = cnn_images()
    targets = torch.tensor([1, 3])
    for method, guided in (("saliency", False), ("guidedbackprop", True)):
        grads = reference_input_gradients(model, x, targets, guided)
        want = minmax(grads.abs().amax(1))
        got = cc.explain(model, x, method=method, target_layer="fc", targets=targets)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    plain = reference_input_gradients(model, x, targets, False)
    guided = reference_input_gradients(model, x, targets, True)
    assert (minmax(plain.abs().amax(1)) - minmax(guided.abs().amax(1))).abs().max() > 0.1  # guard


@pytest.mark.parametrize("layer_name", ["conv3.2", "conv2"])
def test_cnn_guided_gradcam_against_reference(layer_name):
    """raw ReLU'd Grad-CAM (hook + autograd), bilinear 6x6 -> 12x12 (conv3.2: then rewritten by F.relu_ in place),
    times max_c |guided gradient| (RefGuidedReLU at every ReLU), then min-max."""
    model = make_cnn()
    x = cnn_images()
    targets = torch.tensor([2, 0])
    layer = dict(model.named_modules())[layer_name]
    cam = reference_gradcam_raw(model, layer, x, targets)
    cam_up = F.interpolate(cam[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    guided = reference_input_gradients(model, x, targets, True).abs().amax(1)
    want = minmax(cam_up * guided)
    got = cc.explain(model, x, method="guidedgradcam", target_layer=layer_name, targets=targets)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # guards: neither factor alone gives the map
    assert (got - minmax(guided)).abs().max() > 0.05
    assert (got - minmax(cam_up)).abs().max() > 0.05


class SignSplitNet(nn.Module):
    """x (N, 1, 2, 2) -> 1x1 conv to 2 channels, weights (+1, -1), no bias -> ReLU (target layer) -> GAP -> fc W, no bias.

    Channel 0 is relu(x), channel 1 is relu(-x); W[0] = [1, 2], W[1] = [-1, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_guided_gradcam_hand_example_multiplies_the_raw_gradcam():
    """x = [[1, 2], [-1, -0.5]] (4 pixels), class 0 (logit (3 + 2 * 1.5) / 4 = 1.5; class 1: (-3 + 1.5) / 4 = -0.375).

    Grad-CAM at 'relu' (A0 = relu(x) = [[1, 2], [0, 0]], A1 = relu(-x) = [[0, 0], [1, .5]]): the gradient there is
    W[0, k] / 4 everywhere, so cam = (1 * A0 + 2 * A1) / 4 = [[1, 2], [2, 1]] / 4 (minimum 1/4 > 0).
    Guided gradient at x: channel 0's ReLU passes where x > 0 (upstream 1/4 > 0) and contributes +1 * 1/4; channel 1's
    passes where x < 0 (upstream 2/4 > 0) and contributes -1 * 2/4: g = [[1, 1], [-2, -2]] / 4, |g| = [[1, 1], [2, 2]] / 4.
    Guided Grad-CAM = minmax(cam * |g|) = minmax([[1, 2], [4, 2]]) = [[0, 1/3], [1, 1/3]].
    (With a min-max normalised Grad-CAM [[0, 1], [1, 0]] instead of the raw one it would be [[0, .5], [1, 0]].)
    """
    net = SignSplitNet().eval()
    x = torch.tensor([[[[1.0, 2.0], [-1.0, -0.5]]]])
    torch.testing.assert_close(net(x), torch.tensor([[1.5, -0.375]]))
    got = cc.explain(net, x, method="guidedgradcam", target_layer="relu")
    torch.testing.assert_close(got, torch.tensor([[[0.0, 1 / 3], [1.0, 1 / 3]]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cc.explain(net, x, method="gradcam", target_layer="relu"), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    torch.testing.assert_close(cc.explain(net, x, method="guidedbackprop", target_layer="relu"), torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))


# ---------------------------------------------------------------------------------------------
# Model left exactly as found
# ---------------------------------------------------------------------------------------------

HOOK_DICTS = [
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
]  # fmt: skip
GLOBAL_HOOK_DICTS = ["_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"]


def make_stateful_cnn(**kwargs) -> CallSiteCNN:
    model = make_cnn(**kwargs)
    model.train()
    model.bn1.eval()  # a frozen BN inside a training model
    model.conv2.bias.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)  # mid gradient accumulation
    model.conv1.weight.grad = torch.arange(model.conv1.weight.numel(), dtype=torch.float32).view_as(model.conv1.weight)
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "module_objects": {name: m for name, m in model.named_modules()},
        "children": {name: dict(m._modules) for name, m in model.named_modules()},
        "forward": {name: m.__dict__.get("forward") for name, m in model.named_modules()},  # no monkey-patched forward
        "training": {name: m.training for name, m in model.named_modules()},
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "param_objects": {name: p for name, p in model.named_parameters()},
        "grad_objects": {name: p.grad for name, p in model.named_parameters()},
        "grad_values": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": {(name, d): dict(getattr(m, d)) for name, m in model.named_modules() for d in HOOK_DICTS},
        "global_hooks": {d: dict(getattr(module_globals, d)) for d in GLOBAL_HOOK_DICTS},
        "grad_enabled": torch.is_grad_enabled(),
        "function_modes": function_mode_stack_depth(),
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for name, module in before["module_objects"].items():
        assert after["module_objects"][name] is module, name
    assert after["module_objects"].keys() == before["module_objects"].keys()
    for name, children in before["children"].items():
        assert after["children"][name].keys() == children.keys()
        assert all(after["children"][name][k] is v for k, v in children.items()), name
    assert after["forward"] == before["forward"]
    assert after["training"] == before["training"]
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    for name, param in before["param_objects"].items():
        assert after["param_objects"][name] is param, name
    for name, grad in before["grad_objects"].items():
        assert after["grad_objects"][name] is grad, name  # None stays None, a set grad is the same tensor
        if grad is not None:
            assert torch.equal(after["grad_values"][name], before["grad_values"][name]), name
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert after["grad_enabled"] == before["grad_enabled"]
    assert after["function_modes"] == before["function_modes"] == 0
    assert torch.overrides._get_current_function_mode() is None
    assert torch.equal(after["rng"], before["rng"])


@pytest.mark.parametrize(
    "method, grad_context",
    [("guidedbackprop", "enabled"), ("guidedgradcam", "enabled"), ("saliency", "enabled"), ("guidedbackprop", "no_grad"),
     ("guidedbackprop", "inference_mode"), ("guidedgradcam", "inference_mode")],
)  # fmt: skip
def test_guided_methods_leave_model_as_found(method, grad_context):
    model = make_stateful_cnn()
    x = cnn_images()
    want = cc.explain(copy.deepcopy(model).eval(), x, method=method, target_layer="conv3.2")
    calls = []
    user_hook = model.conv2.register_forward_hook(lambda m, i, o: calls.append(1))
    global_hook = module_globals.register_module_forward_hook(lambda m, i, o: None)
    contexts = {"enabled": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    try:
        with contexts[grad_context]():
            images = x.clone()
            before = snapshot(model)
            got = cc.explain(model, images, method=method, target_layer="conv3.2")
            assert_unchanged(model, before)
        assert calls  # the user's hook survived and was called
    finally:
        user_hook.remove()
        global_hook.remove()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # eval mode inside: dropout off, BN running statistics
    # the model's own gradients afterwards are the ordinary ones (no guided ReLU left behind)
    model.eval()
    plain = reference_input_gradients(model, x, torch.tensor([0, 1]), guided=False)
    xg = x.clone().requires_grad_(True)
    (grads,) = torch.autograd.grad(model(xg)[torch.arange(2), torch.tensor([0, 1])].sum(), xg)
    torch.testing.assert_close(grads, plain, atol=0, rtol=0)


@pytest.mark.parametrize("method", ["guidedbackprop", "guidedgradcam"])
@pytest.mark.parametrize("grad_context", ["enabled", "no_grad"])
def test_exception_inside_guided_mode_restores_everything(method, grad_context):
    """The forward raises while the guided TorchFunctionMode is active (for guidedgradcam: after the Grad-CAM pass)."""
    model = make_stateful_cnn(raise_in_guided_mode=True)
    with torch.no_grad() if grad_context == "no_grad" else torch.enable_grad():
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="boom inside the guided mode"):
            cc.explain(model, cnn_images(), method=method, target_layer="conv3.2")
        assert_unchanged(model, before)
    assert function_mode_stack_depth() == 0 and torch.overrides._get_current_function_mode() is None
    # and the model is usable with ordinary autograd afterwards
    model.raise_in_guided_mode = False
    model.eval()
    x = cnn_images().requires_grad_(True)
    (grads,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    torch.testing.assert_close(grads, reference_input_gradients(model, cnn_images(), torch.tensor([0, 0]), guided=False), atol=0, rtol=0)


def test_guided_relus_context_exits_on_exception():
    with pytest.raises(ValueError, match="inside"):
        with guided_relus():
            assert function_mode_stack_depth() == 1
            raise ValueError("inside")
    assert function_mode_stack_depth() == 0 and torch.overrides._get_current_function_mode() is None


# ---------------------------------------------------------------------------------------------
# Cross-checks against captum on torchvision models (random weights)
# ---------------------------------------------------------------------------------------------
# captum's outputs are (N, C, H, W) attributions; the conventions applied to them (never to ours): max over channels of
# |.|, then per-image min-max. captum's GuidedGradCam upsamples the ReLU'd Grad-CAM with LayerAttribution.interpolate,
# i.e. F.interpolate(mode=interpolate_mode) with align_corners left at its default (False for "bilinear"), and
# multiplies it into the guided attributions per channel; since that Grad-CAM map is >= 0, max_c |cam * g_c| equals
# cam * max_c |g_c|, our definition. Both libraries run the same float32 ops (captum's ReLU backward hooks apply
# relu(grad_input), grad_input = 1[x > 0] * grad_output, the same mask as ours), so we expect agreement to float32
# rounding: measured 0.0 (saliency, guided backprop) and <= 1.5e-6 (Guided Grad-CAM, Grad-CAM weights summed in a
# different order). TOL = 1e-5 leaves margin for BLAS differences and is still far below the 0.05 differences between
# the methods (guards below).

TOL = 1e-5
SIZE = 64
TARGETS = [0, 5]
CAPTUM_LAYERS = {"resnet18": "layer4", "vgg11": "features"}


def captum_map(model: nn.Module, method: str, x: torch.Tensor, layer: str = "") -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns that it sets (and removes) backward hooks on ReLUs
        inputs = x.clone().requires_grad_(True)
        if method == "saliency":
            attr = Saliency(model).attribute(inputs, target=TARGETS, abs=True)
        elif method == "guidedbackprop":
            attr = GuidedBackprop(model).attribute(inputs, target=TARGETS)
        else:
            layer_module = dict(model.named_modules())[layer]
            attr = GuidedGradCam(model, layer_module).attribute(inputs, target=TARGETS, interpolate_mode="bilinear")
    return minmax(attr.detach().abs().amax(dim=1))


def prepare_bn(model: nn.Module) -> nn.Module:
    """BatchNorm statistics of one random batch (as in test_crosscheck.py), eval mode."""
    return calibrate_batchnorm(model, SIZE)


@pytest.fixture(scope="module")
def torchvision_models(random_vgg11):
    torch.manual_seed(0)
    resnet = prepare_bn(torchvision.models.resnet18(weights=None, num_classes=10))
    # vgg11 has no BatchNorm; the shared session model is only read (captum removes its hooks; checked below)
    return {"resnet18": resnet, "vgg11": random_vgg11}


@pytest.fixture(scope="module")
def images64():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))


GUIDED_METHODS = ["saliency", "guidedbackprop", "guidedgradcam"]


@pytest.fixture(scope="module")
def our_maps(torchvision_models, images64):
    """Our maps for both models and all three methods, computed once (also checks no hook / param.grad is left)."""
    maps = {}
    for model_name, model in torchvision_models.items():
        hooks_before = {(n, d): dict(getattr(m, d)) for n, m in model.named_modules() for d in HOOK_DICTS}
        for method in GUIDED_METHODS:
            maps[model_name, method] = cc.explain(model, images64, method=method, target_layer=CAPTUM_LAYERS[model_name], targets=TARGETS)
        assert {(n, d): dict(getattr(m, d)) for n, m in model.named_modules() for d in HOOK_DICTS} == hooks_before
        assert all(p.grad is None for p in model.parameters())
    return maps


@pytest.mark.crosscheck
@pytest.mark.parametrize("method", GUIDED_METHODS)
@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_against_captum(torchvision_models, images64, our_maps, model_name, method):
    model = torchvision_models[model_name]
    ours = our_maps[model_name, method]
    hooks_before = {(n, d): dict(getattr(m, d)) for n, m in model.named_modules() for d in HOOK_DICTS}
    ref = captum_map(model, method, images64, CAPTUM_LAYERS[model_name])
    assert {(n, d): dict(getattr(m, d)) for n, m in model.named_modules() for d in HOOK_DICTS} == hooks_before  # captum cleaned up
    for n in range(2):  # guard against trivial agreement
        assert float(ours[n].std()) > 0.05 and float(ref[n].std()) > 0.05
    diff = float((ours - ref).abs().max())
    print(f"{model_name}/{method} vs captum: max abs diff {diff:.3g}")
    assert diff <= TOL


@pytest.mark.crosscheck
@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_guided_methods_differ(our_maps, model_name):
    """Guard for the cross-checks: the three methods give clearly different maps on the same model and images."""
    for first, second in [("saliency", "guidedbackprop"), ("guidedbackprop", "guidedgradcam"), ("saliency", "guidedgradcam")]:
        assert (our_maps[model_name, first] - our_maps[model_name, second]).abs().max() > 0.05, (first, second)


# --- densenet: F.relu(features, inplace=True) in forward, invisible to module hooks ---------------------------------


class DenseNetModuleReLU(torchvision.models.DenseNet):
    """torchvision's DenseNet with the forward's ``F.relu(features, inplace=True)`` done by an ``nn.ReLU`` module, which
    captum's GuidedBackprop can hook. Same parameters and buffers, same logits."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.final_relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.final_relu(self.features(x))
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


DENSENETS = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, num_classes=10),
    # the same class and forward with 2 blocks of 2 dense layers, where that last ReLU matters much more to the map
    "small_densenet": dict(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10),
}
# How far plain captum is from us on these images (measured: densenet121 0.0047, small 0.40): required > MISSED, 100x TOL.
MISSED = 1e-3


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n == "densenet121" else n for n in DENSENETS])
def densenets(request):
    torch.manual_seed(0)
    plain = prepare_bn(torchvision.models.DenseNet(**DENSENETS[request.param]))
    variant = DenseNetModuleReLU(**DENSENETS[request.param])
    variant.load_state_dict(plain.state_dict())
    return request.param, plain, variant.eval()


def test_densenet_forward_has_functional_inplace_relu():
    """The premise: torchvision's DenseNet.forward (densenet121's) calls F.relu(features, inplace=True)."""
    assert "F.relu(features, inplace=True)" in inspect.getsource(torchvision.models.DenseNet.forward)
    torch.manual_seed(0)
    assert type(torchvision.models.densenet121(num_classes=2)) is torchvision.models.DenseNet


@pytest.mark.crosscheck
def test_densenet_guided_backprop_sees_the_functional_relu(densenets, images64):
    name, plain, variant = densenets
    with torch.no_grad():
        torch.testing.assert_close(variant(images64), plain(images64), atol=0, rtol=0)
    ours = cc.explain(plain, images64, method="guidedbackprop", target_layer="features", targets=TARGETS)
    ours_variant = cc.explain(variant, images64, method="guidedbackprop", target_layer="features", targets=TARGETS)
    captum_variant = captum_map(variant, "guidedbackprop", images64)  # captum hooks the module ReLU there
    captum_plain = captum_map(plain, "guidedbackprop", images64)  # captum misses the functional ReLU
    for n in range(2):
        assert float(ours[n].std()) > 0.05
    same = float((ours - captum_variant).abs().max())
    missed = float((ours - captum_plain).abs().max())
    print(f"{name} guided backprop: vs captum on the module variant {same:.3g}, vs plain captum {missed:.3g}")
    assert same <= TOL
    torch.testing.assert_close(ours_variant, ours, atol=TOL, rtol=0)
    assert missed > MISSED  # plain captum differs, exactly because of that ReLU (the variant removes the difference)
    # The same holds for the raw guided gradients (before any normalisation)
    grads, _, _ = input_gradients(plain, images64, torch.tensor(TARGETS), guided=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GuidedBackprop(variant).attribute(images64.clone().requires_grad_(True), target=TARGETS).detach()
    torch.testing.assert_close(grads, ref, atol=1e-6 * float(ref.abs().max()), rtol=0)
