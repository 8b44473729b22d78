"""Shapley-CAM, Finer-CAM, FullGrad and LeGrad against values worked out by hand on tiny hand-set models.

Shapley-CAM, ``QuadraticNet``: the target layer is an identity on the input ``A`` (N, 2, 2, 2); with
``S_k = sum_ij A_kij`` the logits are ``z0 = S0^2 / 2 + S1`` and ``z1 = S0 * S1``. For class 0:
``g_0ij = S0``, ``g_1ij = 1``; the Hessian has ``d g_0ij / d A_0ab = 1`` and zeros elsewhere, so ``(H A)_0ij = S0``,
``(H A)_1ij = 0`` and the Shapley weights are ``w0 = S0 - S0/2 = S0/2``, ``w1 = 1`` (Grad-CAM's: ``S0`` and 1).
With ``A0 = [[1, 3], [0, 2]]`` (S0 = 6) and ``A1 = [[2, -1], [4, 0]]`` (S1 = 5)::

    Shapley-CAM raw = 3 A0 + A1 = [[5, 8], [4, 6]]  -> min-max [[0.25, 1], [0, 0.5]]
    Grad-CAM    raw = 6 A0 + A1 = [[8, 17], [4, 12]] -> min-max [[4/13, 1], [0, 8/13]]

For class 1: ``g_0 = S1``, ``g_1 = S0``, ``(H A)_0 = S1``, ``(H A)_1 = S0``: ``w = (S1/2, S0/2) = (2.5, 3)``.

Finer-CAM, ``MeanLinear``: ``z = W mean_ij(A)`` with ``W = [[1, 2], [-1, 3], [2, -1], [0.5, 0.5]]`` (4 classes, no
bias). With ``A0 = [[1, 3], [0, 4]]`` (mean 2), ``A1 = [[2, 0], [1, 1]]`` (mean 1): ``z = (4, 1, 3, 1.5)``. For
target 0 the distances ``|z_j - 4|`` are ``(-, 3, 1, 2.5)``: the closest class is 2, the two closest 2 and 3.
``d score / d A_k = (W[0, k] - alpha mean_j W[j, k]) / 4`` at every pixel::

    k=2, alpha=1: weights ([1, 2] - [1.25, -0.25]) / 4 ∝ (-0.25, 2.25): -0.25 A0 + 2.25 A1 = [[4.25, -0.75], [2.25, 1.25]]
                  ReLU, min-max -> [[1, 0], [9/17, 5/17]]
    k=1, alpha=1: weights ∝ (1 - 2, 2 + 1) = (-1, 3): -A0 + 3 A1 = [[5, -3], [3, -1]] -> [[1, 0], [0.6, 0]]
    Grad-CAM:     weights ∝ (1, 2): A0 + 2 A1 = [[5, 3], [2, 6]] -> [[0.75, 0.25], [0, 1]]
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cam_callbacks as cc
from cam_callbacks.engine.scored import method_gradients
from cam_callbacks.methods.registry import get_method
from cam_callbacks.methods.scored import contrast_score, shapley_score

A_SHAPLEY = torch.tensor([[[[1.0, 3.0], [0.0, 2.0]], [[2.0, -1.0], [4.0, 0.0]]]])
A_FINER = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]], [[2.0, 0.0], [1.0, 1.0]]]])
W_FINER = torch.tensor([[1.0, 2.0], [-1.0, 3.0], [2.0, -1.0], [0.5, 0.5]])


class QuadraticNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.features(x).sum(dim=(2, 3))
        return torch.stack([s[:, 0] ** 2 / 2 + s[:, 1], s[:, 0] * s[:, 1]], dim=1)


class MeanLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(2, 4, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(W_FINER)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _close(a: torch.Tensor, b, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a.double(), torch.as_tensor(b, dtype=torch.float64).expand_as(a.double()), atol=atol, rtol=0)


# --- Shapley-CAM -------------------------------------------------------------------------------------------


def test_engine_gradients_and_hessian_vector_by_hand():
    leaf = A_SHAPLEY.clone().requires_grad_(True)
    logits = QuadraticNet()(leaf)
    method = get_method("shapleycam")
    got = method_gradients([method], {"shapleycam": {"objective": "logit"}}, logits, torch.tensor([0]), leaf)["shapleycam"]
    _close(got["gradients"][0, 0], 6.0)
    _close(got["gradients"][0, 1], 1.0)
    _close(got["hessian_vector"][0, 0], 6.0)  # (H A)_0 = S0
    _close(got["hessian_vector"][0, 1], 0.0)
    leaf = A_SHAPLEY.clone().requires_grad_(True)
    got = method_gradients([method], {"shapleycam": {"objective": "logit"}}, QuadraticNet()(leaf), torch.tensor([1]), leaf)["shapleycam"]
    _close(got["gradients"][0, 0], 5.0)
    _close(got["gradients"][0, 1], 6.0)
    _close(got["hessian_vector"][0, 0], 5.0)  # (H A)_0 = S1
    _close(got["hessian_vector"][0, 1], 6.0)  # (H A)_1 = S0


def test_shapleycam_pure_function_by_hand():
    g = torch.stack([torch.full((2, 2), 6.0), torch.ones(2, 2)])[None]
    hv = torch.stack([torch.full((2, 2), 6.0), torch.zeros(2, 2)])[None]
    _close(get_method("shapleycam").fn(A_SHAPLEY, g, hv), [[[5.0, 8.0], [4.0, 6.0]]])


@pytest.mark.parametrize("grad_context", [torch.enable_grad, torch.no_grad, torch.inference_mode])
def test_shapleycam_end_to_end_by_hand(grad_context):
    net = QuadraticNet()
    with grad_context():
        maps = cc.explain(net, A_SHAPLEY, method="shapleycam", target_layer="features", targets=0)
        gradcam = cc.explain(net, A_SHAPLEY, method="gradcam", target_layer="features", targets=0)
        class1 = cc.explain(net, A_SHAPLEY, method="shapleycam", target_layer="features", targets=1)
    _close(maps, [[[0.25, 1.0], [0.0, 0.5]]])
    _close(gradcam, [[[4 / 13, 1.0], [0.0, 8 / 13]]])
    raw1 = 2.5 * A_SHAPLEY[0, 0] + 3.0 * A_SHAPLEY[0, 1]  # [[8.5, 4.5], [12, 5]]
    _close(class1, ((raw1 - raw1.min()) / (raw1.max() - raw1.min()))[None])


def _numpy_rest_reference(a: np.ndarray, target: int, eps: float = 1e-4):
    """Gradient and H A of ReST = z_t + log softmax(z)_t for QuadraticNet by central differences, in float64."""

    def score(x):
        s = x.sum(axis=(1, 2))
        z = np.array([s[0] ** 2 / 2 + s[1], s[0] * s[1]])
        return z[target] + z[target] - np.log(np.exp(z - z.max()).sum()) - z.max()

    def grad(x):
        out = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            step = np.zeros_like(x)
            step[idx] = eps
            out[idx] = (score(x + step) - score(x - step)) / (2 * eps)
        return out

    return grad(a), (grad(a + eps * a) - grad(a - eps * a)) / (2 * eps)


def test_shapleycam_rest_objective_against_finite_differences():
    small = A_SHAPLEY / 4  # logits of order 1, so the softmax is not saturated and ReST's Hessian is far from 0
    leaf = small.clone().requires_grad_(True)
    got = method_gradients([get_method("shapleycam")], {"shapleycam": {"objective": "rest"}}, QuadraticNet()(leaf), torch.tensor([1]), leaf)
    want_g, want_hv = _numpy_rest_reference(small[0].double().numpy(), target=1)
    np.testing.assert_allclose(got["shapleycam"]["gradients"][0].double().numpy(), want_g, atol=1e-5)
    np.testing.assert_allclose(got["shapleycam"]["hessian_vector"][0].double().numpy(), want_hv, atol=1e-4)
    assert np.abs(want_hv - want_g).max() > 0.05  # guard: ReST is not homogeneous, H A is not the gradient


def test_shapley_score_rejects_unknown_objective():
    with pytest.raises(ValueError, match=r"objective='soft'.*\['logit', 'rest'\]"):
        cc.explain(QuadraticNet(), A_SHAPLEY, method="shapleycam", target_layer="features", method_options={"objective": "soft"})
    torch.testing.assert_close(shapley_score(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), "rest"), torch.tensor([2.0 - float(np.log1p(np.exp(-2.0)))]))


# --- Finer-CAM ---------------------------------------------------------------------------------------------


def test_contrast_score_by_hand():
    logits = torch.tensor([[4.0, 1.0, 3.0, 1.5], [0.0, 5.0, 4.0, -1.0]])
    targets = torch.tensor([0, 1])
    _close(contrast_score(logits, targets, alpha=1.0, k=2), [4 - 2.25, 5 - (4 + 0) / 2])
    _close(contrast_score(logits, targets, alpha=0.5, k=1), [4 - 1.5, 5 - 2.0])
    _close(contrast_score(logits, targets, alpha=1.0, k=10), [4 - 5.5 / 3, 5 - 3.0 / 3])  # k capped at classes - 1


@pytest.mark.parametrize(
    "options, want",
    [
        ({"alpha": 1.0, "k": 2}, [[1.0, 0.0], [9 / 17, 5 / 17]]),
        ({"alpha": 1.0, "k": 1}, [[1.0, 0.0], [0.6, 0.0]]),
        ({"alpha": 0.0, "k": 3}, [[0.75, 0.25], [0.0, 1.0]]),  # alpha 0: Grad-CAM of the target logit
    ],
)
def test_finercam_end_to_end_by_hand(options, want):
    maps = cc.explain(MeanLinear(), A_FINER, method="finercam", target_layer="features", targets=0, method_options=options)
    _close(maps, [want])


def test_finercam_default_options_and_gradcam_differ():
    net = MeanLinear()
    assert get_method("finercam").options == {"alpha": 0.6, "k": 3}
    # alpha 0.6, k 3 (classes 2, 3, 1): weights ∝ W0 - 0.6 * mean(W1, W2, W3) = (1 - 0.3, 2 - 0.5) = (0.7, 1.5)
    raw = 0.7 * A_FINER[0, 0] + 1.5 * A_FINER[0, 1]
    _close(cc.explain(net, A_FINER, method="finercam", target_layer="features", targets=0), ((raw - raw.min()) / (raw.max() - raw.min()))[None])


@pytest.mark.parametrize(
    "options, message",
    [({"alpha": float("nan")}, "alpha must be a finite number"), ({"k": 0}, "k must be a positive int"), ({"k": 1.5}, "k must be a positive int")],
)
def test_finercam_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        cc.explain(MeanLinear(), A_FINER, method="finercam", target_layer="features", method_options=options)


def test_finercam_refuses_one_class_models():
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        cc.explain(net, A_FINER, method="finercam", target_layer="0")


def test_methods_with_own_scores_share_one_call():
    """Grad-CAM (target logit), Finer-CAM (contrast) and Shapley-CAM in one engine call each get their own gradients."""
    from cam_callbacks.engine.compute import compute_explanations
    from cam_callbacks.engine.options import ExplainOptions

    net = MeanLinear()
    options = ExplainOptions(method_options={"finercam": {"alpha": 1.0, "k": 1}})
    together = compute_explanations(net, A_FINER, ["gradcam", "finercam", "shapleycam"], [("features", net.features)], torch.tensor([0]), options)
    _close(together.maps["finercam"], [[[1.0, 0.0], [0.6, 0.0]]])
    _close(together.maps["gradcam"], [[[0.75, 0.25], [0.0, 1.0]]])
    _close(together.maps["shapleycam"], [[[0.75, 0.25], [0.0, 1.0]]])  # linear tail: H A = 0


# --- FullGrad ----------------------------------------------------------------------------------------------
#
# ``BiasNet``: x (1, 2, 2, 2) -> conv1 1x1, weight (2, 1), bias 1 -> BatchNorm (gamma 2, beta 1, running mean 0.5,
# running var 4 - eps: y = z + 0.5, folded bias 1 - 0.5 * 2 / 2 = 0.5) -> ReLU(inplace) -> conv2 1x1, weight 3, bias -2
# -> mean over the 4 pixels = the only logit. With x0 = [[1, -1], [0, 2]], x1 = [[0, 0.5], [1, 1]]:
# z1 = [[3, -0.5], [2, 6]], y = [[3.5, 0], [2.5, 6.5]], ReLU mask M = [[1, 0], [1, 1]] (relu'(0) = 0).
# d logit / d y = 3/4 M = d logit / d z1; d logit / d x0 = 2 * 3/4 M, d logit / d x1 = 3/4 M; at conv2's output 1/4.
# Terms: |x0 g0| = [[1.5, 0], [0, 3]], |x1 g1| = [[0, 0], [0.75, 0.75]]; conv1: 1 * 3/4 M; BN: 0.5 * 3/4 M;
# conv2: -2 * 1/4 (constant: normalises to 0).
#   normalize="layer":   input (/3 over both channels) [[0.5, 0], [0.25, 1.25]] + M + M = [[2.5, 0], [2.25, 3.25]]
#                        -> min-max [[10/13, 0], [9/13, 1]]
#   normalize="channel": input [[0.5, 0], [0, 1]] + [[0, 0], [1, 1]] + M + M = [[2.5, 0], [3, 4]] -> [[5/8, 0], [3/4, 1]]
X_BIAS = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]], [[0.0, 0.5], [1.0, 1.0]]]])
M_BIAS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])


class BiasNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 1)
        self.bn = nn.BatchNorm2d(1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([2.0, 1.0]).view(1, 2, 1, 1))
            self.conv1.bias.fill_(1.0)
            self.bn.weight.fill_(2.0)
            self.bn.bias.fill_(1.0)
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(4.0 - self.bn.eps)
            self.conv2.weight.fill_(3.0)
            self.conv2.bias.fill_(-2.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3))


def test_bias_gradients_by_hand():
    from cam_callbacks.capture.bias_gradients import bias_gradients, bias_layers

    net = BiasNet()
    assert [name for name, _ in bias_layers(net)] == ["conv1", "bn", "conv2"]
    input_grads, terms, logits, targets = bias_gradients(net, X_BIAS, None)
    _close(logits, [[59 / 8]])  # conv2 output [[8.5, -2], [5.5, 17.5]], mean 7.375
    assert targets.tolist() == [0]
    _close(input_grads[0, 0], 1.5 * M_BIAS)
    _close(input_grads[0, 1], 0.75 * M_BIAS)
    assert [tuple(t.shape) for t in terms] == [(1, 1, 2, 2)] * 3
    _close(terms[0][0, 0], 0.75 * M_BIAS)  # conv1: bias 1, gradient at its output
    _close(terms[1][0, 0], 0.375 * M_BIAS)  # BN: folded bias 0.5, gradient at its output (before the in-place ReLU)
    _close(terms[2][0, 0], -0.5)  # conv2: bias -2, gradient 1/4


@pytest.mark.parametrize("normalize, want", [("layer", [[10 / 13, 0.0], [9 / 13, 1.0]]), ("channel", [[5 / 8, 0.0], [3 / 4, 1.0]])])
def test_fullgrad_end_to_end_by_hand(normalize, want):
    net = BiasNet()
    maps = cc.explain(net, X_BIAS, method="fullgrad", method_options={"normalize": normalize})
    _close(maps, [want])
    # the target layer is not used: naming one changes nothing
    _close(cc.explain(net, X_BIAS, method="fullgrad", target_layer="conv1", method_options={"normalize": normalize}), [want])


def test_fullgrad_rejects_unknown_normalization():
    with pytest.raises(ValueError, match=r"normalize='image'.*\['layer', 'channel'\]"):
        cc.explain(BiasNet(), X_BIAS, method="fullgrad", method_options={"normalize": "image"})


# --- LeGrad ------------------------------------------------------------------------------------------------


def test_legrad_pure_function_by_hand():
    """Relevance (N=1, 3 blocks, 4 patches) -> mean over the chosen blocks, laid out on the 2x2 grid."""
    relevance = torch.tensor([[[1.0, 0.0, 2.0, 4.0], [3.0, 2.0, 0.0, 0.0], [2.0, 4.0, 1.0, 2.0]]])
    legrad = get_method("legrad").fn
    _close(legrad(relevance, (2, 2)), [[[2.0, 2.0], [1.0, 2.0]]])
    _close(legrad(relevance, (2, 2), blocks=2), [[[2.5, 3.0], [0.5, 1.0]]])
    _close(legrad(relevance, (2, 2), blocks=1), [[[2.0, 4.0], [1.0, 2.0]]])
    for bad in (0, 4, True, 1.5):
        with pytest.raises(ValueError, match=r"blocks must be None \(all\) or an int in 1..3"):
            legrad(relevance, (2, 2), blocks=bad)


def _tiny_vit(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "timm":
        import timm

        return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    import torchvision

    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision initialises the head to zeros: every gradient would be 0
    return model


# timm: slow only because importing it takes ~4.6 s cold on the 2-core machine (the test itself ~0.2 s)
@pytest.mark.parametrize("kind", ["torchvision", pytest.param("timm", marks=pytest.mark.slow)])
def test_legrad_through_explain_leaves_the_model_as_found(kind):
    model = _tiny_vit(kind)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.train()
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    fused = [getattr(getattr(b, "attn", None), "fused_attn", None) for b in getattr(model, "blocks", [])]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    maps = cc.explain(model, x, method="legrad", target_layer="auto")
    assert maps.shape == (2, 32, 32) and float(maps.std()) > 0.05
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    assert [getattr(getattr(b, "attn", None), "fused_attn", None) for b in getattr(model, "blocks", [])] == fused
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    # every parameter frozen: the attention maps are autograd leaves of their own, so the map is the same
    for p in model.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(cc.explain(model, x, method="legrad"), maps)


@pytest.mark.parametrize("model", [nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))])
def test_legrad_refuses_cnns(model):
    with pytest.raises(ValueError, match=r"legrad needs a vision transformer.*timm.*torchvision.*method='gradcam'"):
        cc.explain(model, torch.randn(1, 3, 16, 16), method="legrad")


# --- model state, faithfulness -----------------------------------------------------------------------------


class StatefulNet(nn.Module):
    """Conv + BatchNorm + in-place ReLU + Dropout, then a tail quadratic in 'block' (so Shapley-CAM's H A is not 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.Dropout2d(0.3))
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.features(x))
        return self.fc(h.mean(dim=(2, 3)) + (h**2).mean(dim=(2, 3)))


