"""Cross-checks against pytorch_grad_cam (grad-cam 1.5.x) and torchcam on torchvision models with random weights.

Conventions applied to the references (GUIDE.md section 2), never to our output:

- pytorch_grad_cam returns maps already normalised per image (min-max, cv2 resize, min-max again), which equals
  bilinear upsampling (align_corners=False) followed by min-max; its outputs are compared as they are.
- torchcam returns raw maps at feature resolution (``normalized=False``): ReLU as documented (its ``CAM`` skips
  it in code), ``F.interpolate(bilinear, align_corners=False)`` and per-image min-max with torch ops.

The models are built with random weights, then prepared so that the references' epsilons are negligible:

- BatchNorm statistics are calibrated on one random batch (``momentum=None``, one train-mode forward). At
  initialisation torchvision's mobilenet_v3_small produces activations of ~1e-8 at 'features' (eval-mode BN with unit
  running variance), where pytorch_grad_cam's 1e-7 in its min-max denominator dominates.
- The last linear layer's weights are multiplied by ``LOGIT_SCALE``. pytorch_grad_cam adds 1e-6 to the Grad-CAM++
  denominator ``2 g^2 + sum(A) g^3``; with random init ``|g|`` ~ 1e-2 and ``2 g^2`` ~ 2e-4, so the eps moves the maps
  by up to ~0.1 (measured: 0.016 resnet18, 0.03 vgg11, 0.04 densenet121, 0.14 mobilenet_v3_small at scale 1). The
  maps of the other methods are invariant to this scale (homogeneous in g); for Grad-CAM++ it only changes the
  network being explained.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchcam.methods
import torchvision
from _calibration import calibrate_batchnorm
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cam_callbacks as cc

pytestmark = pytest.mark.crosscheck

TOL = 1e-3
SIZE = 64
# With random weights the map of a class is often all negative (ReLU -> constant zero map, which the guard in
# assert_agree rejects); these targets give non-constant maps for every model, method and image here.
TARGETS = [0, 5]
LOGIT_SCALE = {"resnet18": 1e3, "vgg11": 1e3, "densenet121": 1e3, "mobilenet_v3_small": 1e4}
LAYERS = {
    "resnet18": "layer4",
    "vgg11": "features",
    # not 'features': densenet's forward rewrites that output with an in-place ReLU (see the last test)
    "densenet121": "features.denseblock4",
    "mobilenet_v3_small": "features",
}
# Grad-CAM++'s closed form assumes non-negative (post-ReLU) activations: with signed ones (denseblock4 is a concat of
# raw conv outputs) 2 + sum(A) g crosses 0 and both implementations divide by ~0 (the reference by 1e-6), so the maps
# become ill-conditioned; use the last ReLU inside the block there.
GRADCAMPP_LAYERS = dict(LAYERS, densenet121="features.denseblock4.denselayer16.relu2")
REFERENCES = {
    "gradcam": GradCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "gradcampp": GradCAMPlusPlus,
}

_MODELS: dict = {}


def prepare(model: nn.Module, name: str) -> nn.Module:
    return calibrate_batchnorm(model, SIZE, LOGIT_SCALE[name])


@pytest.fixture(scope="module")
def get_model(random_vgg11):
    """name -> (model for cam_callbacks, deep copy for the reference libraries)."""

    def get(name):
        if name not in _MODELS:
            if name == "vgg11":
                model = copy.deepcopy(random_vgg11)
            else:
                torch.manual_seed(0)
                model = getattr(torchvision.models, name)(weights=None, num_classes=10)
            model = prepare(model, name)
            _MODELS[name] = (model, copy.deepcopy(model))
        return _MODELS[name]

    yield get
    _MODELS.clear()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))


def assert_agree(ours: torch.Tensor, ref: np.ndarray, label: str) -> float:
    ours = ours.detach().double().numpy()
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape == (2, SIZE, SIZE)
    for n in range(2):  # guard against trivial agreement
        assert ours[n].max() > 0 and ours[n].std() > 0.05, f"{label}: our map {n} is (near) constant"
        assert ref[n].max() > 0 and ref[n].std() > 0.05, f"{label}: reference map {n} is (near) constant"
    diff = float(np.abs(ours - ref).max())
    print(f"{label}: max abs diff {diff:.3g}")
    assert diff <= TOL, f"{label}: max abs diff {diff:.3g} > {TOL}"
    return diff


def torch_convention(raw: torch.Tensor) -> np.ndarray:
    """Raw (N, h, w) reference maps -> ReLU, bilinear (align_corners=False) to the input size, min-max."""
    up = F.interpolate(torch.relu(raw.detach().float())[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    return ((up - low) / (high - low)).double().numpy()


@pytest.mark.parametrize("method", list(REFERENCES))
@pytest.mark.parametrize("model_name", [pytest.param(n, marks=pytest.mark.slow) if n in ("vgg11", "densenet121") else n for n in LAYERS])
def test_against_pytorch_grad_cam(get_model, images, model_name, method):
    model, ref = get_model(model_name)
    layer = (GRADCAMPP_LAYERS if method == "gradcampp" else LAYERS)[model_name]
    ours = cc.explain(model, images, method=method, target_layer=layer, targets=TARGETS)
    ref_layer = dict(ref.named_modules())[layer]
    with REFERENCES[method](ref, [ref_layer]) as cam:
        expected = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
    ref.zero_grad(set_to_none=True)
    assert not model.training and all(p.grad is None for p in model.parameters())  # ours: autograd.grad only
    assert_agree(ours, expected, f"{model_name}/{layer}/{method} vs pytorch_grad_cam")


def test_cam_against_torchcam_resnet18(get_model, images):
    model, ref = get_model("resnet18")
    ours = cc.explain(model, images, method="cam", target_layer="layer4", targets=TARGETS)
    with torchcam.methods.CAM(ref, target_layer="layer4", fc_layer="fc", input_shape=(3, SIZE, SIZE)) as extractor:
        with torch.no_grad():
            ref(images)
        (raw,) = extractor(class_idx=TARGETS, normalized=False)
    assert_agree(ours, torch_convention(raw), "resnet18/layer4/cam vs torchcam")


@pytest.mark.parametrize(
    "method, extractor_cls",
    [("gradcam", torchcam.methods.GradCAM), ("xgradcam", torchcam.methods.XGradCAM), ("layercam", torchcam.methods.LayerCAM)],
)
def test_gradient_methods_against_torchcam_resnet18(get_model, images, method, extractor_cls):
    model, ref = get_model("resnet18")
    ours = cc.explain(model, images, method=method, target_layer="layer4", targets=TARGETS)
    with extractor_cls(ref, target_layer="layer4", input_shape=(3, SIZE, SIZE)) as extractor:
        scores = ref(images)
        (raw,) = extractor(class_idx=TARGETS, scores=scores, normalized=False)
    assert_agree(ours, torch_convention(raw), f"resnet18/layer4/{method} vs torchcam")


def test_methods_differ_from_each_other(get_model, images):
    """Guard: on these models the methods give different maps, so agreement per method is informative."""
    model, _ = get_model("resnet18")
    maps = {m: cc.explain(model, images, method=m, target_layer="layer4", targets=TARGETS) for m in ["gradcam", "gradcampp", "layercam"]}
    assert (maps["gradcam"] - maps["gradcampp"]).abs().max() > 0.05
    assert (maps["gradcam"] - maps["layercam"]).abs().max() > 0.05
    other_class = cc.explain(model, images, method="gradcam", target_layer="layer4", targets=[3, 7])
    assert (maps["gradcam"] - other_class).abs().max() > 0.05


@pytest.mark.slow
def test_densenet_features_captured_before_inplace_relu(get_model, images):
    """densenet.forward applies F.relu(features, inplace=True) to the output of 'features'. Our capture must hold the
    value 'features' returned (the pre-ReLU norm5 output), not the tensor the in-place ReLU rewrote afterwards."""
    model, ref = get_model("densenet121")
    ours = cc.explain(model, images, method="gradcam", target_layer="features", targets=TARGETS)

    # Manual Grad-CAM, running densenet's tail by hand on a private leaf (torchvision DenseNet.forward:
    # features -> relu(inplace) -> adaptive_avg_pool2d(1) -> flatten -> classifier).
    manual = copy.deepcopy(ref)
    with torch.no_grad():
        feats = manual.features(images)
        logits_full = manual(images)
    leaf = feats.clone().requires_grad_(True)
    logits = manual.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(leaf), 1), 1))
    torch.testing.assert_close(logits.detach(), logits_full)  # the hand tail is densenet's tail
    (grads,) = torch.autograd.grad(logits[range(2), TARGETS].sum(), leaf)
    raw = (grads.mean(dim=(2, 3))[:, :, None, None] * leaf.detach()).sum(1)
    assert float(feats.min()) < -0.1  # the in-place ReLU really changes this tensor
    want = torch_convention(raw)
    assert_agree(ours, want, "densenet121/features/gradcam vs manual (cloned) capture")

    # A forward hook that keeps the output without cloning (pytorch_grad_cam's) sees ReLU(features) instead.
    naive_ref = copy.deepcopy(ref)
    with GradCAM(naive_ref, [naive_ref.features]) as cam:
        naive = cam(images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
    assert np.abs(naive - want).max() > 0.05
    assert float((ours.double().numpy() - naive).__abs__().max()) > 0.05
