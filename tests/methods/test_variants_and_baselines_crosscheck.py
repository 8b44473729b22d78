"""Cross-checks of the issue-14 methods against pytorch-grad-cam 1.5.7 and torchcam 0.5.0 on a random-weight resnet18.

The model's BatchNorm statistics come from one training-mode batch (``momentum=None``, ``reset_running_stats()``,
one forward in train mode, then ``eval()``). With torchvision's stock statistics a deep random network gives
activations and logits of ~1e-10, where each library's epsilon (pytorch-grad-cam's 1e-7 in its min-max, torchcam's
1e-8 in Smooth Grad-CAM++'s alpha) decides the map instead of the method.

Conventions (GUIDE sections 2 and 5): pytorch-grad-cam's outputs are already ReLU'd, resized and min-max normalised
(equal to bilinear ``align_corners=False`` upsampling followed by min-max) and are compared as they are; raw maps
(torchcam's, and the NumPy references here) go through ReLU, bilinear upsampling and min-max (``torch_convention``).
Where a reference differs from our method by construction (an arbitrary SVD sign, a different formula, its own
random draws), the test reproduces the reference's convention and says why; every comparison prints its max abs
difference (run with ``-s``). Measured (max abs difference of [0, 1] maps): Grad-CAM element-wise 9e-7, Random-CAM
2e-7 (given our draws); Eigen-Grad-CAM 1e-7 and KPCA-CAM 2e-7 against NumPy/scikit-learn projections with our sign
rule, pytorch-grad-cam equal to one of the two signs to 1e-6; FEM 4e-7 (ours vs the authors' formula; pytorch-grad-cam
vs its own formula 2e-7); Smooth Grad-CAM++ 1.6e-6 (ours vs the paper's formula; torchcam vs its own 8e-7; ours vs
torchcam 0.37, different formulas); Sobel-CAM in raw units 8e-6 on gray images and 2.1 on colour ones (OpenCV's
8-bit rounding).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchcam.methods
import torchvision
from _calibration import calibrate_batchnorm
from pytorch_grad_cam import FEM, KPCA_CAM, EigenGradCAM, GradCAMElementWise, RandomCAM
from pytorch_grad_cam.sobel_cam import sobel_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from sklearn.decomposition import KernelPCA
from torch import nn

import cam_callbacks as cc
from cam_callbacks.methods.baselines import sobelcam

pytestmark = pytest.mark.crosscheck

TOL = 1e-3
SIZE = 128
TARGETS = [0, 5]


def calibrated_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return calibrate_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10), SIZE)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return calibrated_resnet18()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))


def reference_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)  # the references call zero_grad()/backward(): never on the model we explain


def capture(model: nn.Module, layer: str, x: torch.Tensor, targets: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(activations, gradients of the target logits) at ``layer``, with a plain hook and ``torch.autograd.grad``."""
    net = model
    store: Dict[str, torch.Tensor] = {}
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    logits = net(x)
    handle.remove()
    (grads,) = torch.autograd.grad(logits[range(len(targets)), targets].sum(), store["a"])
    return store["a"].detach().double(), grads.double()