def _stateful_model() -> nn.Module:
    torch.manual_seed(0)
    model = StatefulNet()
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 12, 12) * 2 + 0.5)  # BN statistics away from (0, 1)
    model.block[1].eval()
    model.features[0].bias.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)  # as if mid gradient accumulation
    return model


@pytest.mark.parametrize("method, options", [("shapleycam", {"objective": "rest"}), ("shapleycam", None), ("finercam", None), ("fullgrad", None)])
def test_explain_leaves_the_model_as_found(method, options):
    import copy

    model = _stateful_model()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    want = cc.explain(copy.deepcopy(model).eval(), x, method=method, target_layer="block", method_options=options)
    calls = []
    handle = model.block.register_forward_hook(lambda m, i, o: calls.append(1))
    training = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {name: p.grad for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for name, m in model.named_modules()}
    rng = torch.get_rng_state()
    with torch.no_grad():
        maps = cc.explain(model, x, method=method, target_layer="block", method_options=options)
    assert {name: m.training for name, m in model.named_modules()} == training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is grads[name] for name, p in model.named_parameters())
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 0.25))
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for name, m in model.named_modules()} == hooks
    assert torch.equal(torch.get_rng_state(), rng) and calls
    handle.remove()
    torch.testing.assert_close(maps, want, atol=1e-6, rtol=0)  # eval mode inside: the eval copy's maps
    assert float(maps.std()) > 0.01


