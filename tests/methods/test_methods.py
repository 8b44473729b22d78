"""CAM methods against maps worked out by hand on a tiny model with hand-set weights (captum style).

The model (``HandNet``)::

    x (N, 2, 3, 3) -> conv: 1x1, weight = identity, bias = (+1, -1)   <- target layer, output A
                   -> ReLU -> global average pool (9 pixels) -> fc: W = [[1, 2], [-1, 3]], b = (0.5, -0.5)

so ``A_k = x_k + bias_k`` and ``z_c = sum_k W[c, k] * mean_ij relu(A_kij) + b_c``. By the chain rule
(PyTorch's ``relu'(0) = 0``) the gradient of logit ``c`` at the target layer is

    g_kij = dz_c / dA_kij = W[c, k] / 9 * 1[A_kij > 0].

Image 1 (the one all literal numbers below are for)::

    A0 = [[0, 1, 2],      A1 = [[ 2,  1, -1],      M0 = 1[A0 > 0] = [[0, 1, 1],    M1 = [[1, 1, 0],
          [1, 3, 1],            [ 1, -1, -2],                        [1, 1, 1],          [1, 0, 0],
          [2, 1, 0]]            [-1, -2, -3]]                        [1, 1, 0]]          [0, 0, 0]]

    sum(A0) = 11, sum(A1) = -6, sum(relu(A0)) = 11, sum(relu(A1)) = 4
    z0 = 1 * 11/9 + 2 * 4/9 + 0.5 = 47/18 (2.611),   z1 = -11/9 + 3 * 4/9 - 0.5 = -7/18 (-0.389)  -> top-1 = 0
    class 0: g0 = (1/9) M0, g1 = (2/9) M1;   class 1: g0 = -(1/9) M0, g1 = (3/9) M1

Image 2: same A0, A1'' = A1 + 6 = [[8, 7, 5], [7, 5, 4], [5, 4, 3]] (all > 0, sum 48)::

    z0 = 11/9 + 2 * 48/9 + 0.5 = 223/18 (12.39),   z1 = -11/9 + 3 * 48/9 - 0.5 = 257/18 (14.28)  -> top-1 = 1
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import cam_callbacks as cc
from cam_callbacks.capture.layers import resolve_target_layer
from cam_callbacks.methods import activation, gradient
from cam_callbacks.methods.registry import get_method, unregister_method
from cam_callbacks.utils.maps import minmax_normalize, upsample_and_normalize

ALL_METHODS = ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]
GRAD_METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]

A0 = np.array([[0, 1, 2], [1, 3, 1], [2, 1, 0]], dtype=np.float64)
A1 = np.array([[2, 1, -1], [1, -1, -2], [-1, -2, -3]], dtype=np.float64)
A1_IMG2 = A1 + 6.0
W = np.array([[1.0, 2.0], [-1.0, 3.0]])
B = np.array([0.5, -0.5])
CONV_BIAS = np.array([1.0, -1.0])


class HandNet(nn.Module):
    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, kernel_size=1, stride=stride)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.conv.bias.copy_(torch.tensor(CONV_BIAS))
            self.fc.weight.copy_(torch.tensor(W))
            self.fc.bias.copy_(torch.tensor(B))

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


def activations_to_input(a0: np.ndarray, a1: np.ndarray) -> torch.Tensor:
    """The input whose conv output is (a0, a1): x_k = A_k - bias_k."""
    return torch.tensor(np.stack([a0 - CONV_BIAS[0], a1 - CONV_BIAS[1]]), dtype=torch.float32)


def hand_gradients(a: np.ndarray, c: int) -> np.ndarray:
    """g_kij = W[c, k] / 9 * 1[A_kij > 0] (chain rule through fc, GAP over 9 pixels and ReLU)."""
    return W[c][:, None, None] / 9.0 * (a > 0)


@pytest.fixture
def hand_net():
    return HandNet().eval()


@pytest.fixture
def two_images():
    return torch.stack([activations_to_input(A0, A1), activations_to_input(A0, A1_IMG2)])


# ---------------------------------------------------------------------------------------------
# Small NumPy references of the method definitions (GUIDE section 2 / the papers), on (K, h, w)
# ---------------------------------------------------------------------------------------------


def relu(v):
    return np.maximum(v, 0.0)


def np_cam(a, w):
    return relu(np.tensordot(w, a, axes=1))


def np_gradcam(a, g):
    return relu(np.tensordot(g.mean(axis=(1, 2)), a, axes=1))


def np_gradcampp(a, g, torchcam_form=False):
    w = np.zeros(a.shape[0])
    for k in range(a.shape[0]):
        s = a[k].sum()
        for i in range(a.shape[1]):
            for j in range(a.shape[2]):
                gij = g[k, i, j]
                if torchcam_form:  # sum_ab A_ab g_ab^3 instead of sum_ab(A_ab) * g_ij^3
                    den = 2 * gij**2 + (a[k] * g[k] ** 3).sum()
                else:
                    den = 2 * gij**2 + s * gij**3
                alpha = 0.0 if gij == 0 or den == 0 else gij**2 / den
                w[k] += alpha * max(gij, 0.0)
    return relu(np.tensordot(w, a, axes=1))


def np_xgradcam(a, g):
    w = np.zeros(a.shape[0])
    for k in range(a.shape[0]):
        s = a[k].sum()
        w[k] = 0.0 if s == 0 else (g[k] * a[k]).sum() / s
    return relu(np.tensordot(w, a, axes=1))


def np_hirescam(a, g):
    return relu((g * a).sum(axis=0))


def np_layercam(a, g):
    return relu((relu(g) * a).sum(axis=0))


NP_REFS = {
    "gradcam": np_gradcam,
    "gradcampp": np_gradcampp,
    "xgradcam": np_xgradcam,
    "hirescam": np_hirescam,
    "layercam": np_layercam,
}


def np_minmax(m):
    span = m.max() - m.min()
    return np.zeros_like(m) if span == 0 else (m - m.min()) / span


def np_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (PyTorch align_corners=False, OpenCV INTER_LINEAR)."""

    def axis_weights(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            frac = src - i0
            m[o, i0] += 1.0 - frac
            m[o, i1] += frac
        return m

    return axis_weights(img.shape[0], out_h) @ img @ axis_weights(img.shape[1], out_w).T


# Literal hand results on image 1 (see the module docstring for A, M and g).
HAND_RAW = {
    # Grad-CAM, class 0: w = mean(g) = (7/81, 6/81); 7*A0 + 6*A1 = [[12,13,8],[13,15,-5],[8,-5,-18]]
    ("gradcam", 0): np.array([[12, 13, 8], [13, 15, 0], [8, 0, 0]]) / 81,
    # class 1: w = (-7/81, 9/81); -7*A0 + 9*A1 = [[18,2,-23],[2,-30,-25],[-23,-25,-27]]
    ("gradcam", 1): np.array([[18, 2, 0], [2, 0, 0], [0, 0, 0]]) / 81,
    # HiResCAM, class 0: (A0*M0 + 2*A1*M1)/9 = (A0 + 2 relu(A1))/9
    ("hirescam", 0): np.array([[4, 3, 2], [3, 3, 1], [2, 1, 0]]) / 9,
    # class 1: (-A0 + 3 relu(A1))/9 = [[6,2,-2],[2,-3,-1],[-2,-1,0]]/9
    ("hirescam", 1): np.array([[6, 2, 0], [2, 0, 0], [0, 0, 0]]) / 9,
    # LayerCAM: class 0 has g >= 0 everywhere, so it equals HiResCAM; class 1: relu(g0) = 0 -> 3 relu(A1)/9
    ("layercam", 0): np.array([[4, 3, 2], [3, 3, 1], [2, 1, 0]]) / 9,
    ("layercam", 1): np.array([[6, 3, 0], [3, 0, 0], [0, 0, 0]]) / 9,
    # XGrad-CAM, class 0: w0 = (11/9)/11 = 1/9, w1 = (2/9 * 4)/(-6) = -4/27; (3*A0 - 4*A1)/27
    #   = [[-8,-1,10],[-1,13,11],[10,11,12]]/27
    ("xgradcam", 0): np.array([[0, 0, 10], [0, 13, 11], [10, 11, 12]]) / 27,
    # class 1: w0 = -1/9, w1 = (3/9 * 4)/(-6) = -2/9; (-A0 - 2*A1)/9 = [[-4,-3,0],[-3,-1,3],[0,3,6]]/9
    ("xgradcam", 1): np.array([[0, 0, 0], [0, 0, 3], [0, 3, 6]]) / 9,
    # Grad-CAM++ (paper), class 0: alpha = 1/(2 + S*g) where g != 0.
    #   channel 0: S = 11, g = 1/9: alpha = 9/29, w0 = 7 * 9/29 * 1/9 = 7/29
    #   channel 1: S = -6, g = 2/9: alpha = 1/(2 - 4/3) = 3/2, w1 = 3 * 3/2 * 2/9 = 1
    #   (7*A0 + 29*A1)/29 = [[58,36,-15],[36,-8,-51],[-15,-51,-87]]/29
    ("gradcampp", 0): np.array([[58, 36, 0], [36, 0, 0], [0, 0, 0]]) / 29,
}
# torchcam's form (sum_ab A_ab g_ab^3): channel 1 becomes alpha = 1/(2 + (2/9) * sum_{M1} A1) = 1/(2 + 8/9) = 9/26,
# w1 = 3 * 9/26 * 2/9 = 3/13; 7/29 A0 + 3/13 A1 = (91 A0 + 87 A1)/377 = [[174,178,95],[178,186,-83],[95,-83,-261]]/377
TORCHCAM_FORM_GRADCAMPP_0 = np.array([[174, 178, 95], [178, 186, 0], [95, 0, 0]]) / 377
# CAM on the ReLU output (GAP + linear follow it directly), class 0: relu(A0) + 2 relu(A1)
HAND_CAM_ON_RELU_0 = np.array([[4, 3, 2], [3, 3, 1], [2, 1, 0]], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# The hand model and the NumPy references themselves
# ---------------------------------------------------------------------------------------------


def test_hand_model_logits(hand_net, two_images):
    logits = hand_net(two_images).detach().double().numpy()
    np.testing.assert_allclose(logits, [[47 / 18, -7 / 18], [223 / 18, 257 / 18]], rtol=1e-6)


def test_hand_model_gradients_match_chain_rule(hand_net, two_images):
    """Autograd confirms the hand gradients g = W[c]/9 * 1[A > 0] used throughout."""
    acts = {}
    handle = hand_net.conv.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        logits = hand_net(two_images[:1])
    finally:
        handle.remove()
    a = np.stack([A0, A1])
    np.testing.assert_allclose(acts["a"][0].detach().double().numpy(), a, atol=1e-6)
    for c in (0, 1):
        (g,) = torch.autograd.grad(logits[0, c], acts["a"], retain_graph=True)
        np.testing.assert_allclose(g[0].double().numpy(), hand_gradients(a, c), atol=1e-7)


@pytest.mark.parametrize("key", sorted(HAND_RAW), ids=lambda k: f"{k[0]}-class{k[1]}")
def test_numpy_references_reproduce_hand_numbers(key):
    method, c = key
    a = np.stack([A0, A1])
    np.testing.assert_allclose(NP_REFS[method](a, hand_gradients(a, c)), HAND_RAW[key], atol=1e-12)


def test_numpy_torchcam_form_reproduces_hand_numbers():
    a = np.stack([A0, A1])
    got = np_gradcampp(a, hand_gradients(a, 0), torchcam_form=True)
    np.testing.assert_allclose(got, TORCHCAM_FORM_GRADCAMPP_0, atol=1e-12)


def test_numpy_bilinear_reference_by_hand():
    # 1-D 2 -> 4 with half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    np.testing.assert_allclose(np_bilinear(np.array([[0.0, 1.0]]), 1, 4), [[0.0, 0.25, 0.75, 1.0]])
    # 2 -> 3: sources 1/6, 5/6 ... (o + 0.5) * 2/3 - 0.5 = -1/6 (-> 0), 0.5, 7/6 (-> i0=1)
    np.testing.assert_allclose(np_bilinear(np.array([[0.0, 6.0]]), 1, 3), [[0.0, 3.0, 6.0]])


# ---------------------------------------------------------------------------------------------
# Pure method functions (cam_callbacks/methods/) on explicit tensors
# ---------------------------------------------------------------------------------------------


def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32)


@pytest.mark.parametrize("key", sorted(HAND_RAW), ids=lambda k: f"{k[0]}-class{k[1]}")
def test_pure_functions_hand_numbers(key):
    method, c = key
    a = np.stack([A0, A1])
    raw = getattr(gradient, method)(activations=_t(a)[None], gradients=_t(hand_gradients(a, c))[None])
    assert raw.shape == (1, 3, 3)
    np.testing.assert_allclose(raw[0].double().numpy(), HAND_RAW[key], atol=1e-6)


def test_pure_cam_hand_numbers():
    a = relu(np.stack([A0, A1]))
    raw = activation.cam(activations=_t(a)[None], class_weights=_t(W[:1]))
    np.testing.assert_allclose(raw[0].double().numpy(), HAND_CAM_ON_RELU_0, atol=1e-6)
    # class 1 weights (-1, 3): -relu(A0) + 3 relu(A1) = [[6,2,-2],[2,-3,-1],[-2,-1,0]] -> ReLU
    raw1 = activation.cam(activations=_t(a)[None], class_weights=_t(W[1:]))
    np.testing.assert_allclose(raw1[0].double().numpy(), [[6, 2, 0], [2, 0, 0], [0, 0, 0]], atol=1e-6)


def test_gradcampp_is_the_paper_form_not_torchcams():
    a = np.stack([A0, A1])
    raw = gradient.gradcampp(activations=_t(a)[None], gradients=_t(hand_gradients(a, 0))[None])[0].double().numpy()
    np.testing.assert_allclose(raw, HAND_RAW[("gradcampp", 0)], atol=1e-6)
    # The two forms give visibly different maps here (also after min-max normalisation).
    assert np.abs(np_minmax(raw) - np_minmax(TORCHCAM_FORM_GRADCAMPP_0)).max() > 0.5


@pytest.mark.parametrize("method", GRAD_METHODS)
def test_pure_functions_random_against_numpy(method):
    gen = torch.Generator().manual_seed(3)
    acts = torch.rand(3, 5, 4, 6, generator=gen, dtype=torch.float64) * 2 - 0.3
    grads = torch.randn(3, 5, 4, 6, generator=gen, dtype=torch.float64) + 0.5
    grads[0, 1] = 0.0  # a channel with zero gradient
    grads[1, 2, :2] = 0.0  # part of a channel with zero gradient
    raw = getattr(gradient, method)(activations=acts, gradients=grads)
    assert raw.shape == (3, 4, 6)
    for n in range(3):
        want = NP_REFS[method](acts[n].numpy(), grads[n].numpy())
        np.testing.assert_allclose(raw[n].numpy(), want, rtol=1e-9, atol=1e-12)
        assert want.max() > 0  # not a trivial all-zero comparison


def test_pure_cam_random_against_numpy():
    gen = torch.Generator().manual_seed(4)
    acts = torch.rand(2, 6, 5, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    raw = activation.cam(activations=acts, class_weights=w)
    for n in range(2):
        np.testing.assert_allclose(raw[n].numpy(), np_cam(acts[n].numpy(), w[n].numpy()), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", GRAD_METHODS)
def test_zero_gradients_give_zero_maps_without_nan(method):
    acts = torch.rand(2, 3, 4, 4) + 0.1
    raw = getattr(gradient, method)(activations=acts, gradients=torch.zeros_like(acts))
    assert torch.isfinite(raw).all()
    assert torch.equal(raw, torch.zeros(2, 4, 4))


def test_gradcampp_g_zero_and_zero_denominator_give_alpha_zero():
    # channel 0: S = -2, g = 1 everywhere: 2 g^2 + S g^3 = 0 -> alpha = 0 (documented convention) -> w0 = 0
    # channel 1: S = 4 (all ones), g = 0.5 at one pixel, 0 elsewhere:
    #   alpha = 0.25 / (0.5 + 4 * 0.125) = 0.25, w1 = 0.25 * 0.5 = 0.125 -> map = 0.125 * ones
    acts = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    grads = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.0], [0.0, 0.0]]]])
    raw = gradient.gradcampp(activations=acts, gradients=grads)
    assert torch.isfinite(raw).all()
    torch.testing.assert_close(raw, torch.full((1, 2, 2), 0.125))