def torch_convention(raw) -> np.ndarray:
    """Raw (N, h, w) maps -> ReLU, bilinear (align_corners=False) to the input size, min-max."""
    raw = torch.as_tensor(np.asarray(raw, dtype=np.float64))
    up = F.interpolate(torch.relu(raw)[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    return ((up - low) / (high - low)).numpy()


def assert_agree(ours, ref, label: str, tol: float = TOL) -> float:
    ours = np.asarray(ours.detach().double().numpy() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    for n in range(ours.shape[0]):  # guard against trivial agreement
        assert ours[n].std() > 0.05 and ref[n].std() > 0.05, f"{label}: map {n} is (near) constant"
    diff = float(np.abs(ours - ref).max())
    print(f"{label}: max abs diff {diff:.3g}")
    assert diff <= tol, f"{label}: max abs diff {diff:.3g} > {tol}"
    return diff


def oriented(projection: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Our documented sign rule, in NumPy: the projection correlates positively with the channel-mean map."""
    return -projection if np.corrcoef(projection, features.mean(axis=0).reshape(-1))[0, 1] < 0 else projection


def assert_one_of_two_signs(ours: torch.Tensor, theirs: np.ndarray, projections: List[np.ndarray], h: int, label: str) -> None:
    """pytorch-grad-cam keeps the sign its decomposition returns: its map is ReLU of +p or of -p; ours is ReLU(+p)."""
    shape = (1, h, -1)
    for i, p in enumerate(projections):
        positive, negative = torch_convention(p.reshape(shape)), torch_convention((-p).reshape(shape))
        assert np.abs(positive - negative).max() > 0.5  # the sign matters on these maps
        assert_agree(ours[i : i + 1], positive, f"{label} image {i}: ours vs the NumPy projection with our sign rule")
        if np.abs(theirs[i] - positive[0]).max() <= TOL:
            print(f"{label} image {i}: pytorch-grad-cam's sign agrees with ours")
        else:
            assert_agree(theirs[i : i + 1], negative, f"{label} image {i}: pytorch-grad-cam vs the other sign")


# --- gradient variants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [pytest.param("layer3", marks=pytest.mark.slow), "layer4"])
def test_gradcamelementwise_against_pytorch_grad_cam(model, images, layer):
    ours = cc.explain(model, images, method="gradcamelementwise", target_layer=layer, targets=TARGETS)
    ref = reference_copy(model)
    with GradCAMElementWise(ref, [dict(ref.named_modules())[layer]]) as cam:
        theirs = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
    assert_agree(ours, theirs, f"resnet18/{layer}/gradcamelementwise vs pytorch_grad_cam")
    assert (ours - cc.explain(model, images, method="hirescam", target_layer=layer, targets=TARGETS)).abs().max() > 0.05


@pytest.mark.slow
def test_eigengradcam_against_pytorch_grad_cam_up_to_sign(model, images):
    ours = cc.explain(model, images, method="eigengradcam", target_layer="layer3", targets=TARGETS)
    ref = reference_copy(model)
    with EigenGradCAM(ref, [ref.layer3]) as cam:
        theirs = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
    a, g = capture(model, "layer3", images, TARGETS)
    products = (g * a).numpy()
    projections = []
    for i in range(2):
        x = products[i].reshape(products.shape[1], -1).T
        x = x - x.mean(axis=0)
        projection = x @ np.linalg.svd(x, full_matrices=False)[2][0]
        projections.append(oriented(projection, products[i]))
    assert_one_of_two_signs(ours, theirs, projections, products.shape[2], "resnet18/layer3/eigengradcam")


def test_kpcacam_against_pytorch_grad_cam_up_to_sign(model, images):
    """KPCA_CAM calls scikit-learn's KernelPCA (sigmoid kernel, gamma 1/K, coef0 1) on the per-channel centred samples,
    whose sign rule (largest-magnitude entry of the eigenvector positive) is not ours."""
    ours = cc.explain(model, images, method="kpcacam", target_layer="layer3")
    ref = reference_copy(model)
    with KPCA_CAM(ref, [ref.layer3]) as cam:
        theirs = cam(images, targets=None)
    a, _ = capture(model, "layer3", images, TARGETS)
    feats = a.numpy()
    projections = []
    for i in range(2):
        x = feats[i].reshape(feats.shape[1], -1).T
        score = KernelPCA(n_components=1, kernel="sigmoid").fit_transform(x - x.mean(axis=0))[:, 0]
        projections.append(oriented(score, feats[i]))
    assert_one_of_two_signs(ours, theirs, projections, feats.shape[2], "resnet18/layer3/kpcacam")


# --- FEM --------------------------------------------------------------------------------------------------


def test_fem_against_the_authors_formula_and_pytorch_grad_cams_variant(model, images):
    """Ours follows the FEM authors' code (binary k-sigma maps weighted by channel means); pytorch-grad-cam's FEM
    weights the activations by the fraction of positions above the threshold instead. Both are checked against
    NumPy transcriptions of their formulas on the same captured activations, and shown to differ."""
    ours = cc.explain(model, images, method="fem", target_layer="layer3")
    ref = reference_copy(model)
    with FEM(ref, [ref.layer3]) as cam:
        theirs = cam(images, targets=None)
    a = capture(model, "layer3", images, TARGETS)[0].numpy()
    means = a.mean(axis=(2, 3), keepdims=True)
    binary = a > means + 2 * a.std(axis=(2, 3), keepdims=True)  # population std (NumPy's default), as both
    authors = (means * binary).sum(axis=1)
    variant = (binary.mean(axis=(2, 3), keepdims=True) * a).sum(axis=1)
    assert_agree(ours, torch_convention(authors), "resnet18/layer3/fem vs the authors' formula")
    assert_agree(theirs, torch_convention(variant), "pytorch_grad_cam FEM vs its formula")
    assert np.abs(ours.double().numpy() - theirs).max() > 0.05


# --- baselines --------------------------------------------------------------------------------------------


def test_randomcam_against_pytorch_grad_cam_given_our_draws(model, images, monkeypatch):
    """RandomCAM draws ``np.random.uniform(-1, 1, (N, K))`` from NumPy's global RNG; ours draws one (K,) vector from a
    private torch generator. The reference is handed our documented draw (the same for every image) instead of its own."""
    ours = cc.explain(model, images, method="randomcam", target_layer="layer4", method_options={"seed": 3})
    weights = (2 * torch.rand(512, generator=torch.Generator().manual_seed(3)) - 1).double().numpy()
    calls = []

    def our_draw(low, high, size):
        calls.append((low, high, size))
        return np.broadcast_to(weights, size).copy()

    monkeypatch.setattr(np.random, "uniform", our_draw)
    ref = reference_copy(model)
    with RandomCAM(ref, [ref.layer4]) as cam:
        theirs = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
    assert calls == [(-1, 1, (2, 512))]
    assert_agree(ours, theirs, "resnet18/layer4/randomcam vs pytorch_grad_cam (our weights)")


@pytest.mark.parametrize("colour", [False, True])
def test_sobelcam_against_pytorch_grad_cam(colour):
    """pytorch-grad-cam's sobel_cam takes 8-bit RGB images and rounds the gray value (colour images only: equal
    channels give an exact gray), saturates |G| at 255 (avoided here: values < 64 keep |G| <= 252) and rounds
    ``(|G_x| + |G_y|) / 2``; ours rounds nothing. Bound: 0.5 for gray images, 0.5 + (4 + 4) / 2 for colour ones."""
    g = np.random.default_rng(0)
    if colour:
        pixels = g.integers(0, 64, size=(2, 24, 20, 3), dtype=np.uint8)
    else:
        pixels = np.repeat(g.integers(0, 64, size=(2, 24, 20, 1), dtype=np.uint8), 3, axis=3)
    theirs = np.stack([sobel_cam(p).astype(np.float64) for p in pixels])
    ours = sobelcam(torch.tensor(pixels, dtype=torch.float64).permute(0, 3, 1, 2)).double().numpy()
    diff = float(np.abs(ours - theirs).max())
    print(f"sobelcam colour={colour}: max abs diff {diff:.3g} (raw units, maps up to {theirs.max():.0f})")
    assert diff <= (4.5 if colour else 0.5)
    assert theirs.std() > 10


# --- Smooth Grad-CAM++ ------------------------------------------------------------------------------------


class FixedNoise:
    """Stands in for torchcam's ``torch.distributions.Normal(0, std)``: hands out our noise (one (C, H, W) draw per
    copy, the same for every image), so both implementations see the same noisy inputs."""

    def __init__(self, draws: List[torch.Tensor]) -> None:
        self.draws = list(draws)

    def sample(self, size):
        return self.draws.pop(0).expand(size).clone()


@pytest.mark.slow
def test_smoothgradcampp_against_torchcam_with_the_same_noise(model, images):
    """torchcam's SmoothGradCAMpp differs by construction: ``sum_ab(A_ab D3_ab)`` (not the paper's ``sum(A) D3``), ReLU
    of the last copy's gradient (not of ``D1``), the last noisy copy's activations in the weighted sum, and 1e-8 in
    the denominator. torchcam is checked against its formula, ours against the paper's, both computed here from
    gradients captured on the same noisy inputs; then the two maps are compared."""
    samples, std, seed, layer = 4, 0.3, 7, "layer3"
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.randn(images.shape[1:], generator=generator) * std for _ in range(samples)]  # our documented draws
    ours = cc.explain(model, images, method="smoothgradcampp", target_layer=layer, targets=TARGETS,
                      method_options={"num_samples": samples, "std": std, "seed": seed})  # fmt: skip
    ref = reference_copy(model)
    with torchcam.methods.SmoothGradCAMpp(ref, target_layer=layer, num_samples=samples, std=std, input_shape=(3, SIZE, SIZE)) as ex:
        ex._distrib = FixedNoise(draws)
        ref(images)
        (theirs,) = ex(class_idx=TARGETS, normalized=False)
    clean, _ = capture(model, layer, images, TARGETS)
    noisy = [capture(model, layer, images + d, TARGETS) for d in draws]
    grads = torch.stack([g for _, g in noisy])
    d1, d2, d3 = grads.mean(0), grads.pow(2).mean(0), grads.pow(3).mean(0)
    # ours: the paper's closed form on the averaged derivatives, clean activations
    alpha = torch.where(d2 != 0, d2 / (2 * d2 + clean.sum(dim=(2, 3), keepdim=True) * d3), torch.zeros_like(d2))
    paper = ((alpha * torch.relu(d1)).sum(dim=(2, 3))[:, :, None, None] * clean).sum(1)
    assert_agree(ours, torch_convention(paper), "resnet18/layer3/smoothgradcampp vs the paper's formula")
    # torchcam: its own formula
    last_a, last_g = noisy[-1]
    alpha_tc = d2 / (2 * d2 + (d3 * clean).sum(dim=(2, 3), keepdim=True) + 1e-8)
    torchcam_formula = ((alpha_tc * torch.relu(last_g)).sum(dim=(2, 3))[:, :, None, None] * last_a).sum(1)
    assert_agree(torch_convention(theirs), torch_convention(torchcam_formula), "torchcam SmoothGradCAMpp vs its formula")
    diff = float(np.abs(ours.double().numpy() - torch_convention(theirs)).max())
    print(f"smoothgradcampp: ours vs torchcam (different formulas) max abs diff {diff:.3g}")
    # the smoothing matters here: without noise the maps differ
    plain = cc.explain(model, images, method="gradcampp", target_layer=layer, targets=TARGETS)
    assert (ours - plain).abs().max() > 0.01