@pytest.mark.parametrize("method", ["shapleycam", "finercam", "fullgrad"])
def test_faithfulness_of_the_new_methods(method):
    model = _stateful_model().eval()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    scores = cc.faithfulness(model, x, method=method, target_layer="block")
    assert sorted(scores) == ["adcc", "average_drop", "coherency", "complexity", "increase_in_confidence"]
    assert all(0.0 <= value <= 1.0 for value in scores.values()), scores


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("shapleycam", {"objective": "soft"}, r"objective='soft' is not valid; choose from \['logit', 'rest'\]"),
        ("finercam", {"k": 0}, "k must be a positive int"),
        ("finercam", {"alpha": "big"}, "alpha must be a finite number"),
        ("fullgrad", {"normalize": "image"}, r"normalize='image' is not valid; choose from \['layer', 'channel'\]"),
        ("legrad", {"blocks": 0}, r"blocks must be None \(all\) or an int in 1"),
    ],
)
def test_bad_option_values_fail_when_the_options_are_built(method, options, message):
    """Before any work: ExplainOptions (what explain, faithfulness and CAMMonitor build first) checks the values
    (CAMMonitor: tests/callbacks/test_callback_methods.py)."""
    from cam_callbacks.engine.options import ExplainOptions

    with pytest.raises(ValueError, match=message):
        ExplainOptions(method_options={method: options})
    with pytest.raises(ValueError, match=message):
        cc.explain(QuadraticNet(), A_SHAPLEY, method=method, target_layer="features", method_options=options)