def test_xgradcam_zero_activation_sums_no_nan():
    # channel 0 sums to 0 (weight 0 by convention), channel 1 is all zero, channel 2: A = 1, g = 2 -> w2 = 2
    acts = torch.tensor([[[[1.0, -1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    grads = torch.tensor([[[[3.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    raw = gradient.xgradcam(activations=acts, gradients=grads)
    assert torch.isfinite(raw).all()
    torch.testing.assert_close(raw, torch.full((1, 2, 2), 2.0))
    # all channels zero: the map is zero, and explain-level normalisation keeps it zero
    zero = gradient.xgradcam(activations=torch.zeros(1, 2, 3, 3), gradients=torch.ones(1, 2, 3, 3))
    assert torch.equal(zero, torch.zeros(1, 3, 3))
    assert torch.equal(upsample_and_normalize(zero, (6, 6)), torch.zeros(1, 6, 6))


# ---------------------------------------------------------------------------------------------
# cc.explain end to end on the hand model
# ---------------------------------------------------------------------------------------------


def _expected(method, c, a1, layer="conv"):
    a = np.stack([A0, a1])
    if method == "cam":
        assert layer == "relu"
        return np_minmax(np_cam(relu(a), W[c]))
    return np_minmax(NP_REFS[method](a, hand_gradients(a, c)))


@pytest.mark.parametrize("method", GRAD_METHODS)
def test_explain_end_to_end_top1(hand_net, two_images, method):
    # targets=None -> top-1: class 0 on image 1, class 1 on image 2 (hand logits in the docstring).
    maps = cc.explain(hand_net, two_images, method=method, target_layer="conv")
    assert maps.shape == (2, 3, 3) and maps.dtype == torch.float32
    want = np.stack([_expected(method, 0, A1), _expected(method, 1, A1_IMG2)])
    assert want[0].max() == 1.0 and want[1].max() == 1.0
    np.testing.assert_allclose(maps.double().numpy(), want, atol=1e-6)


def test_explain_end_to_end_literal_numbers(hand_net, two_images):
    """Same thing, with the hand numbers themselves instead of the NumPy reference."""
    got = cc.explain(hand_net, two_images[:1], method="gradcam", target_layer="conv")[0].double().numpy()
    np.testing.assert_allclose(got, np.array([[12, 13, 8], [13, 15, 0], [8, 0, 0]]) / 15, atol=1e-6)
    got = cc.explain(hand_net, two_images[:1], method="xgradcam", target_layer="conv")[0].double().numpy()
    np.testing.assert_allclose(got, np.array([[0, 0, 10], [0, 13, 11], [10, 11, 12]]) / 13, atol=1e-6)
    got = cc.explain(hand_net, two_images[:1], method="gradcampp", target_layer="conv")[0].double().numpy()
    np.testing.assert_allclose(got, np.array([[58, 36, 0], [36, 0, 0], [0, 0, 0]]) / 58, atol=1e-6)
    got = cc.explain(hand_net, two_images[:1], method="hirescam", targets=1, target_layer="conv")[0].double().numpy()
    np.testing.assert_allclose(got, np.array([[6, 2, 0], [2, 0, 0], [0, 0, 0]]) / 6, atol=1e-6)
    got = cc.explain(hand_net, two_images[:1], method="layercam", targets=1, target_layer="conv")[0].double().numpy()
    np.testing.assert_allclose(got, np.array([[6, 3, 0], [3, 0, 0], [0, 0, 0]]) / 6, atol=1e-6)
    got = cc.explain(hand_net, two_images[:1], method="cam", target_layer="relu")[0].double().numpy()
    np.testing.assert_allclose(got, HAND_CAM_ON_RELU_0 / 4, atol=1e-6)


def test_explain_cam_end_to_end(hand_net, two_images):
    maps = cc.explain(hand_net, two_images, method="cam", target_layer="relu")
    want = np.stack([_expected("cam", 0, A1, "relu"), _expected("cam", 1, A1_IMG2, "relu")])
    np.testing.assert_allclose(maps.double().numpy(), want, atol=1e-6)


@pytest.mark.parametrize(
    "targets", [[1, 0], (1, 0), torch.tensor([1, 0]), np.array([1, 0]), torch.tensor([1, 0], dtype=torch.int32)]
)
def test_explicit_targets_per_image(hand_net, two_images, targets):
    maps = cc.explain(hand_net, two_images, method="hirescam", targets=targets, target_layer="conv")
    want = np.stack([_expected("hirescam", 1, A1), _expected("hirescam", 0, A1_IMG2)])
    np.testing.assert_allclose(maps.double().numpy(), want, atol=1e-6)


@pytest.mark.parametrize("target", [0, 1, np.int64(1), torch.tensor(0), torch.tensor(1, dtype=torch.int32)])
def test_int_target_for_all_images(hand_net, two_images, target):
    maps = cc.explain(hand_net, two_images, method="gradcam", targets=target, target_layer="conv")
    want = np.stack([_expected("gradcam", int(target), A1), _expected("gradcam", int(target), A1_IMG2)])
    np.testing.assert_allclose(maps.double().numpy(), want, atol=1e-6)


def test_class_choice_changes_the_map(hand_net, two_images):
    """Guard: the target cases above are distinguishable (otherwise they would prove nothing)."""
    for method in ["gradcam", "hirescam", "layercam", "xgradcam"]:
        assert np.abs(_expected(method, 0, A1) - _expected(method, 1, A1)).max() > 0.1
        assert np.abs(_expected(method, 0, A1_IMG2) - _expected(method, 1, A1_IMG2)).max() > 0.05


@pytest.mark.parametrize("method", ALL_METHODS)
def test_explain_with_upsampling_against_numpy_bilinear(method):
    """Stride-2 1x1 conv: a 6x6 input gives 3x3 features (x[::2, ::2] + bias), upsampled to 6x6."""
    net = HandNet(stride=2).eval()
    x = torch.full((1, 2, 6, 6), 50.0)  # odd rows/cols are never seen by the stride-2 conv
    x[0, :, ::2, ::2] = activations_to_input(A0, A1)
    maps = cc.explain(net, x, method=method, target_layer="relu" if method == "cam" else "conv", targets=0)
    a = np.stack([A0, A1])
    raw = np_cam(relu(a), W[0]) if method == "cam" else NP_REFS[method](a, hand_gradients(a, 0))
    want = np_minmax(np_bilinear(raw, 6, 6))
    assert maps.shape == (1, 6, 6)
    np.testing.assert_allclose(maps[0].double().numpy(), want, atol=1e-6)


def test_cam_rejects_relu_between_layer_and_gap(hand_net, two_images):
    # target 'conv' is followed by ReLU, so logits != fc(GAP(A)) (A1 has negative values)
    with pytest.raises(ValueError, match="gradcam"):
        cc.explain(hand_net, two_images, method="cam", target_layer="conv")


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_available_methods_order():
    assert cc.available_methods()[:6] == ALL_METHODS
    listed = cc.available_methods()
    listed.append("mutated")
    assert "mutated" not in cc.available_methods()


def test_unknown_method_lists_choices(hand_net, two_images):
    for call in (lambda: get_method("gradcamm"), lambda: cc.explain(hand_net, two_images, method="gradcamm")):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "gradcamm" in message
        for name in ALL_METHODS:
            assert repr(name) in message


def test_register_method_new_method_works_end_to_end(hand_net, two_images):
    name = "test_maxgradcam"
    assert name not in cc.available_methods()
    try:

        @cc.register_method(name, needs=("activations", "gradients"), summary="max-pooled gradients")
        def maxgradcam(activations, gradients):
            return torch.relu((gradients.amax((2, 3), keepdim=True) * activations).sum(1))

        assert cc.available_methods()[-1] == name
        assert get_method(name).fn is maxgradcam and get_method(name).needs_gradients
        maps = cc.explain(hand_net, two_images[:1], method=name, target_layer="conv", targets=0)
        # class 0: max g0 = 1/9, max g1 = 2/9 -> (A0 + 2*A1)/9 = [[4,3,0],[3,1,-3],[0,-3,-6]]/9 -> ReLU, /4
        np.testing.assert_allclose(maps[0].double().numpy(), np.array([[4, 3, 0], [3, 1, 0], [0, 0, 0]]) / 4, atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            cc.register_method(name, needs=("activations",))(maxgradcam)
        with pytest.raises(ValueError, match="already registered"):
            cc.register_method("gradcam", needs=("activations", "gradients"))(maxgradcam)
        assert get_method("gradcam").fn is gradient.gradcam
    finally:
        if name in cc.available_methods():
            unregister_method(name)
    assert name not in cc.available_methods()


def test_register_method_rejects_unknown_needs():
    with pytest.raises(ValueError, match="unknown needs") as info:
        cc.register_method("test_bad_needs", needs=("activations", "hessian"))
    assert "hessian" in str(info.value) and "gradients" in str(info.value)
    assert "test_bad_needs" not in cc.available_methods()


def test_unregister_method_returns_the_method_and_rejects_unknown_names():
    name = "test_unregistered"

    @cc.register_method(name, needs=("activations",), summary="channel sum")
    def channel_sum(activations):
        return activations.sum(1)

    removed = unregister_method(name)
    assert removed.name == name and removed.fn is channel_sum and removed.summary == "channel sum"
    assert name not in cc.available_methods()
    with pytest.raises(ValueError, match=name) as info:
        unregister_method(name)
    for valid in ALL_METHODS:
        assert repr(valid) in str(info.value)
    assert cc.available_methods()[:6] == ALL_METHODS


def test_registered_functions_are_the_module_functions():
    for name in ALL_METHODS:
        assert get_method(name).fn is getattr(activation if name == "cam" else gradient, name)
    assert get_method("cam").needs == ("activations", "class_weights")
    assert not get_method("cam").needs_gradients


# ---------------------------------------------------------------------------------------------
# cam_callbacks/utils/maps.py
# ---------------------------------------------------------------------------------------------


def test_minmax_normalize_values_and_constant_maps():
    maps = torch.tensor(
        [
            [[1.0, 3.0], [2.0, 5.0]],  # -> (x - 1) / 4
            [[2.0, 2.0], [2.0, 2.0]],  # constant -> zeros
            [[0.0, 0.0], [0.0, 0.0]],  # constant zero -> zeros
            [[-2.0, 0.0], [2.0, -1.0]],  # negative values -> (x + 2) / 4
        ]
    )
    out = minmax_normalize(maps)
    want = torch.tensor(
        [[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.5], [1.0, 0.25]]]
    )
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        minmax_normalize(torch.zeros(2, 2))


def test_minmax_normalize_tiny_span_is_finite():
    maps = torch.tensor([[[1.0, 1.0 + 1e-7], [1.0, 1.0]]])
    out = minmax_normalize(maps)
    assert torch.isfinite(out).all() and float(out.max()) == 1.0 and float(out.min()) == 0.0


@pytest.mark.parametrize("size", [(7, 11), (3, 5), (5, 3), (12, 10)])
def test_upsample_and_normalize_against_numpy_bilinear(size):
    gen = torch.Generator().manual_seed(5)
    raw = torch.rand(2, 3, 5, generator=gen) * 3
    out = upsample_and_normalize(raw, size)
    assert out.shape == (2, *size) and out.dtype == torch.float32
    for n in range(2):
        want = np_minmax(np_bilinear(raw[n].double().numpy(), *size))
        np.testing.assert_allclose(out[n].double().numpy(), want, atol=1e-6)


def test_upsample_and_normalize_constant_and_dtype():
    out = upsample_and_normalize(torch.full((1, 2, 2), 7.0, dtype=torch.float64), (4, 4))
    assert out.dtype == torch.float32 and torch.equal(out, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        upsample_and_normalize(torch.zeros(1, 1, 2, 2), (4, 4))


# ---------------------------------------------------------------------------------------------
# CAM head check, targets and images validation
# ---------------------------------------------------------------------------------------------


class VGGLikeHead(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@pytest.mark.parametrize("hidden", [6, 4])
def test_cam_error_when_head_is_not_gap_linear(hidden):
    # hidden=6: the last linear maps 6 -> 3, not 4 channels -> shape check
    # hidden=4: shapes fit (4 -> 3) but logits != fc(GAP(A)) -> numerical check
    net = VGGLikeHead(hidden).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError) as info:
        cc.explain(net, x, method="cam", target_layer="features")
    message = str(info.value)
    assert "method='cam'" in message and "global average pooling" in message and "gradcam" in message
    # gradient methods work on the same model
    assert cc.explain(net, x, method="gradcam", target_layer="features").shape == (2, 8, 8)


@pytest.mark.slow
def test_cam_error_on_vgg11(random_vgg11):
    with pytest.raises(ValueError, match="method='cam'"):
        cc.explain(random_vgg11, torch.randn(1, 3, 64, 64), method="cam", target_layer="features")


@pytest.mark.parametrize("targets", [2, [0, 2], [-1, 0], torch.tensor([5, 0])])
def test_targets_out_of_range(hand_net, two_images, targets):
    with pytest.raises(ValueError, match=r"0\.\.1"):
        cc.explain(hand_net, two_images, method="gradcam", targets=targets, target_layer="conv")


def test_targets_wrong_length_or_type(hand_net, two_images):
    with pytest.raises(ValueError, match=r"one class index per image"):
        cc.explain(hand_net, two_images, targets=[0, 1, 0], target_layer="conv")
    with pytest.raises(TypeError, match="integer"):
        cc.explain(hand_net, two_images, targets=[0.0, 1.0], target_layer="conv")
    with pytest.raises(TypeError, match="bool"):
        cc.explain(hand_net, two_images, targets=True, target_layer="conv")


@pytest.mark.parametrize(
    "images, error, pattern",
    [
        (torch.zeros(2, 3, 3), ValueError, r"\(N, C, H, W\)"),
        (torch.zeros(1, 1, 2, 3, 3), ValueError, r"\(N, C, H, W\)"),
        (torch.zeros(1, 2, 3, 3, dtype=torch.int64), TypeError, "floating"),
        (torch.zeros(1, 2, 3, 3, dtype=torch.uint8), TypeError, "floating"),
        (torch.zeros(0, 2, 3, 3), ValueError, "empty"),
        (np.zeros((1, 2, 3, 3), dtype=np.float32), TypeError, "torch.Tensor"),
    ],
)
def test_bad_images(hand_net, images, error, pattern):
    with pytest.raises(error, match=pattern):
        cc.explain(hand_net, images, target_layer="conv")
    with pytest.raises(error, match=pattern):
        cc.faithfulness(hand_net, images, target_layer="conv")


def test_bad_batch_size_and_model(hand_net, two_images):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            cc.explain(hand_net, two_images, target_layer="conv", batch_size=bad)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        cc.explain(lambda x: x, two_images, target_layer="conv")


def test_batch_size_one_gives_the_same_maps(hand_net, two_images):
    want = np.stack([_expected("xgradcam", 0, A1), _expected("xgradcam", 1, A1_IMG2)])
    maps = cc.explain(hand_net, two_images, method="xgradcam", target_layer="conv", batch_size=1)
    np.testing.assert_allclose(maps.double().numpy(), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# target_layer
# ---------------------------------------------------------------------------------------------


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(OrderedDict(net=HandNet()))

    def forward(self, x):
        return self.backbone(x)


def test_target_layer_dotted_name_and_module():
    net = Wrapped().eval()
    x = activations_to_input(A0, A1)[None]
    want = _expected("gradcam", 0, A1)
    by_name = cc.explain(net, x, method="gradcam", target_layer="backbone.net.conv")
    by_module = cc.explain(net, x, method="gradcam", target_layer=net.backbone.net.conv)
    np.testing.assert_allclose(by_name[0].double().numpy(), want, atol=1e-6)
    np.testing.assert_allclose(by_module[0].double().numpy(), want, atol=1e-6)
    assert resolve_target_layer(net, net.backbone.net.conv) == ("backbone.net.conv", net.backbone.net.conv)


def test_target_layer_auto_custom_model(hand_net, two_images, caplog):
    # Module outputs in completion order: conv (N,2,3,3), relu (N,2,3,3), pool (N,2,1,1), flatten, fc.
    # The last 4-D output larger than 1x1 is the ReLU's.
    assert resolve_target_layer(hand_net, "auto", two_images[:1])[0] == "relu"
    with caplog.at_level(logging.INFO, logger="cam_callbacks"):
        maps = cc.explain(hand_net, two_images[:1], method="gradcam", target_layer="auto", targets=0)
    assert "'relu'" in caplog.text
    # Grad-CAM on the ReLU output with a GAP + linear head: g = W[0]/9 everywhere, w = (1/9, 2/9)
    # -> (relu(A0) + 2 relu(A1))/9 = [[4,3,2],[3,3,1],[2,1,0]]/9
    np.testing.assert_allclose(maps[0].double().numpy(), HAND_CAM_ON_RELU_0 / 4, atol=1e-6)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def test_target_layer_auto_resnet18(resnet18):
    x = torch.randn(1, 3, 64, 64)
    name, module = resolve_target_layer(resnet18, "auto", x)
    assert name == "layer4" and module is resnet18.layer4


@pytest.mark.slow
def test_target_layer_auto_vgg11(random_vgg11):
    """vgg11: features (N,512,2,2) -> avgpool = AdaptiveAvgPool2d((7, 7)) (N,512,7,7) -> flatten -> classifier.

    The CAM layer is 'features'; the adaptive pool's output is 7x7 whatever the input size (it only resamples the
    feature map), so it must not be chosen. At 64 px the maps on 'avgpool' differ from those on 'features' by up to
    ~0.5. (Fails on the first implementation: find_auto_layer picks 'avgpool'.)
    """
    name, _ = resolve_target_layer(random_vgg11, "auto", torch.randn(1, 3, 64, 64))
    assert name == "features"


def test_target_layer_unknown_name_suggests(resnet18, hand_net):
    with pytest.raises(ValueError) as info:
        cc.explain(resnet18, torch.randn(1, 3, 32, 32), target_layer="layer5")
    assert "'layer5'" in str(info.value) and "'layer4'" in str(info.value)
    with pytest.raises(ValueError, match="'conv'"):
        cc.explain(hand_net, activations_to_input(A0, A1)[None], target_layer="convv")


def test_target_layer_not_in_model_or_wrong_type(hand_net, two_images):
    with pytest.raises(ValueError, match="not a submodule"):
        cc.explain(hand_net, two_images, target_layer=nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="target_layer"):
        cc.explain(hand_net, two_images, target_layer=3)


@pytest.mark.parametrize("layer", ["fc", "flatten"])
def test_target_layer_with_2d_output(hand_net, two_images, layer):
    with pytest.raises(ValueError, match="4-D"):
        cc.explain(hand_net, two_images, method="gradcam", target_layer=layer)