def test_shapleycam_through_fused_attention_against_finite_differences():
    """A torchvision ViT's tail runs F.scaled_dot_product_attention, whose fused CPU/GPU kernels have no double
    backward (RuntimeError before the engine switched to the math kernel for the pass). The engine's H A at
    'encoder.layers.encoder_layer_0' (reshape='vit') against central differences of the autograd gradient of the tail
    written here (class token fixed, patch tokens from the grid), in float64."""
    import copy

    import torchvision

    from cam_callbacks.methods.registry import register_method, unregister_method

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3).eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    seen = {}

    @register_method("test_probe_hessian", needs=("activations", "gradients", "hessian_vector"))
    def probe(activations, gradients, hessian_vector):
        seen.update(a=activations, g=gradients, hv=hessian_vector)
        return activations.sum(1)

    try:
        cc.explain(model, x, method="test_probe_hessian", target_layer="encoder.layers.encoder_layer_0", reshape="vit", targets=[0, 2])
        maps = cc.explain(model, x, method="shapleycam", target_layer="encoder.layers.encoder_layer_0", reshape="vit", targets=[0, 2])
    finally:
        unregister_method("test_probe_hessian")
    assert maps.shape == (2, 16, 16)
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        n = x.shape[0]
        tokens = torch.cat([ref.class_token.expand(n, -1, -1), ref._process_input(x.double())], dim=1) + ref.encoder.pos_embedding
        prefix = ref.encoder.layers[0](tokens)[:, :1]

    def gradient(grid):
        grid = grid.detach().requires_grad_(True)
        out = ref.encoder.layers[1](torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1))
        score = ref.heads(ref.encoder.ln(out)[:, 0]).gather(1, torch.tensor([[0], [2]])).sum()
        return torch.autograd.grad(score, grid)[0]

    a = seen["a"].double()
    eps = 1e-4
    torch.testing.assert_close(seen["g"].double(), gradient(a), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(seen["hv"].double(), (gradient(a + eps * a) - gradient(a - eps * a)) / (2 * eps), atol=1e-5, rtol=1e-3)
    assert float(seen["hv"].abs().max()) > 1e-3  # guard: H A is not 0 here


def test_register_method_score_and_option_routing():
    """Options go to the function that names them; an option neither takes is refused at registration."""
    from cam_callbacks.methods.registry import register_method, unregister_method

    def half_logit(logits, targets, factor=1.0):
        return factor * logits.gather(1, targets[:, None]).squeeze(1)

    @register_method("test_scored", needs=("activations", "gradients"), score=half_logit, options={"factor": 0.5, "power": 1})
    def scored(activations, gradients, power=1):
        return (gradients.mean(dim=(2, 3))[:, :, None, None] * activations).sum(1) ** power

    try:
        method = get_method("test_scored")
        assert method.fn_options(method.options) == {"power": 1} and method.score_options(method.options) == {"factor": 0.5}
        leaf = A_FINER.clone().requires_grad_(True)
        got = method_gradients([method], {"test_scored": {"factor": 0.5, "power": 1}}, MeanLinear()(leaf), torch.tensor([0]), leaf)
        _close(got["test_scored"]["gradients"][0, 0], 0.5 * 1.0 / 4)  # d(0.5 z_0) / d A_0ij = 0.5 W[0, 0] / 4
        _close(got["test_scored"]["gradients"][0, 1], 0.5 * 2.0 / 4)
    finally:
        unregister_method("test_scored")
    with pytest.raises(ValueError, match=r"option\(s\) \['sigma'\] of 'test_orphan' are taken by neither fn nor score"):
        register_method("test_orphan", needs=("activations",), options={"sigma": 1.0})(lambda activations: activations.sum(1))
    assert "test_orphan" not in cc.available_methods()


@pytest.mark.parametrize("method, model, x", [
    ("shapleycam", QuadraticNet, A_SHAPLEY), ("finercam", MeanLinear, A_FINER), ("fullgrad", BiasNet, X_BIAS),
    ("legrad", lambda: _tiny_vit("torchvision").eval(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))),
])  # fmt: skip
def test_under_inference_mode_with_inference_tensors(method, model, x):
    """As in validation (trainer.validate): inference mode on, the images inference tensors."""
    net = model()
    layer = "features" if method in ("shapleycam", "finercam") else "auto"
    want = cc.explain(net, x, method=method, target_layer=layer, targets=0)
    with torch.inference_mode():
        images = x.clone()
        got = cc.explain(net, images, method=method, target_layer=layer, targets=0)
    assert images.is_inference()
    torch.testing.assert_close(got, want)
